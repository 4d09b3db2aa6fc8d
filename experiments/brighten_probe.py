"""How far G moves an over- or under-exposed foreground toward its true lightness: the evidence for `--brighten`.

    python experiments/brighten_probe.py --testsets data/testset-dev data/valset-real data/valset-more \
        -o docs/training.md

For every real clip of the `exposure` family (the foreground's colours times one factor, `vharm.data.recolor`), on
every 6th frame: the foreground's mean level (0-255, over the mask at 0.5) in the composite, the ground truth and G's
output (the shipped G, gate and EMA off, `brighten` 1: what G itself predicts), the share of the needed change that G
makes ((pred - composite) / (truth - composite)), and the fMSE of G's output and of the best 3x4 affine map from the
composite's foreground colours to the truth's (least squares: what a global colour transform could do) as ratios to
the composite's. The table goes between markers into `--output` (section `brighten-probe`), else it is printed.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from datetime import date
from pathlib import Path

import numpy as np
import torch
from tables import replace_block

from vharm import Harmonizer
from vharm.io.images import read_image
from vharm.io.masks import read_mask


def clip_row(h: Harmonizer, clip: Path) -> list[float]:
    rows = []
    for f in sorted((clip / "comp").glob("*.png"))[::6]:
        comp, truth, mask = read_image(f)[0], read_image(clip / "target" / f.name)[0], read_mask(clip / "mask" / f.name)
        pred = h.step(comp, mask)[0]
        inside = mask > 0.5
        c, t, p = (x[inside].astype(np.float64) for x in (comp, truth, pred))
        x = np.c_[c, np.ones(len(c))]
        fit = np.clip(x @ np.linalg.lstsq(x, t, rcond=None)[0], 0, 255)
        rows.append([c.mean(), t.mean(), p.mean(), *(((x - t) ** 2).mean() for x in (c, p, fit))])
    return list(np.mean(rows, 0))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--testsets", nargs="+", required=True, help="`vharm make-testset` directories")
    p.add_argument("-o", "--output", help="the doc whose section is (re)written (default: print only)")
    args = p.parse_args()
    torch.set_num_threads(1)
    h = Harmonizer.from_pretrained().with_options(min_change=0, full_change=0, temporal_smoothing=0, brighten=1,
                                                  g_steps=1)
    lines = [f"Generated {date.today().isoformat()} by `python {shlex.join(sys.argv)}` (the shipped G, gate and EMA "
             "off, no gain). Foreground mean level; share = (G - composite) / (truth - composite); fMSE as a ratio "
             "to the composite's.", "",
             "| test set | clip | composite | truth | G | share of the change | G's fMSE | best affine's fMSE |",
             "|---" * 8 + "|"]
    for testset in map(Path, args.testsets):
        for clip in sorted((testset / "real").glob("*-exposure")):
            c, t, g, fc, fg, fa = clip_row(h, clip)
            lines.append(f"| `{testset.name}` | {clip.name} | {c:.0f} | {t:.0f} | {g:.0f} | {(g - c) / (t - c):.2f} "
                         f"| {fg / fc:.2f} | {fa / fc:.2f} |")
            print(lines[-1], flush=True)
    if args.output:
        replace_block(Path(args.output), "brighten-probe", "G brightens too little", lines + [""])


if __name__ == "__main__":
    main()
