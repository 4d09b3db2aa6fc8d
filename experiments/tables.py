"""Writes evaluation results (a `vharm evaluate` results.json) as Markdown tables into a section of a doc,
between `<!-- KEY:begin -->` and `<!-- KEY:end -->` markers, so that no number in it is typed by hand."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

from vharm.eval.metrics import HARMED, METRICS, harmed

HARMED_COLUMN = f"clips > {HARMED:g}×"  # the column of the harmed count, in every table that has one


def evaluate(testset, methods: list[str], report, sets: tuple[str, ...] = (), show: bool = True) -> dict:
    """Runs `vharm evaluate` (cached per method and clip, so reruns are cheap) and returns its results.json.

    `show` False keeps its per-clip table off stdout (the callers that print their own table)."""
    cmd = [sys.executable, "-m", "vharm", "evaluate", "--testset", str(testset), *(["--sets", *sets] if sets else []),
           "--method", *methods, "-o", str(report), "--quiet"]
    print("+", shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True, stdout=None if show else subprocess.DEVNULL)
    return json.loads((Path(report) / "results.json").read_text())


def harm(result: dict, kind: str) -> dict[str, tuple[int, str, float]]:
    """Per method: how many clips are harmed (`vharm.eval.metrics.harmed`: an fMSE above `HARMED` times the
    composite's), and the worst clip with its ratio."""
    fmse: dict[str, dict[str, float]] = {}
    for r in result.get("records", []):
        if r["kind"] == kind and r["metrics"].get("fmse") is not None:
            fmse.setdefault(r["method"], {})[r["clip"]] = r["metrics"]["fmse"]
    base = fmse.get("composite", {})
    out = {}
    for method, clips in fmse.items():
        ratios = {c: v / base[c] for c, v in clips.items() if base.get(c)}
        if ratios:
            worst = max(ratios, key=ratios.get)
            out[method] = (sum(harmed(clips[c], base[c]) for c in ratios), worst.split("/")[-1], ratios[worst])
    return out


def tables(result: dict, label=str) -> list[str]:
    """One table per test set (real video, synthetic, composites): means over clips, plus ratios to the composite
    and, where there is a ground truth, the clips made worse (`harm`)."""
    lines = []
    for name, summary in result["summary"].items():
        methods = summary["methods"]
        present = [k for k in METRICS if any(row.get(k) is not None for row in methods.values())]
        base = methods.get("composite", {})
        ratios = [k for k in ("fmse", "tl") if k in present and base.get(k)]
        harm_rows = harm(result, name) if "fmse" in ratios else {}
        header = present + [f"{k} / composite" for k in ratios] + ([HARMED_COLUMN, "worst clip"] if harm_rows else [])
        lines += [f"**{name}** ({summary['clips']} clips, means over clips)", "",
                  "| method | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
        for method, row in methods.items():
            cells = [f"{row[k]:.4g}" if row.get(k) is not None else "" for k in present]
            cells += [f"{row[k] / base[k]:.3f}" if row.get(k) is not None else "" for k in ratios]
            if harm_rows:
                n, worst, r = harm_rows.get(method, (0, "", 0.0))
                cells += [f"{n} / {summary['clips']}", f"{worst} ({r:.2f}×)" if worst else ""]
            lines.append(f"| {label(method)} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def update_section(path: Path, key: str, heading: str, note: str, result: dict, label=str) -> None:
    replace_block(path, key, heading, [note, "", *tables(result, label)])


def replace_block(path: Path, key: str, heading: str, lines: list[str]) -> None:
    """Puts `lines` between the section's markers (a new section `heading` at the end if there are none)."""
    begin, end = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
    block = "\n".join([begin, *lines, end])
    text = path.read_text() if path.exists() else "# Results\n"
    if begin in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + f"\n\n## {heading}\n\n" + block + "\n"
    path.write_text(text)
    print(f"wrote {path} ({key})")
