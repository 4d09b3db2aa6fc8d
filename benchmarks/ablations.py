"""The paper's ablations as one command: train variants with the same short CPU budget, score them on the
dev test sets, write the tables into docs/results.md (between markers; nothing in them is written by hand).

    python benchmarks/ablations.py --data ../shared/data --testset data/testset-dev --steps 300

Variants (each changes one thing from our `cpu` recipe): no / global temporal loss (paper Sec. IV-D), no D
(Table I), ResNet and DIH generators (Table III), the paper's `rgb` head and a per-pixel affine head, G trained
without a mask (Table IV). Mask-free inference (D's map, all-zero and all-one masks) and inference-time
temporal smoothing are scored on the `ours` run.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from datetime import date
from pathlib import Path

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
BEGIN, END = "<!-- ablations:begin -->", "<!-- ablations:end -->"


def sources(data: Path) -> list[str]:
    return [str(data / "person-photos"), str(data / "more/coco128-seg"), str(data / "more/omnimatte-tennis"),
            str(data / "more/e2fgvi-schoolgirls"), *(str(data / "davis2016" / s) for s in TRAIN_DAVIS)]


def run(cmd: list[str]) -> None:
    print("+", " ".join(shlex.quote(c) for c in cmd), flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--testset", action="append", required=True, help="test set dir(s) from vharm make-testset")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--resolution", type=int, default=128, help="working resolution for the short runs")
    p.add_argument("--outdir", default="runs/ablations")
    p.add_argument("--report", default="data/ablations")
    p.add_argument("--results", default="docs/results.md")
    p.add_argument("--only", nargs="*", help="train only these variants")
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
        run([*vharm, "train", "--preset", "cpu", "--name", name, "--outdir", str(outdir), "--steps", str(args.steps),
             "--resolution", str(args.resolution), "--val-every", str(args.steps), "--snapshot-every",
             str(args.steps), "--val-pairs", "16", "--quiet", *flags, *sources(Path(args.data))])
        runs[name] = sorted(outdir.glob(f"*-{name}"))[-1]
    methods = ["composite", *(str(r) for r in runs.values())]
    if "ours" in runs:
        ours = str(runs["ours"])
        methods += [f"{ours}:nomask", f"{ours}:zeros", f"{ours}:ones", f"{ours}:smooth=0.5", f"{ours}:smooth=0.8"]
    tables = []
    for testset in args.testset:
        report = Path(args.report) / Path(testset).name
        run([*vharm, "evaluate", "--testset", testset, "--method", *methods, "-o", str(report), "--quiet"])
        tables.append((testset, json.loads((report / "results.json").read_text())))
    write_results(Path(args.results), tables, runs, args)


def _label(method: str, runs: dict) -> str:
    for name, path in runs.items():
        if method.startswith(str(path)):
            return name + method[len(str(path)):]
    return method


def write_results(path: Path, tables, runs: dict, args) -> None:
    keys = ("mse", "fmse", "psnr", "fpsnr", "lt1", "tl")
    lines = [BEGIN, f"Generated {date.today().isoformat()} by `python {' '.join(shlex.quote(a) for a in sys.argv)}` "
             f"({args.steps} steps of batch 4 at {args.resolution}² per variant, everything else the `cpu` preset).", ""]
    for testset, result in tables:
        means = result["mean"]
        present = [k for k in keys if any(k in row and row[k] is not None for row in means.values())]
        lines += [f"**{testset}** (mean over {result.get('clips', '?')} clips)", "",
                  "| method | " + " | ".join(present) + " |", "|---" * (len(present) + 1) + "|"]
        for method, row in means.items():
            cells = [f"{row[k]:.4g}" if row.get(k) is not None else "" for k in present]
            lines.append(f"| {_label(method, runs)} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append(END)
    block = "\n".join(lines)
    text = path.read_text() if path.exists() else "# Results\n\n"
    if BEGIN in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n## Ablations\n\n" + block + "\n"
    path.write_text(text)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
