"""Chooses the do-no-harm gate (`vharm.inference.harmonizer.gate_change`) of weights on the validation clips.

    python experiments/select_gate.py --weights vharm/weights/default \
        --valset data/valset-real data/valset-more data/heldout-six --mins 8 9 10 --spans 1.5 --darken 1.25 \
        --steps 1 2 3 5 --apply

Scores the weights with the gate off and on a grid of (min_change, full_change), of the factor for darkening changes
(`--darken`, `darken_gate`; 1 by default) and of G's steps (`--steps`, `g_steps`: G run again on its own result, the
gate judging the first step; 1 by default) on the real, synthetic and mild clips of one or more validation test sets
(`vharm evaluate ... --method W:gate=MIN,FULL:dgate=K:gsteps=N`, every option written out, so that none falls back
to the weights' own). The rule: the fewest clips, of every set together, that are harmed
(`vharm.eval.metrics.harmed`); then the lowest mean, over the sets, of the real clips' fMSE ratio to the composite.
Ties go to the smaller gate, then the smaller factor, then fewer steps. (Before the mild set existed, 2026-12-01, the
rule counted real and synthetic clips only and chose 4, 6; until 2026-12-04 it ran on `valset-real` alone and chose
8, 12, then on three sets 10, 15, with `--darken 1 1.25 1.5` 8, 12 with darkening x1.25, and with `--steps 1 2 3 5`
9, 13.5 with darkening x1.25 and 3 steps.) The table goes into the `--key` section of docs/training.md ("gate");
`--apply` writes the choice into the "inference" section of the weights' config.json (atomically), which `vharm
harmonize`, the API and `vharm evaluate` then use.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from tables import HARMED_COLUMN, evaluate, harm, replace_block

from vharm.models.networks import read_weights_config, write_weights_config

# levels (0-255), RMS over the mask; 0.5-1.5 since `vharm fit`'s G (identity frames) makes smaller changes
MINS = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0)
SPANS = (1.5, 2.0, 3.0)  # full_change / min_change
KINDS = ("real", "synthetic", "mild")


def score(valset: str, report: Path, methods: dict[str, tuple[float, float, float]]) -> tuple[dict, str]:
    """Per gate, one set's ratios and harmed count; and the set's line for the caption."""
    result = evaluate(valset, ["composite", *methods], report, sets=KINDS, show=False)
    summary = result["summary"]
    harms = {kind: harm(result, kind) for kind in KINDS}
    rows = {}
    for m in methods:
        rows[m] = {"harmed": sum(h.get(m, (0,))[0] for h in harms.values())}
        for kind in KINDS:
            means = summary.get(kind, {}).get("methods", {})
            rows[m][kind] = means[m]["fmse"] / means["composite"]["fmse"] if means else float("nan")
    clips = {kind: summary.get(kind, {}).get("clips", 0) for kind in KINDS}
    caption = (f"`{valset}` ({clips['real']} real, {clips['synthetic']} synthetic and {clips['mild']} mild clips, "
               f"composite PSNR {summary['real']['methods']['composite']['psnr']:.2f} real)")
    return {"rows": rows, "clips": sum(clips.values())}, caption


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", required=True, help="a weights directory (config.json + safetensors)")
    p.add_argument("--valset", required=True, nargs="+", help="`vharm make-testset --sequences ...` directories")
    p.add_argument("--report", default="data/select-gate", help="evaluation report directory (one per set inside)")
    p.add_argument("--doc", default="docs/training.md", help="where the table goes")
    p.add_argument("--mins", type=float, nargs="+", default=MINS, help="the grid's min_change values (levels)")
    p.add_argument("--darken", type=float, nargs="+", default=[1.0],
                   help="the grid's darken_gate values (the gate's factor for a change that darkens)")
    p.add_argument("--spans", type=float, nargs="+", default=SPANS, help="the grid's full_change / min_change values")
    p.add_argument("--steps", type=int, nargs="+", default=[1],
                   help="the grid's g_steps values (G run again on its own result; the gate judges the first step)")
    p.add_argument("--key", default="gate", help="the doc's table markers (<!-- KEY:begin -->)")
    p.add_argument("--apply", action="store_true", help="write the chosen gate into WEIGHTS/config.json")
    args = p.parse_args()
    weights = Path(args.weights)
    # Every option written out: one left out would be the weights' own setting, not 1.
    gates = [(0.0, 0.0, 1.0, 1)] + [(m, m * s, k, n) for m in args.mins for s in args.spans for k in args.darken
                                    for n in args.steps]
    methods = {f"{weights}:gate={a:g},{b:g}:dgate={k:g}:gsteps={n}": (a, b, k, n) for a, b, k, n in gates}
    sets, captions = [], []
    for valset in args.valset:
        scored, caption = score(valset, Path(args.report) / Path(valset).name, methods)
        sets.append(scored)
        captions.append(caption)
    rows = [{"gate": gate, "harmed": sum(s["rows"][m]["harmed"] for s in sets),
             "real": sum(s["rows"][m]["real"] for s in sets) / len(sets), "sets": [s["rows"][m] for s in sets]}
            for m, gate in methods.items()]
    best = min(rows, key=lambda r: (r["harmed"], r["real"], r["gate"]))
    names = [Path(v).name for v in args.valset]
    lines = [f"Gate selection by `python {shlex.join(sys.argv)}` on " + "; ".join(captions) + ". Per set: the real, "
             "synthetic and mild clips' mean fMSE over the composite's; the harmed clips are counted over every "
             "clip of every set.", "",
             "| min_change, full_change (levels), darkening factor, G's steps | "
             + " | ".join(f"{n} real | {n} synthetic | {n} mild" for n in names)
             + f" | real, mean of the sets | {HARMED_COLUMN} (of {sum(s['clips'] for s in sets)}) |",
             "|---" * (3 * len(names) + 3) + "|"]
    for r in rows:
        darken = f", darkening x{r['gate'][2]:g}" if r["gate"][2] != 1 else ""
        steps = f", {r['gate'][3]} steps" if r["gate"][3] != 1 else ""
        label = f"{r['gate'][0]:g}, {r['gate'][1]:g}{darken}{steps}" + (" (off)" if r["gate"][1] == 0 else "") + (
            " (chosen)" if r is best else "")
        cells = [f"{s[k]:.3f}" for s in r["sets"] for k in ("real", "synthetic", "mild")]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {r['real']:.3f} | {r['harmed']} |")
    replace_block(Path(args.doc), args.key, "The do-no-harm gate", lines)
    print("\n".join(lines))
    if args.apply:
        inference = read_weights_config(weights).get("inference", {})
        write_weights_config(weights, {"inference": {**inference, "min_change": best["gate"][0],
                                                     "full_change": best["gate"][1], "darken_gate": best["gate"][2],
                                                     "g_steps": best["gate"][3]}})
        print(f"wrote the gate {best['gate']} into {weights / 'config.json'}")


if __name__ == "__main__":
    main()
