"""The main results table: the shipped weights against the baselines on the dev test set, into docs/results.md.

    python experiments/results.py --testset data/testset-dev --method composite reinhard-frame reinhard-clip \
        default default:nomask default:smooth=0

Runs `vharm evaluate` (resumable, cached) and writes its means, with ratios to the composite, between markers.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from datetime import date
from pathlib import Path

from tables import evaluate, update_section


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--testset", required=True)
    p.add_argument("--method", nargs="+", required=True)
    p.add_argument("--report", default="data/report-main")
    p.add_argument("--results", default="docs/results.md")
    p.add_argument("--section", default="main", help="the marker key of the section to write")
    p.add_argument("--title", default="Shipped weights against the baselines", help="heading of a new section")
    p.add_argument("--label", nargs="*", default=[], metavar="METHOD=NAME", help="names for methods in the table")
    args = p.parse_args()
    labels = dict(item.rsplit("=", 1) for item in args.label)
    result = evaluate(args.testset, args.method, args.report)
    note = (f"Generated {date.today().isoformat()} by `python {shlex.join(sys.argv)}` on test set "
            f"`{args.testset}` (see docs/testset.md). `default` = the weights shipped in the package.")
    update_section(Path(args.results), args.section, args.title, note, result, lambda m: labels.get(m, m))


if __name__ == "__main__":
    main()
