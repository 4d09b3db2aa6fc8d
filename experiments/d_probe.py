"""What D's disharmony map finds on real clips: the pasted object, or its disharmony?

    python experiments/d_probe.py --weights default --testset data/valset-real

For every real clip of a test set: D's mean map inside the true mask on the composite and on the ground truth (a
D that sees disharmony answers higher on the composite), outside the mask, and the AUC with which the map ranks
the composite's foreground pixels above its background ones (a D that finds objects scores high here whether
they are disharmonious or not), and the share of the map's core (its top 3 %, where mask-free mode takes G's
statistics from: `core_of_map`) that lies inside the mask. The table goes into a section of docs/results.md.
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

from vharm.eval.clips import load_real_clips
from vharm.inference.harmonizer import Harmonizer, core_of_map, to_tensor


def auc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """P(a foreground pixel's value > a background pixel's), ties counted half (exact, from the sorted negatives)."""
    neg = neg.sort().values
    below = torch.searchsorted(neg, pos, right=False).double()
    not_above = torch.searchsorted(neg, pos, right=True).double()
    return float(((below + not_above) / 2).mean() / len(neg))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default="default")
    p.add_argument("--testset", required=True, help="a `vharm make-testset` directory (its real clips are used)")
    p.add_argument("--results", default="docs/results.md")
    args = p.parse_args()
    torch.set_num_threads(1)
    h = Harmonizer.from_pretrained(args.weights)
    rows = []
    for clip in load_real_clips(Path(args.testset)):
        inside, truth, outside, aucs, cores = [], [], [], [], []
        for comp, target, mask in zip(clip.comp, clip.target, clip.mask):
            fg = torch.from_numpy(mask > 0.5)
            d_comp = h.disharmony_map(to_tensor(comp))[0, 0]
            d_target = h.disharmony_map(to_tensor(target))[0, 0]
            inside.append(float(d_comp[fg].mean()))
            truth.append(float(d_target[fg].mean()))
            outside.append(float(d_comp[~fg].mean()))
            aucs.append(auc(d_comp[fg], d_comp[~fg]))
            core = core_of_map(d_comp[None, None])[0, 0] > 0
            cores.append(float((core & fg).sum() / core.sum().clamp_min(1)))
        rows.append((clip.id.removeprefix("real/"),
                     *(float(np.mean(v)) for v in (inside, truth, outside, aucs, cores))))
    mean = [float(np.mean([r[i] for r in rows])) for i in range(1, 6)]
    lines = [f"Generated {date.today().isoformat()} by `python {shlex.join(sys.argv)}`: D's map (0-1) per clip, "
             "means over frames.", "",
             "| clip | inside, composite | inside, ground truth | difference | outside, composite | AUC fg > bg "
             "| core in mask |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {name} | {a:.3f} | {b:.3f} | {a - b:+.3f} | {c:.3f} | {d:.3f} | {e:.3f} |"
              for name, a, b, c, d, e in rows]
    a, b, c, d, e = mean
    lines += [f"| **mean** | {a:.3f} | {b:.3f} | {a - b:+.3f} | {c:.3f} | {d:.3f} | {e:.3f} |"]
    replace_block(Path(args.results), "d-probe", "What D finds", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
