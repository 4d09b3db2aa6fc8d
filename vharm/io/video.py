"""Frame readers and writers for video files (PyAV), frame directories and single images.

Readers yield `Frame`s (uint8 RGB (H, W, 3), optional alpha, a name and a timestamp) and stream: memory does not
grow with video length. Writers write under a temporary name and rename when closed without error.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from av.video.reformatter import Interpolation

from vharm.errors import VharmError
from vharm.io.files import atomic_dir, atomic_path
from vharm.io.images import IMAGE_EXTS, MAX_PIXELS, list_frames, read_image

VIDEO_EXTS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
DEFAULT_FPS = Fraction(25)
# Colour tags (libavutil AVColorSpace / AVColorPrimaries / AVColorTransferCharacteristic codes, in that order).
UNTAGGED = (2, 2, 2)
# swscale's YUV<->RGB matrix for an AVColorSpace code (5 and 6 are both the BT.601 matrix).
_MATRIX = {1: "ITU709", 4: "FCC", 5: "ITU601", 6: "ITU601", 7: "SMPTE240M", 9: "BT2020", 10: "BT2020"}
NO_MATRIX = (0, 2)  # 0: an RGB stream (no YUV matrix), 2: unspecified
# Codes that name the same standard as matrix and as primaries (BT.709, BT.470BG, SMPTE 170M, SMPTE 240M, BT.2020).
_SAME_STANDARD = (1, 5, 6, 7, 9)
_TRANSFER = {1: 1, 5: 6, 6: 6, 7: 7}  # the transfer that goes with a matrix
# swscale's default YUV -> RGB path truncates: coloured pixels came out 1.1 levels (0-255) darker on average,
# once per generation through vharm (measured on the street composite and on flat colour patches). Accurate
# rounding with full chroma interpolation: -0.1 levels, for ~5 ms more per 1080p frame (in the decode thread).
_ACCURATE = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT
# 0-255 gray -> limited-range ("tv") luma 16-235, as the writer tags its streams.
_LIMITED_LUMA = np.round(16 + np.arange(256) * (219 / 255)).astype(np.uint8)


def colour_tags(tags: tuple[int, int, int], size: tuple[int, int]) -> tuple[int, int, int]:
    """The tags vharm reads a stream with and writes its output with: the stream's own, and where it says nothing,
    what players assume (the matrix of its primaries, else BT.709 for HD, 1280 wide or over 576 lines, else BT.601
    as SMPTE 170M).
    """
    matrix, primaries, transfer = tags
    if matrix in NO_MATRIX:
        hd = size[0] >= 1280 or size[1] > 576
        matrix = primaries if primaries in _SAME_STANDARD else 1 if hd else 6
    if primaries == 2:
        primaries = 9 if matrix == 10 else matrix if matrix in _SAME_STANDARD else 2
    if transfer == 2:
        transfer = _TRANSFER.get(matrix, 2)
    return matrix, primaries, transfer


@dataclass
class Frame:
    rgb: np.ndarray | None  # (H, W, 3) uint8 ((H, W) for gray mask video); None: failed to decode (--skip-bad-frames)
    alpha: np.ndarray | None  # (H, W) float32 in [0, 1] for RGBA images
    name: str  # output frame name for directory outputs
    pts: int | None  # presentation timestamp in `time_base` units (video inputs)
    source: Path | None = None  # the file this frame was read from (frame directories), for messages


@dataclass
class StreamInfo:
    """What a writer needs to know of the stream it writes: size, rate, timestamps, audio to copy."""

    size: tuple[int, int]  # (width, height)
    fps: Fraction = DEFAULT_FPS
    time_base: Fraction | None = None  # set: frame pts are in these units and are kept
    audio_from: Path | None = None  # a video whose audio stream is copied into the output
    colour: tuple[int, int, int] = UNTAGGED  # the input's colour tags, kept in video outputs (see colour_tags)


class FrameSource:
    """A video file, a directory of frames (sorted by name) or one image, read frame by frame.

    Attributes: path, kind ("video" | "frames" | "image"), fps (Fraction), count (frames, or None when a video
    container does not say), size (width, height), time_base (video inputs).
    """

    def __init__(self, path: Path, skip_bad_frames: bool = False, gray: bool = False, precise: bool = True):
        self.path = Path(path)
        self.skip_bad_frames = skip_bad_frames
        # Mask videos: decode straight to 8-bit gray (the luma plane, full range), ~20x cheaper at 1080p than
        # RGB conversion plus a channel mean; `Frame.rgb` is then (H, W).
        self.gray = gray
        # precise=False: swscale's plain bilinear chroma upsampling instead of its accurate rounding and full
        # horizontal chroma interpolation (0.6 ms against 7.3 ms a 1080p frame; colours about a level off, 3 at
        # most inside flat areas, more at colour edges): for what only segments the frames; whatever is written
        # keeps the precise path.
        self.interpolation = _ACCURATE if precise else Interpolation.BILINEAR
        self.time_base = None
        self.audio = None
        self.colour = UNTAGGED
        self.duration = self.decoded_until = None
        if self.path.is_dir():
            self.kind = "frames"
            self.files = list_frames(self.path)
            if not self.files:
                raise VharmError(f"{self.path}: no frames in this directory (expected {', '.join(IMAGE_EXTS)})")
            self.count, self.fps = len(self.files), DEFAULT_FPS
            first, _ = read_image(self.files[0])
            self.size = (first.shape[1], first.shape[0])
        elif not self.path.exists():
            raise VharmError(f"{self.path}: no such file or directory")
        elif self.path.suffix.lower() in IMAGE_EXTS:
            self.kind, self.files, self.count, self.fps = "image", [self.path], 1, DEFAULT_FPS
            first, _ = read_image(self.path)
            self.size = (first.shape[1], first.shape[0])
        else:
            self.kind = "video"
            self._probe_video()

    def _probe_video(self) -> None:
        if self.path.stat().st_size == 0:
            raise VharmError(f"{self.path}: empty file (0 bytes)")
        try:
            with av.open(str(self.path)) as c:
                if not c.streams.video:
                    raise VharmError(f"{self.path}: no video stream in this file")
                vs = c.streams.video[0]
                self.size = (vs.codec_context.width, vs.codec_context.height)
                self.fps = vs.average_rate or vs.guessed_rate or DEFAULT_FPS
                self.time_base = vs.time_base
                self.count = vs.frames or None
                self.audio = bool(c.streams.audio)
                cc = vs.codec_context
                self.colour = (int(cc.colorspace), int(cc.color_primaries), int(cc.color_trc))
                if self.colour[0] not in _MATRIX and self.colour[0] not in NO_MATRIX:
                    raise VharmError(f"{self.path}: colour matrix {self.colour[0]} (AVColorSpace code) is not "
                                     f"supported; convert to BT.709 or BT.601 first")
                self.duration = c.duration / av.time_base if c.duration else None  # seconds
        except av.FFmpegError as e:
            raise VharmError(f"{self.path}: not a readable video ({e.strerror or e.__class__.__name__})") from None
        if not self.size[0] or not self.size[1]:
            raise VharmError(f"{self.path}: video stream has no frame size")
        if self.size[0] * self.size[1] > MAX_PIXELS:
            raise VharmError(f"{self.path}: {self.size[0]}x{self.size[1]} is above vharm's limit of "
                             f"{MAX_PIXELS // 1_000_000} megapixels")

    def __iter__(self):
        if self.kind != "video":
            for f in self.files:
                try:
                    rgb, alpha = read_image(f)
                except VharmError:
                    if not self.skip_bad_frames:
                        raise
                    yield Frame(None, None, f.stem + ".png", None, f)
                    continue
                if (rgb.shape[1], rgb.shape[0]) != self.size:
                    raise VharmError(f"{f}: frame size {rgb.shape[1]}x{rgb.shape[0]} differs from the first "
                                     f"frame's {self.size[0]}x{self.size[1]}")
                yield Frame(rgb, alpha, f.stem + ".png", None, f)
            return
        yield from self._decode()

    def _decode(self):
        """Decodes packet by packet so that a damaged frame is reported with its index.

        With `skip_bad_frames` a frame that fails to decode is yielded with `rgb` None (the caller reuses the
        previous output); otherwise it is an error.
        """
        index = 0
        # Decode with the matrix the writer encodes and tags with, so that a round trip keeps the colours.
        matrix = _MATRIX[colour_tags(self.colour, self.size)[0]]
        try:
            with av.open(str(self.path)) as c:
                vs = c.streams.video[0]
                for packet in c.demux(vs):
                    try:
                        decoded = packet.decode()
                    except av.FFmpegError as e:
                        if not self.skip_bad_frames:
                            raise VharmError(f"{self.path}: frame {index} failed to decode "
                                             f"({e.strerror or e.__class__.__name__}); --skip-bad-frames "
                                             "replaces such frames by the previous output") from None
                        yield Frame(None, None, f"{index:05d}.png", packet.pts)
                        index += 1
                        continue
                    for frame in decoded:
                        pixels = (frame.to_ndarray(format="gray") if self.gray else
                                  frame.reformat(format="rgb24", src_colorspace=matrix,
                                                 interpolation=self.interpolation).to_ndarray())
                        yield Frame(pixels, None, f"{index:05d}.png", frame.pts)
                        self.decoded_until = frame.time  # seconds, for the truncation check
                        index += 1
        except av.FFmpegError as e:
            raise VharmError(f"{self.path}: decoding stopped at frame {index} "
                             f"({e.strerror or e.__class__.__name__})") from None
        if index == 0:
            raise VharmError(f"{self.path}: no frame could be decoded")

    @property
    def info(self) -> StreamInfo:
        return StreamInfo(self.size, self.fps, self.time_base, self.path if self.audio else None, self.colour)

    def looped(self):
        """Frames forever, restarting at the end (for the shorter input of `vharm composite`)."""
        while True:
            yield from self


def _audio_packets(path: Path):
    """The audio packets of a video, for copying into an output unchanged."""
    with av.open(str(path)) as c:
        if c.streams.audio:
            yield from (p for p in c.demux(c.streams.audio[0]) if p.dts is not None)


def output_kind(path: Path) -> str:
    """"video", "image" or "frames" (a directory) from the output path's form."""
    suffix = Path(path).suffix.lower()
    if suffix in VIDEO_EXTS:
        return "video"
    if suffix in IMAGE_EXTS:
        return "image"
    if suffix:
        raise VharmError(f"{path}: unknown output extension {suffix!r} (video: {', '.join(VIDEO_EXTS)}; "
                         f"image: {', '.join(IMAGE_EXTS)}; no extension: a directory of PNG frames)")
    return "frames"


