"""The paper's ablations as one command: train variants with the same short CPU budget, score them on the
dev test sets, write the tables into docs/results.md (between markers; nothing in them is written by hand).

    python experiments/ablations.py --data ../shared/data --testset data/testset-dev --steps 300 --threads 1

Variants (each changes one thing from our `unet` recipe): no / global temporal loss (paper Sec. IV-D), no D
(Table I), ResNet and DIH generators (Table III), the paper's `rgb` head and a per-pixel affine head, G trained
without a mask (Table IV). Mask-free inference (D's map, all-zero and all-one masks) and inference-time
temporal smoothing are scored on the `ours` run.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from datetime import date
from pathlib import Path

from tables import evaluate, update_section

TRAIN_DAVIS = ("bmx-trees", "horsejump-high", "motocross-jump", "blackswan", "camel", "car-shadow",
               "drift-chicane", "goat")
VARIANTS = {
    "ours": [],
    "temporal-none": ["--temporal", "none"],
    "temporal-global": ["--temporal", "global"],
    "no-D": ["--use-discriminator", "false"],
    "resnet": ["--backbone", "resnet"],
    "dih": ["--backbone", "dih"],
    "rgb-head": ["--head", "rgb"],
    "affine-per-pixel": ["--grid", "0"],
    "trained-without-mask": ["--use-mask", "false"],
}


def sources(data: Path) -> list[str]:
    return [str(data / "person-photos"), str(data / "more/coco128-seg"), str(data / "more/omnimatte-tennis"),
            str(data / "more/e2fgvi-schoolgirls"), *(str(data / "davis2016" / s) for s in TRAIN_DAVIS)]


def run(cmd: list[str]) -> None:
    print("+", " ".join(shlex.quote(c) for c in cmd), flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--testset", required=True, help="a test set dir from vharm make-testset")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--resolution", type=int, default=128, help="working resolution for the short runs")
    p.add_argument("--outdir", default="runs/ablations")
    p.add_argument("--report", default="data/ablations")
    p.add_argument("--results", default="docs/results.md")
    p.add_argument("--only", nargs="*", help="train only these variants")
    p.add_argument("--threads", type=int, default=0, help="torch threads per training (0 = default)")
    args = p.parse_args()
    vharm = [sys.executable, "-m", "vharm"]
    outdir = Path(args.outdir)
    runs = {}
    for name, flags in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        done = sorted(outdir.glob(f"*-{name}/best/config.json"))
        if done:  # resumable: a finished variant is not trained again
            runs[name] = done[-1].parent.parent
            continue
        run([*vharm, "train", "--preset", "unet", "--name", name, "--outdir", str(outdir), "--steps", str(args.steps),
             "--resolution", str(args.resolution), "--val-every", str(args.steps), "--snapshot-every",
             str(args.steps), "--val-pairs", "16", "--threads", str(args.threads), "--quiet", *flags,
             *sources(Path(args.data))])
        runs[name] = sorted(outdir.glob(f"*-{name}"))[-1]
    methods = ["composite", *(str(r) for r in runs.values())]
    if "ours" in runs:
        ours = str(runs["ours"])
        methods += [f"{ours}:nomask", f"{ours}:zeros", f"{ours}:ones", f"{ours}:smooth=0.5", f"{ours}:smooth=0.8"]
    report = Path(args.report)
    write_results(Path(args.results), evaluate(args.testset, methods, report), runs, args)


def _label(method: str, runs: dict) -> str:
    for name, path in runs.items():
        if method.startswith(str(path)):
            return name + method[len(str(path)):]
    return method


def write_results(path: Path, result: dict, runs: dict, args) -> None:
    note = (f"Generated {date.today().isoformat()} by `python {' '.join(shlex.quote(a) for a in sys.argv)}`: "
            f"{args.steps} steps of batch 4 at {args.resolution}² per variant, everything else the `unet` preset; "
            f"test set `{args.testset}`. Short runs: they rank the variants, they are not the shipped model.")
    update_section(path, "ablations", "Ablations (paper Sec. IV-D, Tables I, III, IV)", note, result,
                   lambda m: _label(m, runs))


if __name__ == "__main__":
    main()
