"""Nothing is lost: every output is written under a temporary name beside its target and renamed when complete."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from vharm.errors import VharmError


def check_output(path: Path, overwrite: bool, inputs: tuple[Path, ...] = ()) -> Path:
    """Refuses an output that exists (without `overwrite`), equals an input, or sits in a missing/read-only dir."""
    path = Path(path)
    for inp in inputs:
        if inp is not None and Path(inp).exists() and path.exists() and path.resolve() == Path(inp).resolve():
            raise VharmError(f"{path}: output is the same file as an input; choose another output name")
    if path.exists() and not overwrite:
        raise VharmError(f"{path}: already exists (use --overwrite to replace it)")
    if path.is_dir() and path.suffix:
        raise VharmError(f"{path}: is a directory; a file output cannot replace it")
    parent = path.absolute().parent
    if not parent.is_dir():
        raise VharmError(f"{path}: output directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise VharmError(f"{path}: output directory {parent} is not writable")
    return path


def _remove(path: Path) -> None:
    """Deletes a file or a directory tree, if there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(final: Path, suffix: str | None = None):
    """Yields a temporary file path beside `final`; renames it to `final` only if the block succeeds.

    The temporary name keeps the extension (encoders pick the container from it).
    """
    final = Path(final)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=suffix or final.suffix, dir=final.absolute().parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if tmp.exists():  # mkstemp makes 0600 files; give the output the user's usual mode
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(final: Path, overwrite: bool = False):
    """Yields a temporary directory beside `final`; it replaces `final` only if the block succeeds."""
    final = Path(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.absolute().parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 directories
        if final.exists():
            if not overwrite:
                raise VharmError(f"{final}: already exists (use --overwrite to replace it)")
            old = final.with_name(f".{final.name}.old")
            _remove(old)
            os.replace(final, old)
            os.replace(tmp, final)
            _remove(old)
        else:
            os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
