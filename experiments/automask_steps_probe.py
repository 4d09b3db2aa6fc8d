"""`vharm` with G's steps kept for automatic masks: the measurement behind `Harmonizer.for_mask` running one step.

    python experiments/automask_steps_probe.py evaluate --testset data/valset-real --sets real mild \
        --method composite default:automask -o data/automask-steps-valset-real

The shipped `for_mask("auto")` gives `--mask auto` one step of G and no brightening gain; this runs any `vharm`
command with the steps kept (the brightening gain still dropped), so that `vharm evaluate`'s `:automask` scores
what the steps would do with the automatic mask (docs/training.md, "G again on its own result").
"""

from __future__ import annotations

import sys

from vharm.cli import main
from vharm.inference.harmonizer import Harmonizer


def keep_steps(self: Harmonizer, kind: str) -> Harmonizer:
    return self.with_options(brighten=1.0) if kind == "auto" and self.brighten != 1 else self


if __name__ == "__main__":
    Harmonizer.for_mask = keep_steps
    sys.exit(main(sys.argv[1:]))
