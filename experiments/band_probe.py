"""Does the seam help the statistics G? Colour statistics of thin bands inside and outside the mask's boundary.

    python experiments/band_probe.py --sources $(cat sources.txt) --valset data/valset-real --width 3

A composite's recoloured foreground meets its untouched background at the mask's edge, where a real frame's
colours change smoothly. This probe adds, at the 128^2 working resolution, the Lab and RGB means and standard
deviations of the band just inside and of the band just outside the boundary (`--width` pixels), and the Lab
statistics of the eroded interior (30 values), to the 28 statistics, and fits both inputs as
`experiments/encoder_probe.py` does: frame 0 of `--pairs` pairs of `vharm fit`'s default data, its loss, identity
frames and validation score, two seeds each. The band features are cached in data/; it prints the best and the
last epoch of each fit and writes nothing else.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import cv2
import kornia
import numpy as np
import torch
from encoder_probe import Probe
from torch.nn import functional as F

from vharm.config import FitConfig
from vharm.data.dataset import SyntheticPairs
from vharm.eval.clips import load_clip, load_manifest
from vharm.models.colortransform import IDENTITY
from vharm.train.fit import _epochs, cache_key, clip_features, relative_loss, score, training_features


def band_stats(img: torch.Tensor, mask: torch.Tensor, width: int) -> torch.Tensor:
    """(B, 3, r, r) colours in [0, 1] and (B, 1, r, r) masks -> (B, 30): inner band, outer band, interior."""
    lab = kornia.color.rgb_to_lab(img.clamp(0, 1)) / 100
    grown = F.max_pool2d(mask, width, 1, width // 2)
    shrunk = -F.max_pool2d(-mask, width, 1, width // 2)
    rows = []
    for w, images in (((mask - shrunk).clamp(0, 1), (lab, img)), ((grown - mask).clamp(0, 1), (lab, img)),
                      (shrunk, (lab,))):
        total = w.sum((2, 3)).clamp_min(1e-6)
        for x in images:
            m = (x * w).sum((2, 3)) / total
            rows += [m, ((x * x * w).sum((2, 3)) / total - m * m).clamp_min(0).add(1e-6).sqrt()]
    return torch.cat(rows, 1)


def train_bands(cfg: FitConfig, width: int) -> torch.Tensor:
    """(pairs, 2, 30): frame 0's composite and target band features, cached per data configuration."""
    path = Path("data") / f"band-probe-{cache_key(cfg)}-{cfg.pairs}-w{width}.npy"
    if path.is_file():
        return torch.from_numpy(np.load(path))
    pairs = SyntheticPairs(cfg.data, cfg.model.resolution, cfg.seed, "train")
    rows = []
    for i in range(cfg.pairs):
        p = pairs[i]
        img = torch.from_numpy(np.stack([p["comp"][0], p["target"][0]])).permute(0, 3, 1, 2)
        rows.append(band_stats(img, torch.from_numpy(np.stack([p["mask"][0]] * 2))[:, None], width))
    out = torch.stack(rows)
    np.save(path, out.numpy())
    return out


def val_bands(testset: Path, resolution: int, width: int) -> list[np.ndarray]:
    """Per real/mild clip (in `clip_features` order): (T, 30) of its composite frames."""
    out = []
    for entry in load_manifest(testset)["clips"]:
        if entry["kind"] not in ("real", "mild"):
            continue
        clip = load_clip(testset, entry)
        imgs = np.stack([cv2.resize(c.astype(np.float32) / 255, (resolution,) * 2, interpolation=cv2.INTER_AREA)
                         for c in clip.comp])
        masks = np.stack([cv2.resize(m, (resolution,) * 2, interpolation=cv2.INTER_AREA) for m in clip.mask])
        out.append(band_stats(torch.from_numpy(imgs).permute(0, 3, 1, 2), torch.from_numpy(masks)[:, None],
                              width).numpy())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sources", nargs="+", required=True)
    p.add_argument("--valset", required=True)
    p.add_argument("--pairs", type=int, default=6000)
    p.add_argument("--width", type=int, default=3, help="band width in pixels at the working resolution (odd)")
    p.add_argument("--cache", default="data/fit-cache")
    args = p.parse_args()
    base = FitConfig()
    cfg = dataclasses.replace(base, pairs=args.pairs, data=dataclasses.replace(
        base.data, sources=tuple(args.sources), val_testset=args.valset))
    torch.set_num_threads(1)
    feats = training_features(cfg, Path(args.cache))
    first = slice(0, 2 * cfg.pairs, 2)  # frame 0 of each pair
    stats, px = torch.from_numpy(feats["stats"][first]), torch.from_numpy(feats["px"][first])
    bands = train_bands(cfg, args.width)
    val = clip_features(Path(args.valset), cfg.model.resolution)
    val_band = val_bands(Path(args.valset), cfg.model.resolution, args.width)
    eye = torch.tensor(IDENTITY)
    for name, use in (("stats", False), ("stats+band", True)):
        x = torch.cat([stats, bands], 2) if use else stats
        clips = [{**c, "stats": np.concatenate([c["stats"], b], 1) if use else c["stats"]}
                 for c, b in zip(val, val_band)]
        flat = x[:, 0]
        for seed in (0, 1):
            torch.manual_seed(seed)
            # every input straight into the MLP: the band features are few, no bottleneck
            probe = Probe(flat.mean(0), flat.std(0), 0, 0, 0.0)
            probe.body[0] = torch.nn.Linear(x.shape[-1], probe.body[0].out_features)
            probe.change = lambda s, m=probe: (m.out(m.body((s - m.mean) / m.std)), torch.ones(len(s), 1))
            rows = []

            def after(epoch, loss, probe=probe, clips=clips, rows=rows):
                rows.append({"epoch": epoch, **{k: round(v, 3) for k, v in score(probe, clips).items()}})

            _epochs(list(probe.parameters()), {"stats": x, "px": px, "std": flat.std(0)}, cfg.epochs, cfg,
                    lambda s, q, probe=probe: relative_loss(eye + probe.change(s)[0], q, cfg.relative_eps), after,
                    torch.Generator().manual_seed(seed))
            best = min(rows, key=lambda r: r["score"])
            print(name, "seed", seed, "best", json.dumps(best), "last", json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
