"""Checkpoint selection on real video: scores every weight snapshot of a run on a validation test set and picks one.

    vharm make-testset --sequences camel goat bmx-trees horsejump-high blackswan --frames 12 \
        --synthetic 4 --composites 1 -o data/valset-real
    python experiments/select_snapshot.py --run runs/00002-stats --valset data/valset-real \
        --copy-to vharm/weights/default

The validation clips come from DAVIS sequences kept out of both training and the dev test set, recoloured as the
dev set is (the `lut` family among them, which training never uses). `--rule mean` (the default): the snapshot
with the lowest mean fMSE over the clips wins; `--rule harm`: the fewest harmed clips (`vharm.eval.metrics.harmed`),
then the lowest mean. Ties go to the earlier one. The table goes to RUN/selection.md and the choice to
RUN/selection.json (selection-harm.* for `--rule harm`).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from pathlib import Path

from tables import HARMED_COLUMN, evaluate, harm


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a `vharm train` run directory")
    p.add_argument("--valset", required=True, help="a `vharm make-testset --sequences ...` directory")
    p.add_argument("--report", help="evaluation report directory (default: data/select-RUNNAME)")
    p.add_argument("--copy-to", help="copy the chosen snapshot's files here (e.g. vharm/weights/default)")
    p.add_argument("--rule", choices=("mean", "harm"), default="mean", help="what decides (see above)")
    args = p.parse_args()
    run = Path(args.run)
    snapshots = sorted(str(s) for s in run.glob("network-snapshot-*") if s.is_dir())
    if not snapshots:
        sys.exit(f"{run}: no network-snapshot-* directories")
    report = Path(args.report or f"data/select-{run.name}")
    result = evaluate(args.valset, ["composite", *snapshots], report, sets=("real",), show=False)
    means = {m: row["fmse"] for m, row in result["summary"]["real"]["methods"].items()}
    harmed = harm(result, "real")
    clips = result["summary"]["real"]["clips"]
    rows = [{"snapshot": snap, "fmse": means[snap], "ratio": means[snap] / means["composite"],
             "worse": harmed[snap][0], "worst": harmed[snap][1], "max": harmed[snap][2]} for snap in snapshots]
    best = min(rows, key=lambda r: (r["worse"], r["fmse"]) if args.rule == "harm" else r["fmse"])
    lines = [f"Checkpoint selection (rule `{args.rule}`) by `python {shlex.join(sys.argv)}` on `{args.valset}` "
             f"({clips} real clips; composite mean fMSE {means['composite']:.1f}).", "",
             f"| snapshot | mean fMSE | / composite | {HARMED_COLUMN} | worst clip |", "|---|---|---|---|---|"]
    lines += [f"| {Path(r['snapshot']).name}{' (chosen)' if r is best else ''} | {r['fmse']:.1f} | {r['ratio']:.3f} | "
              f"{r['worse']} / {clips} | {r['worst']} ({r['max']:.2f}×) |" for r in rows]
    choice = {"valset": args.valset, "rule": args.rule, "chosen": best, "rows": rows}
    suffix = "" if args.rule == "mean" else f"-{args.rule}"
    (run / f"selection{suffix}.md").write_text("\n".join(lines) + "\n")
    (run / f"selection{suffix}.json").write_text(json.dumps(choice, indent=1) + "\n")
    print("\n".join(lines))
    if args.copy_to:
        for f in Path(best["snapshot"]).iterdir():
            shutil.copy2(f, Path(args.copy_to) / f.name)
        print(f"copied {best['snapshot']} to {args.copy_to}")


if __name__ == "__main__":
    main()
