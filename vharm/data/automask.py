"""Training sources without masks (`--auto-mask`): the people in them are found by `vharm.segment.Segmenter`, so
that any footage (a folder of photos, a frame directory, a video file) becomes training data.

Why a cache: segmenting costs ~25 ms a frame, and training draws each source frame many times, in every run and on
every rank; so each frame is segmented once and its mask kept as an 8-bit PNG under `CACHE/NAME-KEY/` (KEY: a hash
of the source's resolved path and of `MASKER`), never beside the sources, which may be read-only or shared. An
index (`index.json`) records what each mask was made from (the file's size and mtime) and how much foreground it
holds; a changed file is segmented again. A video is decoded once into the cache as JPEG frames (short side at
most `MAX_SHORT` px), since training reads frames at random.

Frames are left out where the network is unsure (`MIN_CONFIDENCE`: it marks rooftops and roads at half strength
where nobody is) or the mask could not give a training crop (the foreground fills less than `min_fg` of the
smallest crop that `vharm.data.synth` draws around it); a sequence is cut into runs of consecutive kept frames,
and at scene cuts (`SegmentState.scene_cut`), so that a pair of real consecutive frames never spans one. The runs
of one sequence are named `NAME@FIRST-FRAME` and stay on one side of the train/val split
(`vharm.data.sources.split_items`).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
from tqdm import tqdm

from vharm.config import DataConfig
from vharm.data.sources import Item
from vharm.data.synth import MIN_CROP
from vharm.io.files import atomic_path
from vharm.io.images import read_image
from vharm.io.video import FrameSource
from vharm.segment import VERSION as SEGMENTER_VERSION

DEFAULT_CACHE = DataConfig.mask_cache  # data/auto-masks, under the working directory
# What made the cached masks; part of each cache folder's key, so that masks of another segmenter are never taken
# for today's (`vharm.segment.VERSION` changes with `Segmenter()`'s output).
MASKER = f"vharm.segment.Segmenter/{SEGMENTER_VERSION}"
# A frame is kept only where the network is sure: the mean of its soft mask where it is >= 0.5. Measured on the first
# 20 frames of clips with people: 0.82-0.92 (DAVIS hike, rollerblade, tennis, kite-surf, breakdance, schoolgirls),
# person photos 0.91 at the 10th percentile; where nobody is and it marks things anyway: 0.64 (street-1080p rooftops),
# 0.66 (DAVIS car-shadow), 0.71 (blackswan), 0.72 (vtest.avi's road between small pedestrians).
MIN_CONFIDENCE = 0.8
MAX_SHORT = 720  # px: the short side of video frames kept in the cache (training crops are 256-512 px)
JPEG_QUALITY = 92  # of the cached video frames (cv2.IMWRITE_JPEG_QUALITY, 0-100)


class Masker(Protocol):
    """What `AutoMasks` needs of a segmenter (`vharm.segment.Segmenter`, or a stand-in in tests)."""

    def __call__(self, rgb: np.ndarray) -> np.ndarray: ...

    def step(self, rgb: np.ndarray, state=None) -> tuple[np.ndarray, object]: ...


def _stamp(path: Path) -> list[int]:
    """What a cached mask was made from: the file's size (bytes) and modification time (ns)."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _read_index(folder: Path) -> dict:
    try:
        data = json.loads((folder / "index.json").read_text())
    except (OSError, ValueError):  # none yet, or damaged: everything is made again
        return {}
    return data if isinstance(data, dict) and data.get("masker") == MASKER else {}


def _write_image(path: Path, pixels: np.ndarray, params: tuple[int, ...] = ()) -> None:
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), pixels, list(params)):
            raise OSError(f"{path}: could not be written")


def _crop_share(fg: np.ndarray) -> float:
    """The foreground's share of the smallest training crop centred on it (`vharm.data.synth._crop_box`'s first try,
    without its random shift): what `min_fg` is compared with."""
    ys, xs = np.nonzero(fg)
    if xs.size == 0:
        return 0.0
    h, w = fg.shape
    side = max(1, int(min(h, w) * MIN_CROP))
    x = int(np.clip(xs.mean() - side / 2, 0, w - side))
    y = int(np.clip(ys.mean() - side / 2, 0, h - side))
    return float(fg[y:y + side, x:x + side].mean())


