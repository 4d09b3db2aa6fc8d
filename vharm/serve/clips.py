"""A clip of `vharm serve`: what the page opened (a composite and its mask, or a foreground and a background to paste
first), read once into a 480p preview copy, previewed frame by frame with `Harmonizer.step` and exported whole by
the CLI's functions (`harmonize_video`, `composite_video`).

The preview copy is why scrubbing is instant: a video decodes only forwards, and automatic masks and temporal
smoothing need the frames in order, so the clip is read once, in order, by the same readers and the same mask rule as
the CLI (`FrameSource`, `MaskSource`, `open_composite`), and each frame is kept as a JPEG (~150 kB at 854x480) with
its mask as an 8-bit PNG. The preview runs G on that copy, and G sees any frame at its working resolution (128^2):
on the 1080p street composite the preview's change stays within 0.2 levels (mean over the mask) of the export's,
which runs the full-resolution frames of the original files (near the do-no-harm gate's threshold the two may
decide differently).
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from vharm.errors import VharmError
from vharm.inference.composite import composite_video, open_composite
from vharm.inference.harmonizer import Harmonizer, to_tensor
from vharm.inference.stream import Timing, check_mask_size, harmonize_video, warn_short
from vharm.io.masks import AUTO, MaskSource
from vharm.io.video import Frame, FrameSource, StreamInfo
from vharm.serve.jobs import Job
from vharm.serve.uploads import Upload

PREVIEW_SIZE = (854, 480)  # the preview copy fits in this (long side, short side), pixels: 480p
JPEG_QUALITY = 95
CACHE_FRAMES = 64  # preview frames kept decoded in memory (1.2 MB each at 854x480)
# With temporal smoothing A, a preview of frame i starts the EMA at frame i - K, where A^K < SMOOTHING_RESIDUAL (what
# the frames before weigh), at most MAX_WARMUP frames earlier (~10 ms each at 480p): within a second.
SMOOTHING_RESIDUAL = 0.01
MAX_WARMUP = 60
MASK_MODES = ("file", "auto", "none", "alpha")  # the page's mask choices (see `harmonize_source`)


@dataclass
class ClipSource:
    """A clip's frames as the CLI reads them, and how the CLI exports it.

    Attributes:
        items: (Frame, mask float32 (H, W) or None for mask-free) per frame, read lazily, once.
        info: size, frame rate, audio of the output.
        total: the frame count the container claims, if any.
        mask_name: the mask file (or the input), for messages.
        export: (harmonizer, output, warn, on_frame) -> Timing: the whole clip harmonized into `output`.
        read_all: (frames decoded) -> None: the CLI's check that the whole file decoded (a truncated video).
        image: a single image (exported as PNG) rather than a video.
        warnings: what reading it warned of, as the CLI words it.
    """

    items: Iterator[tuple[Frame, np.ndarray | None]]
    info: StreamInfo
    total: int | None
    mask_name: str
    export: Callable[..., Timing]
    read_all: Callable[[int], None]
    image: bool
    warnings: list[str]


def harmonize_source(composite: Upload, mask: Upload | str) -> ClipSource:
    """A composite and its mask, as `vharm harmonize` reads them: `mask` an upload (video, image or zip of frames), or
    "auto" (the people in each frame), "none" (mask-free: D's map) or "alpha" (the composite's own alpha)."""
    if isinstance(mask, str) and mask not in MASK_MODES[1:]:
        raise VharmError(f"mask {mask!r}: choose a mask file, or one of {', '.join(MASK_MODES[1:])}")
    spec = mask.path if isinstance(mask, Upload) else AUTO if mask == "auto" else None
    no_mask = mask == "none"
    source = FrameSource(composite.path)
    masks = MaskSource(spec, source, no_mask=no_mask)

    def export(harmonizer: Harmonizer, output: Path, warn, on_frame, two_pass: bool = False) -> Timing:
        return harmonize_video(harmonizer, composite.path, spec, output, no_mask=no_mask, warn=warn,
                               on_frame=on_frame, two_pass=two_pass)

    warnings: list[str] = []
    return ClipSource(masks.attach(source), source.info, source.count, str(masks.path or source.path), export,
                      lambda decoded: warn_short(source, decoded, warnings.append), source.kind == "image", warnings)


def paste_source(fg: Upload, fg_mask: Upload | None, bg: Upload, *, position: tuple[int, int] | None = None,
                 scale: float = 1.0, length: str = "shortest") -> ClipSource:
    """A foreground (with its mask; None: its alpha, else the people in it) pasted over a background, as
    `vharm composite --harmonize` does it."""
    mask_path = fg_mask.path if fg_mask is not None else None
    options = {"position": position, "scale": scale, "length": length}
    warnings: list[str] = []
    composite = open_composite(fg.path, mask_path, bg.path, warn=warnings.append, **options)

    def export(harmonizer: Harmonizer, output: Path, warn, on_frame) -> Timing:
        return composite_video(fg.path, mask_path, bg.path, output, harmonizer, warn=warn, on_frame=on_frame,
                               **options)

    still = fg.kind == bg.kind == "image"
    return ClipSource(composite.items, composite.info, composite.total, composite.mask_name, export,
                      lambda decoded: None, still, warnings)


def change_levels(before: np.ndarray, after: np.ndarray, mask: np.ndarray) -> float:
    """How much a frame changed inside its mask: the RMS over the mask of `after - before` (uint8 RGB), in 0-255
    levels: the do-no-harm gate's measure, taken on the frame rather than at the working resolution."""
    weight = float(mask.sum()) * 3
    if weight <= 0:
        return 0.0
    diff = after.astype(np.float32) - before.astype(np.float32)
    return float(np.sqrt((diff * diff * mask[..., None]).sum() / weight))


