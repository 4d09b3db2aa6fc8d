"""What G's second step says about its first (`InferenceConfig.g_steps`), and what a step costs.

    python experiments/g_steps_probe.py --testsets data/testset-dev data/valset-real data/valset-more data/heldout-six

For every real and mild clip whose first step (the shipped G, gate and EMA off) changes the foreground by more than
`--above` levels RMS, the mean over frames of that change and of the second step's, G run on the frame as the first
left it (`Harmonizer._more_steps`' rule), and their ratio: a G that makes a fixed part of the needed change would
show how much is left. Then the time of `Harmonizer._predict` (the network part of one frame at the working size,
one thread) with 1, 2 and 5 steps. Prints; writes nothing (docs/training.md, "G again on its own result", quotes it).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from vharm import Harmonizer
from vharm.eval.clips import load_clip, load_manifest
from vharm.inference.harmonizer import change_rms
from vharm.models import colortransform


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--testsets", nargs="+", required=True, help="`vharm make-testset` directories")
    p.add_argument("--weights", default="default")
    p.add_argument("--above", type=float, default=7.0, help="only clips whose first step is above this (levels)")
    args = p.parse_args()
    torch.set_num_threads(1)
    h = Harmonizer.from_pretrained(args.weights)
    print("| test set | clip | first step (levels) | second step | ratio |\n|---|---|---|---|---|")
    with torch.no_grad():
        for testset in map(Path, args.testsets):
            for entry in load_manifest(testset)["clips"]:
                if entry["kind"] not in ("real", "mild"):
                    continue
                clip = load_clip(testset, entry)
                steps = []
                for comp, mask in zip(clip.comp, clip.mask):
                    small, mask_small = h._small(comp), h._mask_small(mask.astype(np.float32))
                    first = h.generator.transform(small, mask_small)
                    shown = small + mask_small * (colortransform.apply_affine(small, first).clamp(0, 1) - small)
                    second = h.generator.transform(shown, mask_small)
                    steps.append((float(change_rms(first, small, mask_small)),
                                  float(change_rms(second, shown, mask_small))))
                one, two = np.mean(steps, 0)
                if one > args.above:
                    print(f"| `{testset.name}` | {clip.id} | {one:.1f} | {two:.1f} | {two / one:.2f} |", flush=True)
        rng = np.random.default_rng(0)
        frame = rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
        mask = np.zeros((1080, 1920), np.float32)
        mask[300:800, 700:1200] = 1
        for n in (1, 2, 5):
            hn = h.with_options(g_steps=n, min_change=0, full_change=0)
            small, mask_small = hn._small(frame), hn._mask_small(mask)
            for _ in range(5):
                hn._predict(small, mask_small, None, None)
            t = time.perf_counter()
            for _ in range(50):
                hn._predict(small, mask_small, None, None)
            print(f"g_steps {n}: {(time.perf_counter() - t) / 50 * 1e3:.1f} ms a frame (network part, one thread)")


if __name__ == "__main__":
    main()
