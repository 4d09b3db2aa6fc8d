"""Pairs for training and validation: synthesised on the fly from sources, or read from a `make-dataset` dir.

Pair `i` of a split is a pure function of (seed, split, i), so a resumed or distributed run sees exactly the
pairs an uninterrupted single-process run would.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import torch

from vharm.config import DataConfig
from vharm.data.sources import load_sources, split_items
from vharm.data.synth import make_pair
from vharm.errors import VharmError
from vharm.io.files import atomic_path
from vharm.io.images import list_frames

SPLITS = {"train": 0, "val": 1}


class SyntheticPairs:
    """Pairs made on the fly from source directories (train and val use disjoint source items)."""

    def __init__(self, cfg: DataConfig, size: int, seed: int, split: str):
        train, val = split_items(load_sources(cfg.sources, cfg.auto_mask, cfg.mask_cache, cfg.min_fg))
        self.items = train if split == "train" else val
        if not self.items:
            raise VharmError(f"{', '.join(cfg.sources)}: the {split} split is empty (need at least 2 source images)")
        self.cfg, self.size, self.seed, self.split = cfg, size, seed, split
        self.backdrops = tuple(backdrop_photos(cfg.backdrops)) if split == "train" else ()

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, SPLITS[self.split], i])
        c = self.cfg
        families = c.families if self.split == "train" else c.val_families
        return make_pair(self.items, rng, self.size, families, c.min_fg, c.max_motion, c.real_pair_prob, c.mild_prob,
                         c.random_mask_prob if self.split == "train" else 0.0,
                         c.scene_prob if self.split == "train" else 0.0, self.backdrops, c.backdrop_prob)


def backdrop_photos(folders) -> list[Path]:
    """The photos of each backdrop folder (`DataConfig.backdrops`); an error names a folder that has none."""
    photos = []
    for folder in folders:
        if not Path(folder).is_dir():
            raise VharmError(f"{folder}: backdrop folder not found")
        found = list_frames(Path(folder))
        if not found:
            raise VharmError(f"{folder}: no images in this backdrop folder")
        photos += found
    return photos


class DiskPairs:
    """Pairs written by `vharm make-dataset` (DIR/train/NNNNNN.npz, DIR/val/...), resized to `size` if needed."""

    def __init__(self, root: Path, size: int, split: str):
        self.files = sorted((Path(root) / split).glob("*.npz"))
        if not Path(root).is_dir():
            raise VharmError(f"{root}: dataset directory not found (make one with `vharm make-dataset`)")
        if not self.files:
            raise VharmError(f"{Path(root) / split}: empty split, no .npz pairs in it")
        self.size = size

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        with np.load(self.files[i % len(self.files)]) as z:
            pair = {k: z[k] for k in z.files}
        pair = {"comp": pair["comp"].astype(np.float32) / 255, "target": pair["target"].astype(np.float32) / 255,
                "mask": pair["mask"].astype(np.float32) / 255, "flow": pair["flow"].astype(np.float32),
                "exact": bool(pair["exact"]), "family": str(pair["family"])}
        return resize_pair(pair, self.size)


def resize_pair(pair: dict, size: int) -> dict:
    s = pair["comp"].shape[1]
    if s == size:
        return pair

    def rs(a):
        return np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in a])

    flow = rs(pair["flow"]) * (size / s)  # displacements are in pixels of the new size
    return {**pair, "comp": rs(pair["comp"]), "target": rs(pair["target"]), "mask": rs(pair["mask"]), "flow": flow}


def open_pairs(cfg: DataConfig, size: int, seed: int, split: str):
    """The pair source a config asks for: `cfg.dataset` if set, else on-the-fly from `cfg.sources`."""
    if cfg.dataset:
        return DiskPairs(Path(cfg.dataset), size, split)
    return SyntheticPairs(cfg, size, seed, split)


def collate(pairs: list[dict]) -> dict[str, torch.Tensor]:
    """Pairs -> batch: comp/target (B, 2, 3, S, S), mask (B, 2, 1, S, S), flow (B, 2, S, S), exact (B,)."""
    def t(key):
        return torch.from_numpy(np.stack([p[key] for p in pairs]))

    return {"comp": t("comp").permute(0, 1, 4, 2, 3).contiguous(),
            "target": t("target").permute(0, 1, 4, 2, 3).contiguous(),
            "mask": t("mask").unsqueeze(2), "flow": t("flow"),
            "exact": torch.tensor([bool(p["exact"]) for p in pairs])}


def _to_u8(a: np.ndarray) -> np.ndarray:
    return np.round(np.clip(a, 0, 1) * 255).astype(np.uint8)


def contact_sheet(pairs: list[dict], path: Path) -> None:
    """One row per pair: comp1, comp2, target1, target2, mask2, flow magnitude, all as a PNG."""
    rows = []
    for p in pairs:
        mag = np.linalg.norm(p["flow"], axis=0)
        mag = np.repeat((mag / max(mag.max(), 1e-6))[..., None], 3, 2)
        tiles = [p["comp"][0], p["comp"][1], p["target"][0], p["target"][1],
                 np.repeat(p["mask"][1][..., None], 3, 2), mag]
        rows.append(np.concatenate([_to_u8(t) for t in tiles], axis=1))
    sheet = np.concatenate(rows, axis=0)
    with atomic_path(Path(path)) as tmp:
        cv2.imwrite(str(tmp), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))


def make_dataset(cfg: DataConfig, out: Path, size: int, n_train: int, n_val: int, seed: int,
                 progress=None) -> dict:
    """Writes n_train + n_val pairs as .npz (uint8 images, float32 flow), a manifest and a contact sheet."""
    out = Path(out)
    manifest = {"sources": list(cfg.sources), "size": size, "seed": seed, "data": json.loads(json.dumps(
        cfg.__dict__, default=list)), "flow": "frame 2 -> frame 1, pixels (vharm.train.losses)", "pairs": []}
    for split, n in (("train", n_train), ("val", n_val)):
        (out / split).mkdir(parents=True, exist_ok=True)
        source = SyntheticPairs(cfg, size, seed, split)
        for i in range(n):
            pair = source[i]
            file = out / split / f"{i:06d}.npz"
            with atomic_path(file) as tmp:
                with open(tmp, "wb") as f:
                    np.savez_compressed(f, comp=_to_u8(pair["comp"]), target=_to_u8(pair["target"]),
                                        mask=_to_u8(pair["mask"]), flow=pair["flow"], exact=pair["exact"],
                                        family=pair["family"])
            manifest["pairs"].append({"file": f"{split}/{file.name}", "source": pair["source"],
                                      "family": pair["family"], "exact_flow": pair["exact"]})
            if progress:
                progress()
    split, n = ("train", n_train) if n_train else ("val", n_val)
    contact_sheet([DiskPairs(out, size, split)[i] for i in range(min(8, n))], out / "contact-sheet.png")
    with atomic_path(out / "manifest.json") as tmp:
        tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest
