"""What each part of the `vharm fit` recipe buys, on the validation clips: one fit per variant, one table.

    python experiments/fit_ablation.py --sources $(cat sources.txt) --valset data/valset-real

Each variant is `vharm fit` with a few flags over the same base (6,000 pairs, 15 + 5 epochs); a variant whose run
directory (OUTDIR/NNNNN-NAME with best/) exists is not fitted again, and the pairs' features are cached per data
configuration, so a rerun after a change to one variant costs that variant only. The table (the best epoch of
each, chosen by `vharm.train.fit.score`) goes into the "fit-ablation" section of docs/training.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import torch
from tables import replace_block

from vharm.models import Generator
from vharm.models.colortransform import IDENTITY
from vharm.train.fit import clip_features, frame_fmse

OLD_FAMILIES = "--families reinhard exposure gamma hue saturation temperature contrast curve"
ALL_FAMILIES = f"{OLD_FAMILIES} matrix transfer split_tone"
BROAD = f"{ALL_FAMILIES} --scene-prob 0.7 --random-mask-prob 0.3"  # the first broad recipe
BASE = "--pairs 6000 --epochs 15 --confidence-epochs 5"
VARIANTS = {  # name: (flags, what it tests)
    "A-id0": (f"{OLD_FAMILIES} --scene-prob 0 --random-mask-prob 0.5 --identity-share 0",
              "the shipped weights' data (8 families, random regions), no identity frames"),
    "A-id0.2": (f"{OLD_FAMILIES} --scene-prob 0 --random-mask-prob 0.5 --identity-share 0.2", "+ 20 % identity frames"),
    "A-id0.5": (f"{OLD_FAMILIES} --scene-prob 0 --random-mask-prob 0.5 --identity-share 0.5",
                "+ 50 % identity frames: `vharm fit`'s defaults"),
    "B-id0.2": (f"{OLD_FAMILIES} --scene-prob 0.7 --random-mask-prob 0.5 --identity-share 0.2",
                "A-id0.2 + scene recolouring (70 % of pairs)"),
    "B-id0.5": (f"{OLD_FAMILIES} --scene-prob 0.7 --random-mask-prob 0.5 --identity-share 0.5",
                "A-id0.5 + scene recolouring"),
    "C-id0.2": (f"{BROAD} --identity-share 0.2", "11 families, scene recolouring, 30 % random regions"),
    "C-id0.5": (f"{BROAD} --identity-share 0.5", "C-id0.2 with 50 % identity frames"),
    "D-id0.5": (f"{ALL_FAMILIES} --scene-prob 0 --random-mask-prob 0.5 --identity-share 0.5",
                "A-id0.5 with the 11 families (no scene recolouring)"),
    "A-id0.7": (f"{OLD_FAMILIES} --scene-prob 0 --random-mask-prob 0.5 --identity-share 0.7", "+ 70 % identity frames"),
    "A-id0.5-wide": (f"{OLD_FAMILIES} --scene-prob 0 --random-mask-prob 0.5 --identity-share 0.5 --widths 128 128",
                     "A-id0.5 with hidden layers of 128"),
    "A-id0.5-noregion": (f"{OLD_FAMILIES} --scene-prob 0 --random-mask-prob 0 --identity-share 0.5",
                         "A-id0.5 without random regions"),
    "A-id0.5-20k": (f"{OLD_FAMILIES} --scene-prob 0 --random-mask-prob 0.5 --identity-share 0.5 --pairs 20000 "
                    "--epochs 30", "A-id0.5 with 20,000 pairs, 30 epochs"),
    **{f"A-id0.5-eps{e}": (f"{OLD_FAMILIES} --scene-prob 0 --random-mask-prob 0.5 --identity-share 0.5 "
                           f"--relative-eps {e}", f"A-id0.5 with --relative-eps {e} (25)") for e in (5, 100, 400)},
}
FAMILY_COLUMNS = ("exposure", "reinhard", "lut")  # per-family real-clip ratios in the table (lut: held out)


def best_row(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    return min(rows, key=lambda r: r["score"])


def family_ratios(weights: Path, clips: list[dict]) -> dict[str, float]:
    """Mean fMSE over the composite's on the real clips of each recolouring family (the clip id ends in it)."""
    net = Generator.from_pretrained(weights).net
    eye = torch.tensor(IDENTITY)
    sums: dict[str, list[float]] = {}
    with torch.no_grad():
        for clip in clips:
            if clip["kind"] != "real":
                continue
            delta, conf = net.change(torch.from_numpy(clip["stats"]))
            ours, theirs = frame_fmse(eye + conf * delta, torch.from_numpy(clip["px"]).float())
            acc = sums.setdefault(clip["id"].rsplit("-", 1)[1], [0.0, 0.0])
            acc[0] += float(ours.mean())
            acc[1] += float(theirs.mean())
    return {family: a / b for family, (a, b) in sums.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sources", nargs="+", required=True, help="the source folders of `vharm fit`")
    p.add_argument("--valset", required=True, help="a `vharm make-testset --sequences ...` directory")
    p.add_argument("--outdir", default="runs/abl")
    p.add_argument("--only", nargs="*", help="fit these variants only (the table lists every one that has a run)")
    p.add_argument("--doc", default="docs/training.md")
    args = p.parse_args()
    out = Path(args.outdir)
    runs = {}
    for name, (flags, _) in VARIANTS.items():
        done = sorted(out.glob(f"[0-9]*-{name}/best"))
        if not done and (args.only is None or name in args.only):
            cmd = ["vharm", "fit", *args.sources, "--val-testset", args.valset, "--outdir", str(out), "--name", name,
                   "--quiet", *shlex.split(BASE), *shlex.split(flags)]
            print("$", shlex.join(cmd[:2]), "...", shlex.join(cmd[2 + len(args.sources):]), flush=True)
            subprocess.run(cmd, check=True)
            done = sorted(out.glob(f"[0-9]*-{name}/best"))
        if done:
            runs[name] = done[-1].parent
    clips = clip_features(Path(args.valset), 128)
    lines = [f"Generated by `python {shlex.join(sys.argv[:1])} --sources ... --valset {args.valset}` (base: `{BASE}`). "
             "Validation clips, fMSE over the composite's (per-frame transforms, no gate); harmed: clips above "
             "1.1x; the epoch chosen by `vharm.train.fit.score`; the family columns: the real clips of that "
             "recolouring (3 each; `lut` is never trained on).", "",
             "| variant | what | real | real harmed | worst | mild | mild harmed | worst | "
             + " | ".join(f"real {f}" for f in FAMILY_COLUMNS) + " | epoch |",
             "|---|---|---|---|---|---|---|---|" + "---|" * len(FAMILY_COLUMNS) + "---|"]
    for name, run in runs.items():
        r = best_row(run)
        families = family_ratios(run / "best", clips)
        lines.append(f"| {name} | {VARIANTS[name][1]} | {r['real_ratio']:.3f} | {r['real_harmed']} | "
                     f"{r['real_worst']:.2f} | {r['mild_ratio']:.3f} | {r['mild_harmed']} | {r['mild_worst']:.2f} | "
                     + " | ".join(f"{families.get(f, float('nan')):.2f}" for f in FAMILY_COLUMNS)
                     + f" | {r['stage']} {r['epoch']} |")
    replace_block(Path(args.doc), "fit-ablation", "`vharm fit`: what each part buys", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
