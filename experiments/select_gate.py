"""Chooses the do-no-harm gate (`vharm.inference.harmonizer.gate_change`) of weights on the validation clips.

    python experiments/select_gate.py --weights vharm/weights/default --valset data/valset-real --apply

Scores the weights with the gate off and on a grid of (min_change, full_change) on the real, synthetic and mild
clips of a validation test set (`vharm evaluate ... --method W:gate=MIN,FULL`). The rule: the fewest clips, of
the three sets together, that are harmed (`vharm.eval.metrics.harmed`); then the lowest mean fMSE on the real
clips. Ties go to the smaller gate. (Before the mild set existed, 2026-12-01, the rule counted real and synthetic
clips only and chose 4, 6.) The table goes into the "gate" section of docs/training.md; `--apply` writes the choice
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
MINS = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0)
SPANS = (1.5, 2.0, 3.0)  # full_change / min_change


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", required=True, help="a weights directory (config.json + safetensors)")
    p.add_argument("--valset", required=True, help="a `vharm make-testset --sequences ...` directory")
    p.add_argument("--report", default="data/select-gate", help="evaluation report directory")
    p.add_argument("--doc", default="docs/training.md", help="where the table goes")
    p.add_argument("--apply", action="store_true", help="write the chosen gate into WEIGHTS/config.json")
    args = p.parse_args()
    weights = Path(args.weights)
    gates = [(0.0, 0.0)] + [(m, m * s) for m in MINS for s in SPANS]
    methods = {f"{weights}:gate={a:g},{b:g}": (a, b) for a, b in gates}
    result = evaluate(args.valset, ["composite", *methods], args.report, sets=("real", "synthetic", "mild"),
                      show=False)
    summary = result["summary"]
    real, synth = summary["real"]["methods"], summary["synthetic"]["methods"]
    mild = summary.get("mild", {}).get("methods", {})
    harm_real, harm_synth, harm_mild = harm(result, "real"), harm(result, "synthetic"), harm(result, "mild")
    rows = [{"gate": gate, "fmse": real[m]["fmse"] / real["composite"]["fmse"],
             "psnr": real[m]["psnr"], "tl": real[m]["tl"] / real["composite"]["tl"],
             "synth_fmse": synth[m]["fmse"] / synth["composite"]["fmse"], "synth_psnr": synth[m]["psnr"],
             "mild_fmse": mild[m]["fmse"] / mild["composite"]["fmse"] if mild else float("nan"),
             "harmed": harm_real[m][0] + harm_synth[m][0] + harm_mild.get(m, (0,))[0]} for m, gate in methods.items()]
    best = min(rows, key=lambda r: (r["harmed"], r["fmse"], r["gate"]))
    n_real, n_synth = summary["real"]["clips"], summary["synthetic"]["clips"]
    n_mild = summary.get("mild", {}).get("clips", 0)
    lines = [f"Gate selection by `python {shlex.join(sys.argv)}` on `{args.valset}` ({n_real} real, {n_synth} "
             f"synthetic and {n_mild} mild clips; composite PSNR {real['composite']['psnr']:.2f} real, "
             f"{synth['composite']['psnr']:.2f} synthetic).", "",
             "| min_change, full_change (levels) | real fMSE / composite | real PSNR | real TL / composite "
             f"| synthetic fMSE / composite | synthetic PSNR | mild fMSE / composite | {HARMED_COLUMN} "
             "(real + synthetic + mild) |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['gate'][0]:g}, {r['gate'][1]:g}{' (off)' if r['gate'] == (0.0, 0.0) else ''}"
              f"{' (chosen)' if r is best else ''} | {r['fmse']:.3f} | {r['psnr']:.2f} | {r['tl']:.3f} | "
              f"{r['synth_fmse']:.3f} | {r['synth_psnr']:.2f} | {r['mild_fmse']:.3f} | {r['harmed']} / "
              f"{n_real + n_synth + n_mild} |" for r in rows]
    replace_block(Path(args.doc), "gate", "The do-no-harm gate", lines)
    print("\n".join(lines))
    if args.apply:
        inference = read_weights_config(weights).get("inference", {})
        write_weights_config(weights, {"inference": {**inference, "min_change": best["gate"][0],
                                                     "full_change": best["gate"][1]}})
        print(f"wrote the gate {best['gate']} into {weights / 'config.json'}")


if __name__ == "__main__":
    main()