class AutoMasks:
    """Makes, caches and reads back the automatic masks of mask-less sources, as `Item`s for `vharm.data.synth`.

    Args:
        cache: the folder the masks (and decoded video frames) go to (default `DEFAULT_CACHE`, relative to the
            working directory); one subfolder per source.
        min_fg: `DataConfig.min_fg`: frames whose foreground could not fill that share of the smallest crop are
            left out.
        segmenter: makes the masks that are missing (default: `Segmenter()`, loaded on first need). The cache does not
            tell segmenters apart: give a stand-in its own cache folder.
        progress: a progress bar on stderr (on a terminal) while masks are being made.

    Attributes:
        frames: frames seen, segmented (not found in the cache) and kept, over every call.
    """

    def __init__(self, cache: str | Path | None = None, min_fg: float = 0.0, segmenter: Masker | None = None,
                 progress: bool = True):
        self.cache = Path(cache or DEFAULT_CACHE)
        self.min_fg, self.progress = min_fg, progress
        self._segmenter = segmenter
        self.frames = {"seen": 0, "segmented": 0, "kept": 0}

    @property
    def segmenter(self) -> Masker:
        if self._segmenter is None:
            from vharm.segment import Segmenter

            self._segmenter = Segmenter()
        return self._segmenter

    def folder(self, source: Path, name: str) -> Path:
        """The cache subfolder of a source folder or video file (`name`: its items' name, to read it by)."""
        key = hashlib.sha1(f"{MASKER}\n{Path(source).resolve()}".encode()).hexdigest()[:12]
        return self.cache / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', name)[:40]}-{key}"

    def keeps(self, entry: dict) -> bool:
        """Whether a frame's mask is sure enough (`MIN_CONFIDENCE`) and has enough foreground for a training crop."""
        return entry["fg"] > 0 and entry["crop_fg"] >= self.min_fg and entry["conf"] >= MIN_CONFIDENCE

    def _bar(self, total: int | None, name: str, out: Path, unit: str = "frame"):
        """The progress bar of making masks (on a terminal), after one line that says so (always, if `progress`)."""
        if self.progress:
            print(f"vharm: making automatic masks of {name} ({total or 'all'} {unit}s) in {out}", file=sys.stderr)
        return tqdm(total=total, desc=f"automatic masks of {name}", unit=unit, leave=False,
                    disable=None if self.progress else True)

    def _entry(self, out: Path, name: str, mask: np.ndarray, file: list[int] | None, cut: bool = False) -> dict:
        """Writes one mask (8-bit PNG) and returns its index entry."""
        pixels = np.round(np.clip(mask, 0, 1) * 255).astype(np.uint8)
        _write_image(out / "masks" / f"{name}.png", pixels)
        self.frames["segmented"] += 1
        inside = pixels[pixels >= 128]
        return {"name": name, "file": file, "fg": int(inside.size), "crop_fg": round(_crop_share(pixels >= 128), 4),
                "conf": round(float(inside.mean()) / 255, 4) if inside.size else 0.0, "cut": cut}

    def _save_index(self, out: Path, source: Path, entries: list[dict], file: list[int] | None = None) -> None:
        with atomic_path(out / "index.json") as tmp:
            tmp.write_text(json.dumps({"masker": MASKER, "source": str(Path(source).resolve()), "file": file,
                                       "frames": entries}, indent=0) + "\n")

    def stills(self, folder: Path, files: list[Path], prefix: str) -> list[Item]:
        """One item per image of `folder` (each segmented on its own), named PREFIX/STEM."""
        out = self.folder(folder, prefix)
        entries = {e["name"]: e for e in _read_index(out).get("frames", [])}
        stale = [f for f in files if entries.get(f.stem, {}).get("file") != _stamp(f)
                 or not (out / "masks" / f"{f.stem}.png").is_file()]
        if stale:
            (out / "masks").mkdir(parents=True, exist_ok=True)
            with self._bar(len(stale), prefix, out, "image") as bar:
                for f in stale:
                    entries[f.stem] = self._entry(out, f.stem, self.segmenter(read_image(f)[0]), _stamp(f))
                    bar.update(1)
            self._save_index(out, folder, [entries[k] for k in sorted(entries)])
        self.frames["seen"] += len(files)
        items = [Item(f"{prefix}/{f.stem}", (f,), (out / "masks" / f"{f.stem}.png",)) for f in files
                 if self.keeps(entries[f.stem])]
        self.frames["kept"] += len(items)
        return items

    def sequence(self, folder: Path, files: list[Path], name: str) -> list[Item]:
        """The consecutive frames of `folder` (segmented in order, each with the previous one's state)."""
        out = self.folder(folder, name)
        index = _read_index(out)
        stamps = [_stamp(f) for f in files]
        entries = index.get("frames", [])
        if ([e["file"] for e in entries] != stamps or [e["name"] for e in entries] != [f.stem for f in files]
                or not all((out / "masks" / f"{f.stem}.png").is_file() for f in files)):
            frames = ((f.stem, read_image(f)[0], s) for f, s in zip(files, stamps))
            entries = self._segment(out, frames, len(files), name, keep_frames=False)
            self._save_index(out, folder, entries)
        by_name = {f.stem: f for f in files}
        return self._runs(name, entries, lambda e: by_name[e["name"]], out)

    def video(self, path: Path, name: str) -> list[Item]:
        """The frames of a video file, decoded into the cache once (frames that fail to decode are left out)."""
        out = self.folder(path, name)
        index = _read_index(out)
        entries = index.get("frames", [])
        if (index.get("file") != _stamp(path) or not entries
                or not all((out / d / f"{e['name']}{x}").is_file() for e in entries
                           for d, x in (("frames", ".jpg"), ("masks", ".png")))):
            source = FrameSource(path, skip_bad_frames=True)
            frames = ((Path(f.name).stem, f.rgb, None) for f in source)
            entries = self._segment(out, frames, source.count, name, keep_frames=True)
            self._save_index(out, path, entries, _stamp(path))
        return self._runs(name, entries, lambda e: out / "frames" / f"{e['name']}.jpg", out)

    def _segment(self, out: Path, frames: Iterable[tuple[str, np.ndarray | None, list[int] | None]],
                 total: int | None, name: str, keep_frames: bool) -> list[dict]:
        """Segments a sequence in order; `frames` yields (name, uint8 RGB or None for a bad frame, file stamp)."""
        (out / "masks").mkdir(parents=True, exist_ok=True)
        if keep_frames:
            (out / "frames").mkdir(exist_ok=True)
        entries, state = [], None
        with self._bar(total, name, out) as bar:
            for stem, rgb, stamp in frames:
                bar.update(1)
                if rgb is None:  # a frame that failed to decode: the next one starts afresh
                    state = None
                    continue
                if keep_frames and min(rgb.shape[:2]) > MAX_SHORT:
                    s = MAX_SHORT / min(rgb.shape[:2])
                    rgb = cv2.resize(rgb, (round(rgb.shape[1] * s), round(rgb.shape[0] * s)),
                                     interpolation=cv2.INTER_AREA)
                if keep_frames:
                    _write_image(out / "frames" / f"{stem}.jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                                 (cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY))
                fresh = state is None
                mask, state = self.segmenter.step(rgb, state)
                entries.append(self._entry(out, stem, mask, stamp, fresh or bool(getattr(state, "scene_cut", False))))
        return entries

    def _runs(self, name: str, entries: list[dict], frame_of, out: Path) -> list[Item]:
        """Items of the runs of consecutive kept frames between scene cuts: NAME, or NAME@FIRST when there are more."""
        runs: list[list[dict]] = []
        previous_kept = False
        for e in entries:
            kept = self.keeps(e)
            if kept and (e["cut"] or not previous_kept):
                runs.append([])
            if kept:
                runs[-1].append(e)
            previous_kept = kept
        self.frames["seen"] += len(entries)
        self.frames["kept"] += sum(len(r) for r in runs)
        return [Item(name if len(runs) == 1 else f"{name}@{run[0]['name']}", tuple(frame_of(e) for e in run),
                     tuple(out / "masks" / f"{e['name']}.png" for e in run)) for run in runs]

