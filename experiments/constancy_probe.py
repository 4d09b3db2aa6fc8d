"""Do colour-constancy statistics help the statistics G? Grey-edge, shades-of-grey and quantile statistics beside
the 28 `colour_statistics`.

    python experiments/constancy_probe.py --sources $D/person-photos ... --valsets data/valset-real data/valset-more \
        data/testset-dev --seeds 0 1 2

The 28 statistics are gray-world estimates (means) with spreads. Colour constancy has estimators with other errors:
the mean colour of edges (grey-edge, van de Weijer et al. 2007), the Minkowski p = 6 mean (shades of grey,
Finlayson and Trezzi 2004), the brightest and darkest pixels (white patch) and the shape of each channel's
distribution (quantiles). Each is taken of the foreground and of the background, so that their ratios can say what
the gray-world ratio cannot. The probe fits the same MLP, loss, identity frames and schedule as
`experiments/encoder_probe.py` (`vharm fit`'s functions, on the first frame of each pair) with each set of inputs,
for each seed, and prints each fit's best epoch by the first valset's score and its last, with their scores on every
valset, then a markdown table of the means over seeds (harmed clips, above 1.1x, in brackets).
Features (`vharm.models.backbones.constancy_statistics`) are cached in data/constancy-probe/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from encoder_probe import Probe

from vharm.config import FitConfig
from vharm.data.dataset import SyntheticPairs
from vharm.models.backbones import QUANTILES, STATS
from vharm.models.colortransform import IDENTITY
from vharm.train.fit import _epochs, cache_key, clip_features, frame_features, relative_loss, score

GROUPS = {"edge": 3, "shades": 3, "quantiles": 3 * len(QUANTILES)}  # values per region, in constancy_statistics


def columns(groups: tuple[str, ...]) -> list[int]:
    """The columns of `constancy_statistics` in those groups."""
    out, start = [], 0
    for _region in range(2):
        for name, n in GROUPS.items():
            if name in groups:
                out += range(start, start + n)
            start += n
    return out


def train_features(cfg: FitConfig, cache: Path) -> dict[str, np.ndarray]:
    """Frame 0 of each pair: stats (N, 2, 70) of composite and target (`STATISTICS["constancy"]`: the 28 and then
    the 42), px (N, P, 7)."""
    path = cache / f"train-{cache_key(cfg)}-{cfg.pairs}.npz"
    if path.is_file():
        return dict(np.load(path))
    pairs = SyntheticPairs(cfg.data, cfg.model.resolution, cfg.seed, "train")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(cfg.pairs):
        pair = pairs[i]
        rows.append(frame_features(pair["comp"][0], pair["target"][0], pair["mask"][0], cfg.model.resolution,
                                   cfg.pixels, rng, "constancy"))
        if i % 500 == 0:
            print(f"  pairs {i}/{cfg.pairs}", flush=True)
    out = {"stats": np.stack([r[0] for r in rows]), "px": np.stack([r[1] for r in rows])}
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sources", nargs="+", required=True)
    p.add_argument("--valsets", nargs="+", required=True, help="the first one chooses the epoch")
    p.add_argument("--pairs", type=int, default=6000)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--variants", nargs="+", default=["stats", "stats+edge+shades", "stats+quantiles",
                                                     "stats+edge+shades+quantiles"])
    p.add_argument("--cache", default="data/constancy-probe")
    args = p.parse_args()
    base = FitConfig()
    cfg = dataclasses.replace(
        base, pairs=args.pairs, epochs=args.epochs,
        data=dataclasses.replace(base.data, sources=tuple(args.sources), val_testset=args.valsets[0]))
    torch.set_num_threads(2)
    feats = train_features(cfg, Path(args.cache))
    vals = {v: clip_features(Path(v), cfg.model.resolution, statistics="constancy") for v in args.valsets}
    px = torch.from_numpy(feats["px"])
    eye = torch.tensor(IDENTITY)
    results = []
    for variant in args.variants:
        groups = tuple(variant.split("+")[1:])
        cols = [*range(STATS), *(STATS + c for c in columns(groups))]
        x = torch.from_numpy(feats["stats"][..., cols])
        clipsets = {v: [{**c, "stats": c["stats"][:, cols]} for c in clips] for v, clips in vals.items()}
        flat = x[:, 0]
        for seed in args.seeds:
            torch.manual_seed(seed)
            probe = Probe(flat.mean(0), flat.std(0), 0, 0, 0.0, stats=len(cols))
            rows = []

            def after(epoch, loss):
                probe.eval()
                row = {"epoch": epoch, "loss": round(loss, 4)}
                for v, clips in clipsets.items():
                    s = score(probe, clips)
                    row[Path(v).name] = {k: round(s[k], 3) for k in ("real_ratio", "real_harmed", "mild_ratio",
                                                                      "mild_harmed", "score") if k in s}
                rows.append(row)
                probe.train()

            _epochs(list(probe.parameters()), {"stats": x, "px": px, "std": flat.std(0)}, cfg.epochs, cfg,
                    lambda s, p: relative_loss(eye + probe.change(s)[0], p, cfg.relative_eps), after,
                    torch.Generator().manual_seed(seed))
            first = Path(args.valsets[0]).name
            best = min(rows, key=lambda r: r[first]["score"])
            print(variant, f"seed {seed}", "best:", json.dumps(best), "last:", json.dumps(rows[-1]), flush=True)
            results.append((variant, seed, best, rows[-1]))
    print(table(results, [Path(v).name for v in args.valsets]))


def table(results: list[tuple], valsets: list[str]) -> str:
    """Markdown: per variant, the mean over seeds of each valset's real and mild ratios (and harmed clips) at the
    last epoch and at the epoch the first valset chose."""
    head = ["inputs", "epoch"] + [f"`{v}` {k}" for v in valsets for k in ("real", "mild")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for variant in dict.fromkeys(r[0] for r in results):
        runs = [r for r in results if r[0] == variant]
        for label, k in (("last", 3), ("chosen", 2)):
            cells = [f"`{variant}`", label]
            for v in valsets:
                for kind in ("real", "mild"):
                    ratio = np.mean([r[k][v][f"{kind}_ratio"] for r in runs])
                    harmed = np.mean([r[k][v][f"{kind}_harmed"] for r in runs])
                    cells.append(f"{ratio:.3f} ({harmed:.1f})")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
