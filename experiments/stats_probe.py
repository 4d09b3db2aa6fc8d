"""Probe for issue 10: can one global colour transform be predicted from colour statistics alone, and does it
generalise to the dev test set? Writes its table into docs/results.md (between markers).

    python experiments/stats_probe.py --data ../shared/data --testset data/testset-dev --pairs 4000

A small MLP maps the foreground's and background's Lab/RGB moments and clipped fractions to a 3x4 colour
transform (the Harmonizer / "learned Reinhard" idea, without any pixels). Training pairs are the `unet`
recipe's (`vharm.data`, 128², the eight training families); validation pairs come from held-out source items
recoloured by the held-out `lut` family, as in `vharm train`. The fit is fast because each pair is reduced to
the moments of its foreground (E[x x^T], E[x t^T], E[t^2] with x = (r, g, b, 1)): the squared error of any
affine transform is a quadratic form in them, so no pixel is touched while training (the clamp to [0, 1] is
left out, which makes over-corrections look slightly worse than they are). Dev clips are scored per frame,
on full-resolution frames, the same way.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from datetime import date
from pathlib import Path

import cv2
import numpy as np
import torch
from ablations import sources
from tables import HARMED_COLUMN, replace_block
from torch import nn
from torch.nn import functional as F

from vharm.config import preset
from vharm.data.dataset import SyntheticPairs
from vharm.eval.metrics import harmed
from vharm.models.backbones import colour_statistics

SIZE = 128  # working resolution of the statistics, pixels
EYE = torch.tensor([1.0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0]).view(3, 4)


def moments(comp, target, mask) -> dict[str, torch.Tensor]:
    """Foreground moments that give the fMSE of any 3x4 transform in closed form, and the composite's fMSE."""
    x = torch.cat([comp, torch.ones_like(comp[:, :1])], 1).flatten(2)
    t, w = target.flatten(2), mask.flatten(2)[:, 0]
    n = w.sum(1).clamp_min(1)
    return {"xx": torch.einsum("bin,bjn,bn->bij", x, x, w) / n[:, None, None],
            "xt": torch.einsum("bin,bjn,bn->bij", x, t, w) / n[:, None, None],
            "tt": ((t ** 2).sum(1) * w).sum(1) / n,
            "comp": (((comp.flatten(2) - t) ** 2).sum(1) * w).sum(1) / n * 255 ** 2 / 3}


def fmse(coeffs: torch.Tensor, m: dict) -> torch.Tensor:
    """fMSE on 0-255 of x -> coeffs @ (x, 1) over the foreground, per pair."""
    q = (torch.einsum("bci,bij,bcj->b", coeffs, m["xx"], coeffs) - 2 * torch.einsum("bci,bic->b", coeffs, m["xt"])
         + m["tt"])
    return q.clamp_min(0) * 255 ** 2 / 3


def pair_set(data_cfg, split: str, count: int) -> dict[str, torch.Tensor]:
    pairs = SyntheticPairs(data_cfg, SIZE, 0, split)
    rows = []
    for start in range(0, count, 64):
        batch = [pairs[i] for i in range(start, min(start + 64, count))]
        comp, target, mask = (torch.from_numpy(np.stack([p[k][1] for p in batch])) for k in ("comp", "target", "mask"))
        comp, target, mask = comp.permute(0, 3, 1, 2), target.permute(0, 3, 1, 2), mask[:, None]
        rows.append({"f": colour_statistics(comp, mask), **moments(comp, target, mask)})
    return {k: torch.cat([r[k] for r in rows]) for k in rows[0]}


def dev_clips(testset: Path) -> dict[str, dict]:
    def read(path, flag=cv2.IMREAD_COLOR):
        img = cv2.imread(str(path), flag)
        img = img[..., ::-1].copy() if img.ndim == 3 else img[..., None]
        return torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255

    clips = {}
    for folder in sorted((testset / "real").iterdir()):
        rows = []
        for file in sorted((folder / "comp").glob("*.png")):
            comp, target = read(file), read(folder / "target" / file.name)
            mask = read(folder / "mask" / file.name, cv2.IMREAD_GRAYSCALE)
            small = [F.interpolate(x, (SIZE, SIZE), mode="area") for x in (comp, mask)]
            rows.append({"f": colour_statistics(*small), **moments(comp, target, mask)})
        clips[folder.name] = {k: torch.cat([r[k] for r in rows]) for k in rows[0]}
    return clips