def preview_scale(size: tuple[int, int]) -> float:
    """The factor (<= 1) that fits a (width, height) frame in `PREVIEW_SIZE` (either orientation)."""
    long_side, short_side = PREVIEW_SIZE
    return min(1.0, long_side / max(size), short_side / min(size))


def smoothing_warmup(a: float) -> int:
    """How many frames before the previewed one the EMA of temporal smoothing `a` starts (see SMOOTHING_RESIDUAL).

    Example:
        >>> smoothing_warmup(0.0), smoothing_warmup(0.5), smoothing_warmup(0.99)
        (0, 7, 60)
    """
    if a <= 0:
        return 0
    return min(MAX_WARMUP, math.ceil(math.log(SMOOTHING_RESIDUAL) / math.log(a)))


class Clip:
    """One opened clip: its preview copy in `folder/preview`, its exports in `folder/exports`.

    Attributes:
        id, name: what the page calls it (the composite's or the foreground's file name).
        source: how the CLI reads and exports it; mask_mode: "file", "auto", "none" (mask-free), "alpha" or
            "pasted" (a foreground pasted over a background).
        uploads: the ids of the uploads it reads (removed with it).
        ready: frames of the preview copy written so far; preview_size: their (width, height).
        prepare, export: its jobs (the latest export).
    """

    def __init__(self, clip_id: str, folder: Path, name: str, source: ClipSource, mask_mode: str,
                 uploads: list[str]):
        self.id, self.folder, self.name, self.source = clip_id, Path(folder), name, source
        self.mask_mode, self.uploads = mask_mode, uploads
        (self.folder / "preview").mkdir(parents=True)
        self.size = source.info.size
        s = preview_scale(self.size)
        self.preview_size = (max(1, round(self.size[0] * s)), max(1, round(self.size[1] * s)))
        self.ready = 0
        self.prepare: Job | None = None
        self.export: Job | None = None
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray | None]] = OrderedDict()
        self._cache_lock = threading.Lock()
        # The preview's last frame, settings and EMA state: playing on continues from it.
        self._preview_lock = threading.Lock()
        self._last: tuple | None = None
        # Two passes: G's estimate of every preview frame (the model's alone, made once), and the last plan.
        self._estimates: tuple[int, list] | None = None  # (g_steps, the estimates made with it)
        self._plan: tuple | None = None

    @property
    def download_name(self) -> str:
        return f"{Path(self.name).stem}-harmonized{'.png' if self.source.image else '.mp4'}"

    def to_json(self) -> dict:
        status = {"done": "ready", "failed": "failed", "cancelled": "failed"}.get(
            self.prepare.status if self.prepare else "", "reading")
        return {"id": self.id, "name": self.name, "status": status, "ready": self.ready,
                "total": self.ready if status == "ready" else self.source.total, "width": self.size[0],
                "height": self.size[1], "preview_width": self.preview_size[0], "preview_height": self.preview_size[1],
                "fps": float(self.source.info.fps), "audio": self.source.info.audio_from is not None,
                "image": self.source.image, "mask": self.mask_mode,
                "prepare": self.prepare.id if self.prepare else None,
                "export": self.export.id if self.export else None}

    # ------------------------------------------------------------------------------------------ the preview copy

    def _paths(self, index: int) -> tuple[Path, Path]:
        stem = self.folder / "preview" / f"{index:06d}"
        return stem.with_suffix(".jpg"), stem.with_suffix(".png")

    def read(self, job: Job) -> None:
        """The prepare job: reads every frame (and mask) in order into the preview copy."""
        w, h = self.preview_size
        for index, (frame, mask) in enumerate(self.source.items):
            check_mask_size(mask, frame, self.source.mask_name)
            small = cv2.resize(frame.rgb, (w, h), interpolation=cv2.INTER_AREA) if (w, h) != self.size else frame.rgb
            rgb_path, mask_path = self._paths(index)
            _write(rgb_path, cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if mask is not None:
                small_mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_AREA) if (w, h) != self.size else mask
                _write(mask_path, np.round(np.clip(small_mask, 0, 1) * 255).astype(np.uint8))
            self.ready = index + 1
            job.progress(self.ready)
        self.source.read_all(self.ready)

    def frame(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Preview frame `index`: (uint8 RGB (h, w, 3), mask float32 (h, w) or None in mask-free mode)."""
        if not 0 <= index < self.ready:
            raise IndexError(index)
        with self._cache_lock:
            if index in self._cache:
                self._cache.move_to_end(index)
                return self._cache[index]
        rgb_path, mask_path = self._paths(index)
        rgb = cv2.cvtColor(cv2.imread(str(rgb_path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        mask = (cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255
                if mask_path.exists() else None)
        with self._cache_lock:
            self._cache[index] = (rgb, mask)
            while len(self._cache) > CACHE_FRAMES:
                self._cache.popitem(last=False)
        return rgb, mask

    # ------------------------------------------------------------------------------------------------ previews

    def harmonized(self, index: int, harmonizer: Harmonizer, two_pass: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Preview frame `index` through `Harmonizer.step` with the harmonizer's settings: (pred uint8 RGB, mask
        used float32). With temporal smoothing the frames before it run first (`smoothing_warmup`), or, playing on
        from the frame before with the same settings, its state carries on. `two_pass`: the frame's transform from
        the plan of the whole preview copy (`shot_plan`). Automatic masks: without the brightening gain and with one
        step of G (`Harmonizer.for_mask`), as the export."""
        harmonizer = harmonizer.for_mask(self.mask_mode)
        if two_pass:
            rgb, mask = self.frame(index)
            pred, used, _ = harmonizer.step(rgb, mask, transform=self.shot_plan(harmonizer)[index])
            return pred, used
        key = dataclasses.astuple(harmonizer.inference_config)
        with self._preview_lock:
            if self._last is not None and self._last[:2] == (key, index):
                return self._last[3], self._last[4]
            start, state = index - smoothing_warmup(harmonizer.temporal_smoothing), None
            if self._last is not None and self._last[:2] == (key, index - 1):
                start, state = index, self._last[2]
            for i in range(max(0, start), index + 1):
                rgb, mask = self.frame(i)
                pred, used, state = harmonizer.step(rgb, mask, state)
            self._last = (key, index, state, pred, used)
            return pred, used

    def shot_plan(self, harmonizer: Harmonizer) -> list:
        """`Harmonizer.plan_shots` of the whole preview copy with the harmonizer's settings; the estimates are made
        on first use (G on every preview frame: about 12 ms each at 480p, one thread) and kept, the plan for the
        latest settings."""
        if self.prepare is None or self.prepare.status != "done":
            raise VharmError("two passes need the whole clip: wait until it has been read")
        key = dataclasses.astuple(harmonizer.inference_config)
        with self._preview_lock:
            if self._estimates is None or self._estimates[0] != harmonizer.g_steps:  # G's steps are in them
                estimates = [harmonizer.estimate(*self.frame(i)) for i in range(self.ready)]
                self._estimates = (harmonizer.g_steps, estimates)
            if self._plan is None or self._plan[0] != key:
                self._plan = (key, harmonizer.plan_shots(self._estimates[1]))
            return self._plan[1]

    def mask_used(self, index: int, harmonizer: Harmonizer) -> np.ndarray:
        """The mask of preview frame `index` as the harmonizer uses it (mask-free: made from D's map), float32."""
        rgb, mask = self.frame(index)
        return mask if mask is not None else harmonizer.step(rgb, None)[1]

    def disharmony(self, index: int, harmonizer: Harmonizer) -> np.ndarray:
        """D's disharmony map of preview frame `index`, float32 (h, w) in [0, 1]."""
        rgb, _ = self.frame(index)
        return harmonizer.disharmony_map(to_tensor(rgb))[0, 0].numpy()

    # ------------------------------------------------------------------------------------------------- exports

    def run_export(self, job: Job, harmonizer: Harmonizer, two_pass: bool = False) -> Path:
        """The export job: the whole clip, full resolution, from the original files, into folder/exports/JOB
        (`two_pass`: one transform per shot, a composite's clip only)."""
        output = self.export_dir(job) / self.download_name
        output.parent.mkdir(parents=True)
        self.source.export(harmonizer, output, job.warnings.append, job.progress,
                           **({"two_pass": True} if two_pass else {}))
        return output

    def export_dir(self, job: Job) -> Path:
        return self.folder / "exports" / job.id

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _write(path: Path, pixels: np.ndarray, params: list[int] | None = None) -> None:
    if not cv2.imwrite(str(path), pixels, params or []):
        raise VharmError(f"{path}: could not write the preview copy (disk full?)")
