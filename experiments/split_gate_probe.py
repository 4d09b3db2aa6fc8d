"""Which part of G's colour change carries the gain on real clips: its luminance part or its chroma part?

    python experiments/split_gate_probe.py --testsets data/valset-real data/valset-more data/testset-dev \
        --variants shipped luma:0,0 chroma:0,0 luma:8,12 luma:6,9 luma:5,7.5 split:6,9,12,18 -o docs/training.md

G's change to the foreground, (A - I) x + b for its 3x4 transform (A | b), is split into a luminance part (its
projection onto luma, Rec. 601 weights, added equally to R, G and B: the chroma of the pixel is left as it is) and
the chroma part (the rest, which leaves luma unchanged; both are affine in x, so each is a 3x4 transform of its own).
A variant keeps one or both parts, each through the do-no-harm gate with thresholds of its own (levels RMS over the
mask, as `--min-change` / `--full-change`, `0,0` = ungated), raised by the scene's floor in the same proportion as
the shipped gate's: `shipped` (the joint gate, 8, 12), `luma:LO,HI` (the luminance part alone), `chroma:LO,HI`,
`split:LO,HI,LO,HI` (luminance, then chroma), `gray:LO,HI` (another split: the same gain and offset on every
channel, the mean of the change's, alone: exposure and brightness without any cast). The shipped G, EMA and floor
otherwise (`--weights W`: another G, with the shipped gate and EMA); true masks; real and mild clips. Per test set
and variant: fMSE as a ratio to the composite's (ratio of the means over clips), the clips above 1.1x and the worst
one. The table goes between markers into the output file (`--output`, section `--key`), else it is printed.
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

import vharm.inference.harmonizer as harmonizer_module
from vharm.eval.clips import load_clip, load_manifest
from vharm.eval.methods import Model
from vharm.eval.scoring import _clip_fmse, composite_fmse
from vharm.inference.harmonizer import Harmonizer, change_rms, gate_scale, luma_part
from vharm.models import colortransform
from vharm.models.networks import read_weights_config, resolve_weights

SHIPPED_GATE = harmonizer_module.gate_change


def split_change(coeffs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(identity, luminance part, chroma part) of a transform (B, 12, h, w): coeffs = identity + luma + chroma."""
    eye = colortransform.identity(1, 1, 1, coeffs.device, coeffs.dtype)
    luma = luma_part(coeffs)
    return eye, luma, coeffs - eye - luma


def gray_change(coeffs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(identity, gray part, rest) of a transform (B, 12, h, w): the gray part is the same gain (the mean of the
    change's diagonal) and offset (the mean of its offsets) on every channel, an exposure and brightness change."""
    eye = colortransform.identity(1, 1, 1, coeffs.device, coeffs.dtype)
    b, _, h, w = coeffs.shape
    change = (coeffs - eye).view(b, 3, 4, h, w)
    gray = torch.zeros_like(change)
    for i in range(3):
        gray[:, i, i] = change[:, [0, 1, 2], [0, 1, 2]].mean(1)
        gray[:, i, 3] = change[:, :, 3].mean(1)
    return eye, gray.reshape(b, 12, h, w), (change - gray).reshape(b, 12, h, w)


def split_gate(luma: tuple[float, float] | None, chroma: tuple[float, float] | None, base_min: float,
               split=split_change):
    """A `gate_change` that gates the two parts of `split` apart (None: that part dropped); the thresholds are raised
    as the harmonizer raised its own (`min_change` / `base_min`: the scene's floor)."""

    def gate(coeffs, small, mask, min_change, full_change):
        raise_by = min_change / base_min if base_min > 0 else 1.0
        eye, *parts = split(coeffs)
        out = eye.expand_as(coeffs).clone()
        for part, thresholds in zip(parts, (luma, chroma)):
            if thresholds is not None:
                lo, hi = (t * raise_by for t in thresholds)
                out = out + gate_scale(change_rms(eye + part, small, mask), lo, hi).view(-1, 1, 1, 1) * part
        return out

    return gate


def parse_variant(spec: str, base_min: float):
    kind, _, numbers = spec.partition(":")
    if kind == "shipped":
        return SHIPPED_GATE
    values = [float(v) for v in numbers.split(",")]
    if kind == "luma" and len(values) == 2:
        return split_gate(tuple(values), None, base_min)
    if kind == "chroma" and len(values) == 2:
        return split_gate(None, tuple(values), base_min)
    if kind == "split" and len(values) == 4:
        return split_gate(tuple(values[:2]), tuple(values[2:]), base_min)
    if kind == "gray" and len(values) == 2:
        return split_gate(tuple(values), None, base_min, gray_change)
    raise SystemExit(f"--variants: {spec!r} is not shipped, luma:LO,HI, chroma:LO,HI, split:LO,HI,LO,HI or "
                     "gray:LO,HI")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--testsets", nargs="+", required=True, help="`vharm make-testset` directories")
    p.add_argument("--variants", nargs="+", required=True,
                   help="shipped, luma:LO,HI, chroma:LO,HI, split:LO,HI,LO,HI, gray:LO,HI")
    p.add_argument("-o", "--output", help="the doc whose section is (re)written (default: print only)")
    p.add_argument("--weights", default="default",
                   help="G to split (default: the shipped one); it gets the shipped weights' gate and EMA")
    p.add_argument("--key", default="split-gate", help="the output doc's section markers (<!-- KEY:begin -->)")
    args = p.parse_args()
    torch.set_num_threads(1)
    shipped = read_weights_config(resolve_weights("default"))["inference"]
    # brighten 1: the split is of G's own change (its tables predate the brightening gain of 2026-12-04)
    harmonizer = Harmonizer.from_pretrained(args.weights, min_change=shipped["min_change"],
                                            full_change=shipped["full_change"],
                                            temporal_smoothing=shipped["temporal_smoothing"], brighten=1)
    g = "the shipped G" if args.weights == "default" else f"G {args.weights} with the shipped gate"
    lines = [f"Generated {date.today().isoformat()} by `python {shlex.join(sys.argv)}` ({g}, EMA and "
             "floor; true masks). fMSE as a ratio to the composite's; clips above 1.1x; the worst clip.", "",
             "| test set | variant | real | real > 1.1x | worst real | mild | mild > 1.1x | worst mild |",
             "|---" * 8 + "|"]
    for testset in map(Path, args.testsets):
        entries = load_manifest(testset)["clips"]
        clips = {k: [load_clip(testset, e) for e in entries if e["kind"] == k] for k in ("real", "mild")}
        composite = {k: np.array(composite_fmse(v)) for k, v in clips.items()}
        for variant in args.variants:
            harmonizer_module.gate_change = parse_variant(variant, harmonizer.min_change)
            cells = []
            for kind, group in clips.items():
                ours = np.array([_clip_fmse(Model(variant, Path("."), harmonizer), c) for c in group])
                ratio, worst = ours / composite[kind], int(np.argmax(ours / composite[kind]))
                cells += [f"{ours.mean() / composite[kind].mean():.3f}", f"{(ratio > 1.1).sum()} / {len(group)}",
                          f"{group[worst].id.split('/')[-1]} ({ratio[worst]:.2f}x)"]
            lines.append(f"| `{testset.name}` | {variant} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    harmonizer_module.gate_change = SHIPPED_GATE
    if args.output:
        replace_block(Path(args.output), args.key, "Luminance and chroma of G's change", lines + [""])


if __name__ == "__main__":
    main()
