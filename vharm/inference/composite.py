"""`vharm composite`: paste a foreground video (with its alpha/mask, or the people found in it) over a background
video or image, optionally harmonizing in the same pass; and the bundled demo built on it.
"""

from __future__ import annotations

import functools
import itertools
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from vharm.errors import VharmError
from vharm.inference.harmonizer import Harmonizer
from vharm.inference.stream import Timing, harmonize_video, run_stream
from vharm.io.files import atomic_path
from vharm.io.images import read_image
from vharm.io.masks import AUTO, MaskSource, has_alpha, read_mask
from vharm.io.video import EncodeOptions, Frame, FrameSource, StreamInfo
from vharm.segment import Segmenter

ASSETS = Path(__file__).parents[1] / "assets"


def paste(fg: np.ndarray, alpha: np.ndarray, bg: np.ndarray, position: tuple[int, int] | None,
          scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Alpha-blends `fg` (scaled by `scale`, top-left at `position`; None = centred) onto `bg`.

    Returns (composite uint8 (H, W, 3), mask float32 (H, W)) at the background's size; parts of the
    foreground outside the background are cut off.
    """
    if scale != 1:
        size = (max(1, round(fg.shape[1] * scale)), max(1, round(fg.shape[0] * scale)))
        fg = cv2.resize(fg, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        alpha = cv2.resize(alpha, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    h, w = bg.shape[:2]
    fh, fw = fg.shape[:2]
    x, y = position if position is not None else ((w - fw) // 2, (h - fh) // 2)
    mask = np.zeros((h, w), np.float32)
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + fw, w), min(y + fh, h)
    comp = bg.copy()
    if x0 < x1 and y0 < y1:
        a = alpha[y0 - y:y1 - y, x0 - x:x1 - x]
        mask[y0:y1, x0:x1] = a
        region = fg[y0 - y:y1 - y, x0 - x:x1 - x].astype(np.float32)
        blended = a[..., None] * region + (1 - a[..., None]) * bg[y0:y1, x0:x1]
        comp[y0:y1, x0:x1] = np.round(blended).astype(np.uint8)
    return comp, mask


@dataclass
class Composite:
    """A foreground pasted over a background, frame by frame: what `run_stream` needs to write or harmonize it.

    Attributes:
        items: (Frame, mask float32 (H, W)) per composite frame, made as they are read (one pass).
        info: size, rate, audio (the foreground's, unless the background is followed) and colour tags.
        inputs: the files read (the outputs may not be one of them); total: the frame count, if known.
        mask_name: the mask file, or the foreground, for messages.
    """

    items: Iterator[tuple[Frame, np.ndarray]]
    info: StreamInfo
    inputs: tuple[Path | None, ...]
    total: int | None
    mask_name: str


def open_composite(fg, fg_mask, bg, *, position: tuple[int, int] | None = None, scale: float = 1.0,
                   length: str = "shortest", segmenter: Segmenter | None = None, warn=None) -> Composite:
    """Pastes FG (with FG_MASK) over BG, lazily: the inputs are checked here, the frames made as `items` is read.

    `fg_mask` None: the foreground's own alpha (RGBA frames whose alpha varies), else the people in it, found by
    `segmenter` (default `Segmenter()`) in the same pass, which `warn` says. `length`: "shortest" stops with the
    shorter input; "fg"/"bg" follow that input and loop the other.
    """
    if length not in ("shortest", "fg", "bg"):
        raise VharmError(f"--length must be shortest, fg or bg, got {length!r}")
    if scale <= 0:
        raise VharmError(f"--scale must be positive, got {scale}")
    warn = warn or functools.partial(print, file=sys.stderr)
    fg_src, bg_src = FrameSource(Path(fg)), FrameSource(Path(bg))
    if fg_mask is None and not has_alpha(fg_src):
        warn(f"vharm: {fg}: no --fg-mask and no alpha channel: segmenting the people in it (--save-mask writes "
             "the pasted mask)")
        fg_mask = segmenter or AUTO
    alphas = MaskSource(fg_mask, fg_src)
    # --length bg loops the foreground with its masks, so that frame and mask stay paired.
    fg_frames = (itertools.chain.from_iterable(alphas.attach(fg_src) for _ in itertools.count()) if length == "bg"
                 else alphas.attach(fg_src))
    bg_frames = bg_src.looped() if length == "fg" or bg_src.count == 1 else bg_src

    def items():
        for i, ((f, a), b) in enumerate(zip(fg_frames, bg_frames)):
            comp, mask = paste(f.rgb, a, b.rgb, position, scale)
            if i == 0 and not mask.any():
                warn(f"vharm: warning: {fg}: the foreground lies outside the background at --position "
                     f"{position} (background {bg_src.size[0]}x{bg_src.size[1]}); nothing is pasted")
            yield Frame(comp, None, f"{i:05d}.png", None), mask

    if length == "bg" and bg_src.count == 1:
        raise VharmError(f"{bg}: --length bg needs a background video, this is one image")
    if length == "shortest":  # the shorter input's frames, where known (a background image loops)
        total = min(filter(None, (fg_src.count, None if bg_src.count == 1 else bg_src.count)), default=None)
    else:
        total = (fg_src if length == "fg" else bg_src).count
    fps = fg_src.fps if fg_src.kind == "video" else bg_src.fps
    info = StreamInfo(bg_src.size, fps, None, fg_src.path if fg_src.audio and length != "bg" else None,
                      bg_src.colour)
    return Composite(items(), info, (fg_src.path, alphas.path, bg_src.path), total, str(alphas.path or fg))


def composite_video(fg, fg_mask, bg, output, harmonizer: Harmonizer | None = None, *,
                    position: tuple[int, int] | None = None, scale: float = 1.0, length: str = "shortest",
                    save_mask=None, overwrite: bool = False, encode: EncodeOptions | None = None,
                    progress: bool = False, segmenter: Segmenter | None = None, warn=None, on_frame=None) -> Timing:
    """Pastes FG (with FG_MASK) over BG into OUTPUT (`open_composite`); harmonizes too when a harmonizer is given.
    `warn` and `on_frame`: see `run_stream`."""
    warn = warn or functools.partial(print, file=sys.stderr)
    c = open_composite(fg, fg_mask, bg, position=position, scale=scale, length=length, segmenter=segmenter,
                       warn=warn)
    return run_stream(harmonizer, c.items, c.info, output, inputs=c.inputs, save_mask=save_mask, overwrite=overwrite,
                      total=c.total, encode=encode, progress=progress, mask_name=c.mask_name, warn=warn,
                      on_frame=on_frame)


def demo_frames(n: int = 48):
    """The bundled example: the astronaut (NASA, public domain) pasted with a warm, bright colour cast onto a
    slowly panning SpaceX launch photo (public domain); she drifts across the frame. Yields (Frame, mask)."""
    fg, bg = read_image(ASSETS / "astronaut.png")[0], read_image(ASSETS / "rocket.jpg")[0]
    alpha = read_mask(ASSETS / "astronaut.png")  # its alpha channel, by the one mask rule
    # The mismatch to fix: a warm, over-exposed studio portrait on a cool outdoor scene.
    cast = np.clip(fg.astype(np.float32) * np.float32([1.25, 1.05, 0.8]) + 12, 0, 255).astype(np.uint8)
    out_w, out_h = 480, 360
    for t in range(n):
        s = t / max(n - 1, 1)
        x0 = int(s * (bg.shape[1] - out_w))  # camera pan, pixels
        frame_bg = np.ascontiguousarray(bg[bg.shape[0] - out_h:, x0:x0 + out_w])
        comp, mask = paste(cast, alpha, frame_bg, (int(40 + 120 * s), out_h - 250), 0.8)
        yield Frame(comp, None, f"{t:05d}.png", None), mask


def run_demo(harmonizer: Harmonizer, outdir: Path, overwrite: bool = False, progress: bool = False) -> dict:
    """Writes the demo's input, mask, output, a side-by-side video and a PNG of one frame to `outdir`."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    info = StreamInfo((480, 360), fps=25)
    paths = {k: outdir / f"{k}.mp4" for k in ("input", "output", "side-by-side")}
    paths["mask"] = outdir / "mask.mp4"
    paths["frame"] = outdir / "side-by-side.png"
    for p in paths.values():
        if p.exists() and not overwrite:
            raise VharmError(f"{p}: already exists (use --overwrite to replace it)")
    run_stream(None, demo_frames(), info, paths["input"], save_mask=paths["mask"], overwrite=True)
    timing = harmonize_video(harmonizer, paths["input"], paths["mask"], paths["output"], overwrite=True,
                             progress=progress)
    comps, outs = FrameSource(paths["input"]), FrameSource(paths["output"])
    side = (Frame(np.concatenate([a.rgb, b.rgb], axis=1), None, a.name, None) for a, b in zip(comps, outs))
    wide = StreamInfo((960, 360), fps=25)
    first = []

    def keep(frames):
        for i, f in enumerate(frames):
            if i == 24:
                first.append(f.rgb)
            yield f, None

    run_stream(None, keep(side), wide, paths["side-by-side"], overwrite=True)
    with atomic_path(paths["frame"]) as tmp:
        cv2.imwrite(str(tmp), cv2.cvtColor(first[0], cv2.COLOR_RGB2BGR))
    return {"timing": timing, **paths}
