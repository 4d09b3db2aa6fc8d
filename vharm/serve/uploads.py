"""Uploads for `vharm serve`: streamed from the request body into the server's temporary directory, never held
whole in memory, against a size limit counted as the bytes arrive; a zip of frames is unpacked into a frame
directory, the form `FrameSource` reads.

The server names every file it writes (`upload` plus the extension the browser's name had, or the base names of a
zip's images in one flat directory), so no name from a browser reaches the file system, and the browser only ever
gets an id back. The browser's file name stays for messages: `Uploads.public` puts it back where a `VharmError`
names the server's file.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import threading
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from python_multipart.multipart import MultipartParser, parse_options_header

from vharm.errors import VharmError
from vharm.io.images import IMAGE_EXTS

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20,
          "gib": 2**30, "tib": 2**40, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_EXT = re.compile(r"\.[a-z0-9]{1,8}")  # the extensions kept from a browser's file name (FrameSource reads by them)
CHUNK = 1 << 20  # bytes copied at a time out of a zip


def parse_size(text: str) -> int:
    """A size as people write it, in bytes: 2GB, 500MB, 1.5G (powers of 1000), 4GiB (of 1024), or plain bytes.

    Example:
        >>> parse_size("2GB"), parse_size("512 MiB"), parse_size("1000")
        (2000000000, 536870912, 1000)
    """
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match and _UNITS.get(match.group(2).lower())
    if not unit or float(match.group(1)) * unit < 1:
        raise VharmError(f"--max-upload {text!r}: expected a size such as 500MB or 2GB")
    return int(float(match.group(1)) * unit)


def format_size(n: int) -> str:
    """Bytes as the page shows them: '2 GB', '1.5 MB', '800 bytes' (powers of 1000, as `parse_size` reads them).

    Example:
        >>> format_size(2_000_000_000), format_size(1_500_000), format_size(800)
        ('2 GB', '1.5 MB', '800 bytes')
    """
    for unit, size in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} bytes"


@dataclass
class Upload:
    """One file the browser sent.

    Attributes:
        id: what the browser names it by.
        name: the browser's file name (its base name only), for messages.
        path: the file, or for a zip the directory of its frames.
        size: bytes received.
        kind: "video", "image" or "frames" (a zip), by the extension, as `FrameSource` reads it.
    """

    id: str
    name: str
    path: Path
    size: int
    kind: str

    def to_json(self) -> dict:
        return {"id": self.id, "name": self.name, "size": self.size, "kind": self.kind}


class TooLarge(VharmError):
    """An upload above the limit (HTTP 413)."""


class Uploads:
    """The uploads of one server, each in its own folder under `root`, at most `limit` bytes each (a zip: also
    unpacked)."""

    def __init__(self, root: Path, limit: int):
        self.root, self.limit = Path(root), limit
        self.root.mkdir(parents=True, exist_ok=True)
        self._uploads: dict[str, Upload] = {}
        self._lock = threading.Lock()

    def get(self, upload_id: str) -> Upload:
        with self._lock:
            upload = self._uploads.get(upload_id)
        if upload is None:
            raise KeyError(upload_id)
        return upload

    def too_large(self, name: str) -> TooLarge:
        return TooLarge(f"{name}: larger than the upload limit of {format_size(self.limit)} (vharm serve "
                        "--max-upload)")

    def receiver(self, content_type: str) -> _Receiver:
        """A parser for one multipart/form-data request body carrying one file (field `file`): feed it the body's
        chunks, then `finish()` it."""
        kind, options = parse_options_header(content_type)
        if kind != b"multipart/form-data" or b"boundary" not in options:
            raise VharmError("an upload must be a multipart/form-data request with one file (field 'file')")
        folder = self.root / secrets.token_hex(8)
        folder.mkdir()
        return _Receiver(self, folder, options[b"boundary"])

    def _add(self, folder: Path, name: str, path: Path, size: int) -> Upload:
        suffix = Path(name).suffix.lower()
        if suffix == ".zip":
            frames = folder / "frames"
            try:
                unzip_frames(path, frames, self.limit, name)
            finally:
                path.unlink(missing_ok=True)
            path, kind = frames, "frames"
        else:
            kind = "image" if suffix in IMAGE_EXTS else "video"
        upload = Upload(folder.name, name, path, size, kind)
        with self._lock:
            self._uploads[upload.id] = upload
        return upload

    def remove(self, upload_id: str) -> None:
        with self._lock:
            upload = self._uploads.pop(upload_id, None)
        if upload is not None:
            shutil.rmtree(self.root / upload.id, ignore_errors=True)

    def public(self, message: str) -> str:
        """A message with the server's files named as the browser named them (the longest paths first, so that a
        zip's frames read `masks.zip/00001.png`)."""
        with self._lock:
            uploads = sorted(self._uploads.values(), key=lambda u: -len(str(u.path)))
        for upload in uploads:
            message = message.replace(str(upload.path), upload.name)
        return message.replace(str(self.root) + os.sep, "").replace(str(self.root), "")