def fit(train: dict, loss: str, seed: int, steps: int) -> nn.Module:
    """Adam on batches of 64 pairs; loss `mse` (fMSE) or `relative` (fMSE / (composite fMSE + 100))."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(28, 64), nn.LeakyReLU(0.2), nn.Linear(64, 64), nn.LeakyReLU(0.2), nn.Linear(64, 12))
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)  # starts as the identity: "leave the composite alone"
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(steps):
        idx = torch.randint(0, len(train["f"]), (64,))
        batch = {k: v[idx] for k, v in train.items()}
        err = fmse(EYE + net(batch["f"]).view(-1, 3, 4), batch)
        value = err.mean() if loss == "mse" else (err / (batch["comp"] + 100)).mean()
        opt.zero_grad()
        value.backward()
        opt.step()
    return net


@torch.no_grad()
def score(net: nn.Module, val: dict, clips: dict) -> dict:
    v = fmse(EYE + net(val["f"]).view(-1, 3, 4), val)
    ours = {name: float(fmse(EYE + net(c["f"]).view(-1, 3, 4), c).mean()) for name, c in clips.items()}
    comp = {name: float(c["comp"].mean()) for name, c in clips.items()}
    ratio = {name: ours[name] / comp[name] for name in clips}
    dev = np.mean(list(ours.values())) / np.mean(list(comp.values()))
    return {"val": float(v.mean() / val["comp"].mean()), "dev": dev,
            "worse": sum(harmed(ours[name], comp[name]) for name in clips), "max": max(ratio.values()),
            "worst": max(ratio, key=ratio.get), "ratio": ratio}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--testset", required=True)
    p.add_argument("--pairs", type=int, default=4000, help="training pairs (val: a tenth, at least 200)")
    p.add_argument("--steps", type=int, nargs="+", default=[50, 200, 1000, 4000])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--results", default="docs/results.md")
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = preset("unet").data
    data_cfg = dataclasses.replace(cfg, sources=tuple(sources(Path(args.data))), mild_prob=0.15)
    train, val = pair_set(data_cfg, "train", args.pairs), pair_set(data_cfg, "val", max(200, args.pairs // 10))
    clips = dev_clips(Path(args.testset))
    rows = []
    for loss in ("mse", "relative"):
        for steps in args.steps:
            for seed in range(args.seeds):
                s = score(fit(train, loss, seed, steps), val, clips)
                rows.append((loss, steps, seed, s))
                print(json.dumps({"loss": loss, "steps": steps, "seed": seed,
                                  **{k: v for k, v in s.items() if k != "ratio"}}), flush=True)
    lines = [f"Generated {date.today().isoformat()} by `python {shlex.join(sys.argv)}`: an MLP from foreground and "
             f"background colour statistics to one 3×4 transform, {args.pairs} training pairs of the `unet` recipe, "
             f"Adam steps of 64 pairs as listed. `val` = fMSE / composite's on held-out items recoloured by `lut`; "
             "`dev` = the same on the real dev clips (mean fMSE over clips / the composite's).", "",
             f"| loss | steps | seed | val | dev | {HARMED_COLUMN} | worst clip |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {loss} | {steps} | {seed} | {s['val']:.3f} | {s['dev']:.3f} | {s['worse']} / {len(clips)} | "
              f"{s['worst']} ({s['max']:.1f}×) |" for loss, steps, seed, s in rows]
    per = {name: [s["ratio"][name] for *_, s in rows] for name in clips}
    lines += ["", "Per clip, fMSE / composite's (min-max over the runs above): " + ", ".join(
        f"{name} {min(r):.2f}-{max(r):.2f}" for name, r in per.items()) + "."]
    replace_block(Path(args.results), "stats-probe", "Probe: a global transform from colour statistics", lines)


if __name__ == "__main__":
    main()
