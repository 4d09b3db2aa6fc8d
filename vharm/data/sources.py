"""Finding masked images and masked video sequences on disk.

A source directory is one of:
- an image folder: `DIR/images/NAME.ext` with `DIR/masks/NAME.png` (e.g. person photos, COCO crops);
- a sequence: `DIR/frames/NAME.ext` with `DIR/masks/NAME.png` (consecutive frames of one video);
- a folder of such folders, searched two levels deep (e.g. `davis2016/` holding one sequence per clip).
"""

from __future__ import annotations

import collections
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vharm.errors import VharmError
from vharm.io.images import list_frames


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


def find_items(root: Path, depth: int = 2) -> list[Item]:
    """All items under a source directory (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise VharmError(f"{root}: data directory not found")
    if (root / "masks").is_dir() and (root / "images").is_dir():
        frames, masks = _pairs(root / "images", root / "masks")
        return [Item(f"{root.name}/{f.stem}", (f,), (m,)) for f, m in zip(frames, masks)]
    if (root / "masks").is_dir() and (root / "frames").is_dir():
        frames, masks = _pairs(root / "frames", root / "masks")
        return [Item(root.name, frames, masks)] if frames else []
    if depth == 0:
        return []
    return [item for sub in sorted(p for p in root.iterdir() if p.is_dir()) for item in find_items(sub, depth - 1)]


def split_items(items: list[Item], val_fraction: float = 0.1) -> tuple[list[Item], list[Item]]:
    """Deterministic train/val split by a hash of each item's name (stable as sources grow)."""
    val = [it for it in items if zlib.crc32(it.name.encode()) % 1000 < val_fraction * 1000]
    train = [it for it in items if it not in val]
    if items and not val:
        val = train[-1:]
        train = train[:-1]
    return train, val


def load_sources(roots: tuple[str, ...] | list[str]) -> list[Item]:
    """Items of every source root; an error names a root that holds nothing usable."""
    if not roots:
        raise VharmError("no training data: pass source directories (e.g. ../shared/data/person-photos) "
                         "or --dataset DIR from `vharm make-dataset`")
    items = []
    for root in roots:
        found = find_items(Path(root))
        if not found:
            raise VharmError(f"{root}: no images with masks found (expected images/+masks/ or frames/+masks/)")
        items += [Item(it.name, it.frames, it.masks, str(root)) for it in found]
    return items


def item_weights(items: list[Item]) -> np.ndarray:
    """Sampling probabilities giving every source root the same share (290 photos vs 14 clips stay balanced)."""
    counts = collections.Counter(it.root for it in items)
    w = np.array([1.0 / counts[it.root] for it in items])
    return w / w.sum()