@dataclass
class EncodeOptions:
    crf: int = 18
    # "": veryfast for colour (~19 fps at 1080p on 2 cores, 2.5x smaller than ultrafast's), ultrafast for gray mask
    # videos: a 1080p mask in 9 ms instead of 24, and closer to it (largest error 10 levels against veryfast's 55,
    # at 2.8x the size, ~21 KB a frame; `vharm segment` of street-1080p, crf 18).
    preset: str = ""
    codec: str = ""  # "" = libx264 (libvpx-vp9 for .webm)

    def x264_preset(self, gray: bool) -> str:
        return self.preset or ("ultrafast" if gray else "veryfast")


class FrameWriter:
    """Writes frames to a video file, a PNG directory or one image; complete outputs only (temp + rename).

    Use as a context manager; on an exception nothing appears at the final path.
    """

    def __init__(self, path: Path, like: StreamInfo, overwrite: bool = False, options: EncodeOptions | None = None,
                 copy_audio: bool = True, warn=print):
        self.path, self.like, self.kind = Path(path), like, output_kind(path)
        self.options, self.copy_audio, self.warn = options or EncodeOptions(), copy_audio, warn
        self.overwrite = overwrite
        self.count = 0
        self._stack = contextlib.ExitStack()

    def __enter__(self):
        if self.kind == "frames":
            self.tmp = self._stack.enter_context(atomic_dir(self.path, overwrite=self.overwrite))
        else:
            self.tmp = self._stack.enter_context(_atomic_file(self.path))
        if self.kind == "video":
            self._open_video()
        return self

    def _open_video(self) -> None:
        w, h = self.like.size
        self.pad = (w % 2, h % 2)
        if any(self.pad):
            self.warn(f"vharm: warning: {self.path}: H.264/yuv420p needs an even size; padding {w}x{h} to "
                      f"{w + self.pad[0]}x{h + self.pad[1]} by repeating the last column/row")
        codec = self.options.codec or ("libvpx-vp9" if self.path.suffix.lower() == ".webm" else "libx264")
        self.container = av.open(str(self.tmp), "w")
        self.stream = self.container.add_stream(codec, rate=self.like.fps)
        self.stream.width, self.stream.height = w + self.pad[0], h + self.pad[1]
        self.stream.pix_fmt = "yuv420p"
        # Encode with the input's colour matrix and say so in the stream: untagged output makes players guess,
        # and swscale's default (BT.601) is not what they guess for HD.
        self.tags = colour_tags(self.like.colour, (w, h))
        cc = self.stream.codec_context
        cc.colorspace, cc.color_primaries, cc.color_trc = self.tags
        cc.color_range = 1  # limited ("tv") range, as yuv420p H.264 is read everywhere
        self.x264 = codec == "libx264"  # its options are set at the first frame, which says colour or gray
        if self.like.time_base is not None:  # keep input timestamps (variable frame rate too)
            self.stream.time_base = self.like.time_base
            self.stream.codec_context.time_base = self.like.time_base
        self.audio_out = None
        if self.copy_audio and self.like.audio_from is not None:
            with av.open(str(self.like.audio_from)) as c:
                try:
                    self.audio_out = self.container.add_stream_from_template(c.streams.audio[0])
                except (ValueError, av.FFmpegError) as e:
                    self.warn(f"vharm: warning: {self.path}: audio of {self.like.audio_from} not copied ({e})")

    def write(self, rgb: np.ndarray, frame: Frame) -> None:
        """Writes uint8 (H, W, 3) RGB, or (H, W) gray (masks: 8-bit gray PNGs, or the luma of a video)."""
        if self.kind == "frames":
            _imwrite(self.tmp / frame.name, rgb)
        elif self.kind == "image":
            if self.count:
                raise VharmError(f"{self.path}: an image output holds one frame; the input has more "
                                 "(write a video or a directory instead)")
            _imwrite(self.tmp, rgb)
        else:
            if any(self.pad):
                rgb = np.pad(rgb, ((0, self.pad[1]), (0, self.pad[0])) + ((0, 0),) * (rgb.ndim - 2), mode="edge")
            if self.count == 0 and self.x264:
                preset = self.options.x264_preset(gray=rgb.ndim == 2)
                self.stream.options = {"crf": str(self.options.crf), "preset": preset}
            if rgb.ndim == 3:
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(
                    format="yuv420p", dst_colorspace=_MATRIX[self.tags[0]], dst_color_range="MPEG")
            else:  # gray (a mask): the luma in limited range, neutral chroma; swscale's gray path took 10 ms at 1080p
                h, w = rgb.shape
                yuv = np.full((h * 3 // 2, w), 128, np.uint8)
                yuv[:h] = cv2.LUT(rgb, _LIMITED_LUMA)
                vf = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
            if frame.pts is not None and self.like.time_base is not None:
                vf.pts, vf.time_base = frame.pts, self.like.time_base
            else:
                vf.pts, vf.time_base = self.count, 1 / Fraction(self.like.fps)
            for packet in self.stream.encode(vf):
                self.container.mux(packet)
        self.count += 1

    def _finish_video(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        if self.audio_out is not None:
            for packet in _audio_packets(self.like.audio_from):
                packet.stream = self.audio_out
                self.container.mux(packet)

    def __exit__(self, exc_type, exc, tb):
        try:
            if self.kind == "video":
                try:
                    if exc_type is None:
                        self._finish_video()
                finally:
                    self.container.close()
        except BaseException as e:
            self._stack.__exit__(type(e), e, e.__traceback__)  # the temporary file is removed, not renamed
            raise
        return self._stack.__exit__(exc_type, exc, tb)


@contextlib.contextmanager
def _atomic_file(final: Path):
    with atomic_path(final) as tmp:
        tmp.unlink()  # encoders create the file themselves
        yield tmp


def _imwrite(path: Path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb):
        raise VharmError(f"{path}: could not write image")