class _Receiver:
    """Streams the one file part of a multipart body to disk as it arrives (python-multipart's push parser)."""

    def __init__(self, uploads: Uploads, folder: Path, boundary: bytes):
        self.uploads, self.folder = uploads, folder
        self.name: str | None = None
        self.size = 0
        self._file = None
        self._header, self._headers = b"", {}
        self._parser = MultipartParser(boundary, {
            "on_header_field": self._on_header_field, "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end, "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data, "on_part_end": self._on_part_end})

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._headers[self._header.lower()] = self._headers.get(self._header.lower(), b"") + data[start:end]

    def _on_header_end(self) -> None:
        self._header = b""

    def _on_headers_finished(self) -> None:
        disposition, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._headers = {}
        if params.get(b"name") != b"file" or b"filename" not in params or self._file is not None:
            return  # another form field, or a second file: ignored
        # The base name only: a browser sends no directories, a hand-made request may.
        raw = params[b"filename"].decode("utf-8", "replace").replace("\\", "/")
        self.name = PurePosixPath(raw).name.strip() or "upload"
        suffix = Path(self.name).suffix.lower()
        self._file = open(self.folder / ("upload" + (suffix if _EXT.fullmatch(suffix) else "")), "wb")

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._file is None or self._file.closed:
            return
        self.size += end - start
        if self.size > self.uploads.limit:
            raise self.uploads.too_large(self.name)
        self._file.write(data[start:end])

    def _on_part_end(self) -> None:
        if self._file is not None:
            self._file.close()

    def write(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except BaseException:
            self.abort()
            raise

    def finish(self) -> Upload:
        """The upload, once the whole body has been fed (a zip is unpacked here: call it off the event loop)."""
        try:
            self._parser.finalize()
            if self._file is None:
                raise VharmError("no file in this upload (a multipart/form-data field 'file' with a file name)")
            if not self._file.closed:
                raise VharmError(f"{self.name}: the upload ended early (the connection dropped?); send it again")
            return self.uploads._add(self.folder, self.name, Path(self._file.name), self.size)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Removes what was received (a failed, refused or dropped upload)."""
        if self._file is not None:
            self._file.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def unzip_frames(path: Path, out: Path, limit: int, name: str) -> None:
    """Unpacks the images of a zip into one flat directory `out` under their base names (sorted by name, they are
    the frames), streaming, at most `limit` bytes unpacked. Folders, hidden files and other files are left out;
    two images with the same base name are an error (which would be which frame?)."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        raise VharmError(f"{name}: not a readable zip file") from None
    with archive:
        members = {}
        for info in archive.infolist():
            base = PurePosixPath(info.filename.replace("\\", "/")).name
            if info.is_dir() or base.startswith(".") or "__MACOSX" in info.filename:
                continue
            if Path(base).suffix.lower() not in IMAGE_EXTS:
                continue
            if base in members:
                raise VharmError(f"{name}: two images named {base} (in different folders); which frame is which?")
            members[base] = info
        if not members:
            raise VharmError(f"{name}: no frames in this zip (expected {', '.join(IMAGE_EXTS)} images)")
        too_big = VharmError(f"{name}: its frames unpack to more than the upload limit of {format_size(limit)} "
                             "(vharm serve --max-upload)")
        if sum(info.file_size for info in members.values()) > limit:
            raise too_big
        out.mkdir()
        unpacked = 0
        for base, info in members.items():
            try:
                with archive.open(info) as src, open(out / base, "wb") as dst:
                    while chunk := src.read(CHUNK):
                        unpacked += len(chunk)
                        if unpacked > limit:  # the sizes a zip declares can lie
                            raise too_big
                        dst.write(chunk)
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:
                raise VharmError(f"{name}: {info.filename} cannot be unpacked, the zip is damaged or truncated "
                                 f"({e})") from None
