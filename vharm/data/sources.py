"""Finding masked images and masked video sequences on disk.

A source directory is one of:
- an image folder: `DIR/images/NAME.ext` with `DIR/masks/NAME.png` (e.g. person photos, COCO crops);
- a sequence: `DIR/frames/NAME.ext` with `DIR/masks/NAME.png` (consecutive frames of one video);
- a folder of such folders, searched two levels deep (e.g. `davis2016/` holding one sequence per clip).

With automatic masks (`--auto-mask`, `vharm.data.automask`) also, without masks: `DIR/images/` (photos),
`DIR/frames/` (a sequence), a folder holding images (photos, e.g. `imagenet-samples/`) or video files (each a
sequence), and a video file itself. A folder with a `masks/` folder keeps its masks (and its error for an image
without one). Without `--auto-mask` a source without masks is an error that says so.
"""

from __future__ import annotations

import collections
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vharm.errors import VharmError
from vharm.io.images import list_frames
from vharm.io.video import VIDEO_EXTS

if TYPE_CHECKING:
    from vharm.data.automask import AutoMasks, Masker

# Said wherever a source without masks is refused.
AUTO_HINT = "--auto-mask segments the people in images, frames and videos without masks"


@dataclass(frozen=True)
class Item:
    """One masked still image, or one sequence of masked frames (in order)."""

    name: str
    frames: tuple[Path, ...]
    masks: tuple[Path, ...]
    root: str = ""  # the source directory it was found under; each root gets an equal share of pairs

    @property
    def is_sequence(self) -> bool:
        return len(self.frames) > 1


def _pairs(img_dir: Path, mask_dir: Path) -> tuple[tuple[Path, ...], tuple[Path, ...]]:
    masks = {p.stem: p for p in list_frames(mask_dir)}
    frames = list_frames(img_dir)
    missing = [p for p in frames if p.stem not in masks]
    if missing:
        raise VharmError(f"{missing[0]}: no mask for this image (expected {mask_dir / missing[0].stem}.png)"
                         + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    return tuple(frames), tuple(masks[p.stem] for p in frames)


def _videos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_EXTS and not p.name.startswith("."))


def _unmasked(root: Path, auto: AutoMasks) -> list[Item]:
    """The items of a folder without masks/, with automatic masks (see the module docstring)."""
    if (root / "images").is_dir():
        return auto.stills(root / "images", list_frames(root / "images"), root.name)
    if (root / "frames").is_dir():
        return auto.sequence(root / "frames", list_frames(root / "frames"), root.name)
    items = auto.stills(root, list_frames(root), root.name) if list_frames(root) else []
    return items + [it for v in _videos(root) for it in auto.video(v, f"{root.name}/{v.stem}")]


def find_items(root: Path, depth: int = 2, auto: AutoMasks | None = None) -> list[Item]:
    """All items under a source directory (see the module docstring); `auto` makes the masks of sources without."""
    root = Path(root)
    if root.is_file() and root.suffix.lower() in VIDEO_EXTS:
        if auto is None:
            raise VharmError(f"{root}: a video without masks ({AUTO_HINT})")
        return auto.video(root, root.stem)
    if not root.is_dir():
        raise VharmError(f"{root}: data directory not found")
    if (root / "masks").is_dir() and (root / "images").is_dir():
        frames, masks = _pairs(root / "images", root / "masks")
        return [Item(f"{root.name}/{f.stem}", (f,), (m,)) for f, m in zip(frames, masks)]
    if (root / "masks").is_dir() and (root / "frames").is_dir():
        frames, masks = _pairs(root / "frames", root / "masks")
        return [Item(root.name, frames, masks)] if frames else []
    items = []
    if auto is not None:
        if root.resolve() == auto.cache.resolve():  # the cache under a source: its frames are not new footage
            return []
        items = _unmasked(root, auto)
        if (root / "images").is_dir() or (root / "frames").is_dir():
            return items
    if depth == 0:
        return items
    subs = sorted(p for p in root.iterdir() if p.is_dir() and not (auto and p.name == "masks"))
    return items + [item for sub in subs for item in find_items(sub, depth - 1, auto)]


def split_items(items: list[Item], val_fraction: float = 0.1) -> tuple[list[Item], list[Item]]:
    """Deterministic train/val split by a hash of each item's name (stable as sources grow); the runs NAME@FRAME of
    one sequence (`vharm.data.automask`) go to the same side."""
    val = [it for it in items if zlib.crc32(it.name.split("@")[0].encode()) % 1000 < val_fraction * 1000]
    train = [it for it in items if it not in val]
    if items and not val:  # the last item, or the last sequence's runs
        last = train[-1].name
        val = [it for it in train if "@" in last and it.name.split("@")[0] == last.split("@")[0]] or train[-1:]
        train = [it for it in train if it not in val]
    return train, val


def load_sources(roots: tuple[str, ...] | list[str], auto_mask: bool = False, mask_cache: str = "",
                 min_fg: float = 0.0, segmenter: Masker | None = None) -> list[Item]:
    """Items of every source root; an error names a root that holds nothing usable.

    Args:
        roots: source folders (see the module docstring); with `auto_mask`, video files too.
        auto_mask: sources without masks get automatic ones (`vharm.data.automask.AutoMasks`), made once and cached
            in `mask_cache` (default `data/auto-masks`); frames whose mask is too small for `min_fg` are left out.
        segmenter: makes the automatic masks (default: `vharm.segment.Segmenter()`); tests pass a stand-in.
    """
    if not roots:
        raise VharmError("no training data: pass source directories (e.g. ../shared/data/person-photos) "
                         "or --dataset DIR from `vharm make-dataset`")
    auto = None
    if auto_mask:
        from vharm.data.automask import AutoMasks

        auto = AutoMasks(mask_cache or None, min_fg, segmenter)
    items = []
    for root in roots:
        seen = auto.frames["seen"] if auto else 0
        found = find_items(Path(root), auto=auto)
        if not found and auto and auto.frames["seen"] > seen:
            raise VharmError(f"{root}: none of its {auto.frames['seen'] - seen} frames has a person covering "
                             f"{min_fg:.0%} of a training crop (automatic masks in {auto.cache}); lower --min-fg")
        if not found and auto:
            raise VharmError(f"{root}: no images, frames or videos found")
        if not found:
            raise VharmError(f"{root}: no images with masks found (expected images/+masks/ or frames/+masks/; "
                             f"{AUTO_HINT})")
        items += [Item(it.name, it.frames, it.masks, str(root)) for it in found]
    return items


def item_weights(items: list[Item]) -> np.ndarray:
    """Sampling probabilities giving every source root the same share (290 photos vs 14 clips stay balanced), and
    within a root every item; the runs NAME@FRAME of one sequence share one item's part by their number of frames."""
    groups = [(it.root, it.name.split("@")[0]) if "@" in it.name else (it.root, i) for i, it in enumerate(items)]
    per_root = collections.Counter(root for root, _ in set(groups))
    frames = collections.Counter()
    for it, g in zip(items, groups):
        frames[g] += len(it.frames)
    w = np.array([(len(it.frames) / frames[g] if "@" in it.name else 1.0) / per_root[it.root]
                  for it, g in zip(items, groups)])
    return w / w.sum()
