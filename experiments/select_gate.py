"""Chooses the do-no-harm gate (`vharm.inference.harmonizer.gate_change`) of weights on the validation clips.

    python experiments/select_gate.py --weights vharm/weights/default \
        --valset data/valset-real data/valset-more data/heldout-six --apply

Scores the weights with the gate off and on a grid of (min_change, full_change) on the real, synthetic and mild
clips of one or more validation test sets (`vharm evaluate ... --method W:gate=MIN,FULL`). The rule: the fewest
clips, of every set together, that are harmed (`vharm.eval.metrics.harmed`); then the lowest mean, over the sets,
of the real clips' fMSE ratio to the composite. Ties go to the smaller gate. (Before the mild set existed,
2026-12-01, the rule counted real and synthetic clips only and chose 4, 6; until 2026-12-04 it ran on `valset-real`
alone and chose 8, 12.) The table goes into the "gate" section of docs/training.md; `--apply` writes the choice
into the "inference" section of the weights' config.json (atomically), which `vharm harmonize`, the API and
`vharm evaluate` then use.
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


def score(valset: str, report: Path, methods: dict[str, tuple[float, float]]) -> tuple[dict, str]:
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
    p.add_argument("--apply", action="store_true", help="write the chosen gate into WEIGHTS/config.json")
    args = p.parse_args()
    weights = Path(args.weights)
    gates = [(0.0, 0.0)] + [(m, m * s) for m in MINS for s in SPANS]
    methods = {f"{weights}:gate={a:g},{b:g}": (a, b) for a, b in gates}
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
             "| min_change, full_change (levels) | " + " | ".join(f"{n} real | {n} synthetic | {n} mild" for n in names)
             + f" | real, mean of the sets | {HARMED_COLUMN} (of {sum(s['clips'] for s in sets)}) |",
             "|---" * (3 * len(names) + 3) + "|"]
    for r in rows:
        label = f"{r['gate'][0]:g}, {r['gate'][1]:g}" + (" (off)" if r["gate"] == (0.0, 0.0) else "") + (
            " (chosen)" if r is best else "")
        cells = [f"{s[k]:.3f}" for s in r["sets"] for k in ("real", "synthetic", "mild")]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {r['real']:.3f} | {r['harmed']} |")
    replace_block(Path(args.doc), "gate", "The do-no-harm gate", lines)
    print("\n".join(lines))
    if args.apply:
        inference = read_weights_config(weights).get("inference", {})
        write_weights_config(weights, {"inference": {**inference, "min_change": best["gate"][0],
                                                     "full_change": best["gate"][1]}})
        print(f"wrote the gate {best['gate']} into {weights / 'config.json'}")


if __name__ == "__main__":
    main()
