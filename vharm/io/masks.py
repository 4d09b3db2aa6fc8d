"""The one mask rule: where a frame's foreground mask comes from, for every command that takes one.

A mask is float32 (H, W) in [0, 1], 1 on the foreground. It comes from one of:

- a mask file: a video, a directory of frames or one image (one image = the same mask for every frame). Each
  mask frame is read by `mask_from_pixels`: its alpha channel if that varies, else its pixels (the mean of the
  channels; 8 or 16 bits; integer masks holding only 0 and 1 are scaled);
- the composite's own alpha (RGBA frames), if it varies: an opaque RGBA image carries no mask;
- a constant (the paper's all-zero / all-one mask ablations);
- "auto": the people in each frame, found by `vharm.segment.Segmenter` as the frame is read (no second decode);
- none: mask-free mode, where D's disharmony map stands in (`Harmonizer.step` with mask None).

`MaskSource` resolves these once, checks sizes and counts against the composite, and `attach` pairs every
composite frame with its mask. Values below `MASK_EPS` count as background.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from vharm.errors import VharmError
from vharm.io.images import decode, read_image, to_unit
from vharm.io.threads import prefetched
from vharm.io.video import Frame, FrameSource
from vharm.segment import Segmenter

MASK_EPS = 1 / 512  # half an 8-bit step: mask values below it count as background
AUTO = "auto"  # the mask spec (`-m auto`, `mask="auto"`) of automatic person masks


def _varies(alpha: np.ndarray | None) -> bool:
    return alpha is not None and alpha.size > 0 and alpha.min() != alpha.max()


def mask_from_pixels(pixels: np.ndarray, alpha: np.ndarray | None = None) -> np.ndarray:
    """A mask image (its pixels and, for RGBA, its alpha) -> float32 (H, W) in [0, 1].

    The alpha is the mask if it varies; otherwise the pixels are (the mean of RGB channels). Integer masks whose
    values are only 0 and 1 (a common export bug) are taken as 0 and 1, not as 0 and 1/255.

    Example:
        >>> m = mask_from_pixels(np.array([[0, 1], [1, 0]], np.uint8))
        >>> m.tolist(), m.dtype.name
        ([[0.0, 1.0], [1.0, 0.0]], 'float32')
    """
    if _varies(alpha):
        return np.ascontiguousarray(alpha, dtype=np.float32)
    if pixels.ndim == 3:
        if pixels.shape[2] == 4:  # RGBA as stored: the alpha if it varies (as stored: the 0-and-1 rule applies)
            return mask_from_pixels(pixels[..., 3] if _varies(pixels[..., 3]) else pixels[..., :3])
        pixels = pixels[..., :3].mean(axis=2).astype(pixels.dtype)
    if np.issubdtype(pixels.dtype, np.integer) and pixels.size and pixels.max() == 1:
        return pixels.astype(np.float32)
    return to_unit(pixels)


def has_alpha(source: FrameSource) -> bool:
    """Whether the frames of `source` carry their own mask: RGBA images whose alpha varies (the first frame's)."""
    return source.kind != "video" and _varies(read_image(source.files[0])[1])


def mask_of_frame(frame: Frame) -> np.ndarray:
    """A frame of a mask file -> its mask (`mask_from_pixels`)."""
    return mask_from_pixels(frame.rgb, frame.alpha)


def read_mask(path: Path) -> np.ndarray:
    """Reads a mask image (8/16-bit, grayscale/RGB/RGBA, soft or JPEG) as float32 (H, W) in [0, 1]."""
    return mask_from_pixels(decode(Path(path)))


class MaskSource:
    """The masks for the frames of `like`, resolved once by the rule of this module.

    Args:
        spec: a mask file (video, frame directory or image), a number (a constant mask), "auto" or a `Segmenter`
            (automatic person masks), or None: the composite's alpha, or with `no_mask` no mask at all (D's map).
        like: the composite the masks are for; sizes and frame counts are checked against it (a mask file needs
            it; constant masks and mask-free mode take their size from each frame).
        no_mask: mask-free mode; excludes `spec`.
        check_size: False leaves the masks' size to the caller (`vharm evaluate --resize` resizes them).

    Attributes:
        kind: "file", "constant", "auto", "alpha" or "none".
        path: the mask file, for messages (None unless kind is "file").
    """

    def __init__(self, spec: Path | str | float | None, like: FrameSource | None, *, no_mask: bool = False,
                 check_size: bool = True):
        if no_mask and spec is not None:
            raise VharmError("--no-mask and -m/--mask exclude each other: give one")
        self.like, self.path, self.constant, self._static, self._source = like, None, None, None, None
        if isinstance(spec, (int, float)) and not isinstance(spec, bool):
            self.kind, self.constant = "constant", float(spec)
            return
        if isinstance(spec, Segmenter) or spec == AUTO:
            self.kind, self.segmenter = "auto", spec if isinstance(spec, Segmenter) else Segmenter()
            return
        if spec is None:
            self.kind = "none" if no_mask else "alpha"
            return
        self.kind, self.path = "file", Path(spec)
        self._source = FrameSource(self.path, gray=True)
        if check_size and self._source.size != like.size:
            raise VharmError(f"{self.path}: mask size {self._source.size[0]}x{self._source.size[1]} differs from "
                             f"the input's {like.size[0]}x{like.size[1]}")
        if self._source.count == 1:
            self._static = mask_of_frame(next(iter(self._source)))
        elif like.count and self._source.count and self._source.count != like.count:
            raise VharmError(f"{self.path}: {self._source.count} mask frames for {like.count} input frames "
                             "(give one mask per frame, or one image for all)")

    def _file_masks(self):
        if self._static is not None:
            return itertools.repeat(self._static)
        return (mask_of_frame(f) for f in self._source)

    def _segmented(self, frames):
        """(frame, automatic mask) in three threads: decoding, `Segmenter.locate` (the only part with a state, which
        runs through the video's frames in order) and, in the thread that iterates this, `Segmenter.upsample` (the
        full-resolution edges, about a fifth of the segmenter's time at 1080p). They share no mutable state."""
        def located():
            state = None
            for frame in prefetched(frames):
                if frame.rgb is None:
                    yield frame, None
                    continue
                state = self.segmenter.locate(frame.rgb, state)
                yield frame, state

        for frame, state in prefetched(located()):
            yield frame, None if state is None else self.segmenter.upsample(frame.rgb, state)

    def attach(self, frames):
        """Yields (frame, mask) for each composite frame: mask float32 (H, W), or None in mask-free mode (and, without
        a mask file, for a frame that failed to decode). The composite's alpha, or the automatic mask, is made here,
        frame by frame (the automatic mask's edges in the thread that iterates this; `_segmented`)."""
        if self.kind == "auto":
            yield from self._segmented(frames)
            return
        if self.kind == "file":
            masks = self._file_masks()
            for frame in frames:
                mask = next(masks, None)
                if mask is None:
                    raise VharmError(f"{self.path}: the masks end before the input {self.like.path}")
                yield frame, mask
            return
        for frame in frames:
            if frame.rgb is None or self.kind == "none":
                yield frame, None
            elif self.kind == "constant":
                yield frame, np.full(frame.rgb.shape[:2], self.constant, np.float32)
            elif _varies(frame.alpha):
                yield frame, frame.alpha
            else:
                why = " (its alpha is opaque everywhere)" if frame.alpha is not None else ""
                raise VharmError(f"{frame.source or self.like.path}: no mask{why}: give -m MASK, RGBA frames whose "
                                 "alpha marks the foreground, or --no-mask")
