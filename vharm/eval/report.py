"""The evaluation report: summaries, a plain-text table, results.json, results.csv and report.html.

The HTML is one file with inline SVG charts (no scripts, no network) that refers to the JPEG pictures
vharm.eval.pictures wrote beside it, so the report directory opens in any browser as it is. Labels, formats and
which way is better come from the metric registry (vharm.eval.metrics.METRICS).
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
from pathlib import Path

from vharm.eval.metrics import METRICS
from vharm.io.files import atomic_path

# Which metrics each set has (see vharm.eval.scoring), in table order: keys of METRICS.
KIND_METRICS = {
    "real": ("mse", "fmse", "psnr", "fpsnr", "tl", "tl_floor", "lt2"),
    "mild": ("mse", "fmse", "psnr", "fpsnr", "tl", "tl_floor", "lt2"),
    "synthetic": ("mse", "fmse", "psnr", "fpsnr", "lt1", "lt2", "tl", "tl_floor"),
    "composites": ("tl", "tl_floor", "lt2"),
}
KIND_TITLES = {
    "real": "Real video, recoloured foreground (HYouTube-style, ground truth = the real frames)",
    "mild": "Real video, mildly recoloured foreground (composite fMSE 20-100: do no harm)",
    "synthetic": "Synthetic pairs with exact flow (Dancing-MSCOCO recipe, paper Table I)",
    "composites": "Real composites without ground truth (temporal metrics against the composite only)",
}
# Where there is no ground truth, the reference frames (and so the floor) are the composite's.
KIND_LABELS = {"composites": {"tl_floor": "TL of the composite"}}
# The sets recoloured by one transform per clip, with a family each: they get per-family tables.
FAMILY_SETS = ("real", "mild")
CHARTS = {"real": ("fmse", "fpsnr", "tl"), "mild": ("fmse", "fpsnr", "tl"), "synthetic": ("fmse", "psnr", "lt1"),
          "composites": ("tl", "lt2")}
PIC_WIDTH = 200  # px per picture column of the frames section
GT_COLOR, COMPOSITE_COLOR = "#111111", "#9a9a9a"
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def _fmt(metric: str, value) -> str:
    return "–" if value is None else METRICS[metric].fmt.format(value)


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def summarize(records: list[dict]) -> dict:
    """Means over clips per set and method, and per set, recolouring family and method.

    Returns:
        {kind: {"clips": n, "methods": {method: {metric: mean}}, "families": {family: {method: {metric: mean}}}}}
    """
    out: dict = {}
    for kind, metrics in KIND_METRICS.items():
        recs = [r for r in records if r["kind"] == kind]
        if not recs:
            continue
        methods = list(dict.fromkeys(r["method"] for r in recs))
        families = sorted({r["family"] for r in recs})

        def means(rows):
            return {m: _mean(r["metrics"].get(m) for r in rows) for m in metrics}

        out[kind] = {
            "clips": len({r["clip"] for r in recs}),
            "methods": {m: means([r for r in recs if r["method"] == m]) for m in methods},
            "families": {f: {m: means([r for r in recs if r["method"] == m and r["family"] == f]) for m in methods}
                         for f in families},
        }
    return out


# ---------------------------------------------------------------------------------------------- text


def _text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


def format_tables(results: dict) -> str:
    """The plain-text tables `vharm evaluate` prints: per set the means, the real set per family, each clip."""
    parts = []
    for kind, summary in results["summary"].items():
        metrics = KIND_METRICS[kind]
        parts.append(f"== {kind}: {summary['clips']} clip(s), mean over clips ==")
        parts.append(_text_table(["method", *metrics],
                                 [[m, *(_fmt(k, v[k]) for k in metrics)] for m, v in summary["methods"].items()]))
        if kind in FAMILY_SETS:
            fams = summary["families"]
            methods = list(summary["methods"])
            parts.append(f"\n-- {kind}: fMSE per recolouring family --")
            parts.append(_text_table(["family", *methods],
                                     [[f, *(_fmt("fmse", fams[f][m]["fmse"]) for m in methods)] for f in fams]))
        parts.append(f"\n-- {kind}: per clip --")
        recs = [r for r in results["records"] if r["kind"] == kind]
        parts.append(_text_table(["clip", "method", *metrics],
                                 [[r["clip"], r["method"], *(_fmt(k, r["metrics"].get(k)) for k in metrics)]
                                  for r in recs]))
        parts.append("")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------- files


def write_csv(path: Path, results: dict) -> None:
    """One row per (clip, method), then the means per set and method and per set, family and method."""
    columns = ["scope", "kind", "family", "clip", "method", "frames",
               *dict.fromkeys(m for ms in KIND_METRICS.values() for m in ms)]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, lineterminator="\n")
    writer.writeheader()
    for r in results["records"]:
        writer.writerow({"scope": "clip", "kind": r["kind"], "family": r["family"], "clip": r["clip"],
                         "method": r["method"], "frames": r["frames"], **r["metrics"]})
    for kind, summary in results["summary"].items():
        for method, values in summary["methods"].items():
            writer.writerow({"scope": "mean", "kind": kind, "method": method, **_defined(values)})
        for family, per_method in summary["families"].items():
            for method, values in per_method.items():
                writer.writerow({"scope": "family-mean", "kind": kind, "family": family, "method": method,
                                 **_defined(values)})
    _write_text(path, buf.getvalue())


def _defined(values: dict) -> dict:
    return {k: v for k, v in values.items() if v is not None}


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_all(report_dir: Path, results: dict) -> dict[str, Path]:
    """Writes results.json, results.csv and report.html into `report_dir`; returns their paths."""
    paths = {"json": report_dir / "results.json", "csv": report_dir / "results.csv",
             "html": report_dir / "report.html"}
    _write_text(paths["json"], json.dumps(results, indent=1) + "\n")
    write_csv(paths["csv"], results)
    _write_text(paths["html"], render_html(results))
    return paths


# ---------------------------------------------------------------------------------------------- SVG


def _colors(methods: list[str]) -> dict[str, str]:
    others = iter(PALETTE * (1 + len(methods) // len(PALETTE)))
    return {m: COMPOSITE_COLOR if m == "composite" else next(others) for m in methods}


def _esc(text) -> str:
    return html.escape(str(text), quote=True)


def bar_chart(title: str, groups: list[tuple[str, list[tuple[str, float | None]]]], colors: dict[str, str],
              fmt: str = "{:.2f}", reference: tuple[str, float] | None = None, width: int = 300) -> str:
    """Horizontal bars, one per (group, method); `reference` draws a labelled dashed line (e.g. TL's floor).

    `width` is the plot's, beside the labels (which take what the longest method name needs)."""
    names = [m for _, bars in groups for m, _ in bars]
    label_w = max(80, round(6.4 * max(map(len, names), default=0)) + 12)  # ~6.4 px per 11 px character
    width += label_w
    row_h, gap, top = 18, 8, 26
    values = [v for _, bars in groups for _, v in bars if v is not None]
    if reference is not None:
        values.append(reference[1])
    vmax = max(values, default=1.0) or 1.0
    plot_w = width - label_w - 60
    rows = sum(len(bars) for _, bars in groups) + sum(1 for g, _ in groups if g)
    height = top + rows * row_h + gap * len(groups) + (16 if reference else 4)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="chart">',
           f'<text x="4" y="16" class="title">{_esc(title)}</text>']
    y = top
    for group, bars in groups:
        if group:
            out.append(f'<text x="4" y="{y + 13}" class="group">{_esc(group)}</text>')
            y += row_h
        for method, value in bars:
            out.append(f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end">{_esc(method)}</text>')
            if value is not None:
                w = max(1.0, plot_w * value / vmax)
                out.append(f'<rect x="{label_w}" y="{y + 2}" width="{w:.1f}" height="{row_h - 4}" '
                           f'fill="{colors.get(method, "#555")}"/>')
                out.append(f'<text x="{label_w + w + 4:.1f}" y="{y + 13}">{_esc(fmt.format(value))}</text>')
            y += row_h
        y += gap
    if reference is not None:
        x = label_w + plot_w * reference[1] / vmax
        out.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{y - gap + 2}" class="ref"/>')
        out.append(f'<text x="{x:.1f}" y="{y + 8}" class="reflabel" text-anchor="middle">'
                   f'{_esc(reference[0])} {_esc(fmt.format(reference[1]))}</text>')
    out.append("</svg>")
    return "".join(out)


def line_chart(title: str, series: list[tuple[str, str, list]], width: int = 440, height: int = 170) -> str:
    """Lines over frame index (None values are gaps): the foreground-brightness-per-frame plot."""
    left, right, top, bottom = 40, 10, 22, 22
    values = [v for _, _, vals in series for v in vals if v is not None]
    if not values:
        return ""
    lo, hi = min(values), max(values)
    if hi - lo < 1:  # keep a flat line flat instead of magnifying rounding noise
        lo, hi = lo - 0.5, hi + 0.5
    n = max(len(vals) for _, _, vals in series)
    pw, ph = width - left - right, height - top - bottom

    def sx(i):
        return left + pw * i / max(n - 1, 1)

    def sy(v):
        return top + ph * (1 - (v - lo) / (hi - lo))

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="chart">',
           f'<text x="4" y="14" class="title">{_esc(title)}</text>',
           f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="frame"/>',
           f'<text x="{left - 4}" y="{top + 8}" text-anchor="end">{hi:.0f}</text>',
           f'<text x="{left - 4}" y="{top + ph}" text-anchor="end">{lo:.0f}</text>',
           f'<text x="{left}" y="{height - 6}">frame 0</text>',
           f'<text x="{left + pw}" y="{height - 6}" text-anchor="end">{n - 1}</text>']
    for label, color, vals in series:
        segments, current = [], []
        for i, v in enumerate(vals):
            if v is None:
                segments, current = segments + [current] if current else segments, []
            else:
                current.append(f"{sx(i):.1f},{sy(v):.1f}")
        segments += [current] if current else []
        dash = ' stroke-dasharray="4 3"' if label == "ground truth" else ""
        for seg in segments:
            out.append(f'<polyline points="{" ".join(seg)}" fill="none" stroke="{color}" stroke-width="1.6"{dash}>'
                       f'<title>{_esc(label)}</title></polyline>')
    out.append("</svg>")
    return "".join(out)


# ---------------------------------------------------------------------------------------------- HTML

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; max-width: 1500px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 36px; border-bottom: 1px solid #ccc; }
h3 { font-size: 15px; margin-top: 22px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { padding: 3px 9px; text-align: right; border-bottom: 1px solid #e4e4e4; }
th:first-child, td:first-child, td.clip, th.label { text-align: left; }
td.best { font-weight: bold; background: #eef6ee; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; }
svg.chart { font-size: 11px; background: #fafafa; border: 1px solid #eee; }
svg .title { font-weight: bold; font-size: 12px; } svg .group { font-style: italic; }
svg .ref { stroke: #000; stroke-dasharray: 5 3; } svg .frame { fill: none; stroke: #ccc; }
.clip { margin: 18px 0 28px; } .row { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
.pics { display: grid; gap: 4px 6px; overflow-x: auto; max-width: 100%; }
figure { margin: 0; } figure img { display: block; width: 100%; }
figcaption { font-size: 12px; color: #444; }
.legend span { display: inline-block; margin-right: 12px; } .legend i { display: inline-block; width: 14px;
  height: 4px; margin-right: 4px; vertical-align: middle; }
.note { color: #555; font-size: 13px; }
"""


def _html_table(header: list[str], rows: list[tuple[list[str], list]], metrics: list[str],
                grouped: bool = False) -> str:
    """Rows of (label cells, metric values); the best value of each ranked metric column is highlighted,
    among rows with the same first label if `grouped` (the methods of one clip or family)."""
    best = {}
    for group in {labels[0] if grouped else "" for labels, _ in rows}:
        members = [vals for labels, vals in rows if not grouped or labels[0] == group]
        for j, m in enumerate(metrics):
            vals = [v[j] for v in members if v[j] is not None]
            if vals and METRICS[m].ranked and len(members) > 1:
                best[group, j] = max(vals) if METRICS[m].higher_is_better else min(vals)
    n_labels = len(rows[0][0]) if rows else 1  # label columns are left-aligned, headers with them
    out = ["<table><tr>", *(f'<th{" class=label" if i < n_labels else ""}>{_esc(h)}</th>'
                            for i, h in enumerate(header)), "</tr>"]
    for labels, vals in rows:
        group = labels[0] if grouped else ""
        cells = [f'<td class="clip">{_esc(c)}</td>' for c in labels]
        for j, v in enumerate(vals):
            mark = " class=best" if v is not None and best.get((group, j)) == v else ""
            cells.append(f"<td{mark}>{_esc(_fmt(metrics[j], v))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _kind_section(kind: str, results: dict, colors: dict[str, str]) -> str:
    summary = results["summary"][kind]
    metrics = list(KIND_METRICS[kind])
    methods = list(summary["methods"])
    labels = {**{k: m.label for k, m in METRICS.items()}, **KIND_LABELS.get(kind, {})}
    out = [f"<h2>{_esc(KIND_TITLES[kind])}: {summary['clips']} clip(s)</h2>",
           "<h3>Mean over clips</h3>",
           _html_table(["method", *(labels[m] for m in metrics)],
                       [([m], [summary["methods"][m][k] for k in metrics]) for m in methods], metrics)]
    charts = []
    for metric in CHARTS[kind]:
        floor = None
        if metric == "tl":
            floor_value = summary["methods"][methods[0]].get("tl_floor")
            floor = ("floor" if kind != "composites" else "composite", floor_value) if floor_value is not None else None
        bars = [(m, summary["methods"][m][metric]) for m in methods]
        spec = METRICS[metric]
        charts.append(bar_chart(f"{spec.label} ({'higher' if spec.higher_is_better else 'lower'} is better)",
                                [("", bars)], colors, spec.fmt, floor))
    if kind in FAMILY_SETS:
        fams = summary["families"]
        charts.append(bar_chart("fMSE per recolouring family", [(f, [(m, fams[f][m]["fmse"]) for m in methods])
                                                                 for f in fams], colors, METRICS["fmse"].fmt))
    out.append(f'<div class="charts">{"".join(charts)}</div>')
    if kind in FAMILY_SETS:
        out.append("<h3>Per recolouring family (mean over clips)</h3>")
        out.append(_html_table(["family", "method", *(labels[m] for m in metrics)],
                               [([f, m], [fams[f][m][k] for k in metrics]) for f in fams for m in methods], metrics,
                               grouped=True))
    records = [r for r in results["records"] if r["kind"] == kind]
    out.append("<h3>Per clip</h3>")
    out.append(_html_table(["clip", "family", "method", *(labels[m] for m in metrics)],
                           [([r["clip"], r["family"], r["method"]], [r["metrics"].get(k) for k in metrics])
                            for r in records], metrics, grouped=True))
    out.append(_frames_section(kind, results, records, methods, colors))
    return "".join(out)


def _frames_section(kind: str, results: dict, records: list[dict], methods: list[str], colors: dict) -> str:
    """Per clip: the middle frame of the composite, each method and the ground truth; heat maps of each
    one's error; the foreground's mean brightness per frame."""
    what = "|output − ground truth|" if kind != "composites" else "|output − composite| (the change made)"
    key = "fmse" if kind != "composites" else "tl"
    out = [f'<h3>Frames</h3><p class="note">Top: the middle frame. Bottom: {_esc(what)}, mean over channels, '
           "black = 0, yellow ≥ 40 levels. Plot: mean foreground brightness (luma, 0–255) per frame; "
           "flicker shows as jitter.</p>"]
    legend = "".join(f'<span><i style="background:{colors[m]}"></i>{_esc(m)}</span>' for m in methods)
    if kind != "composites":
        legend += f'<span><i style="background:{GT_COLOR}"></i>ground truth (dashed)</span>'
    out.append(f'<p class="legend">{legend}</p>')
    by_clip: dict[str, list[dict]] = {}
    for r in records:
        by_clip.setdefault(r["clip"], []).append(r)
    # 2-frame synthetic pairs are many and show no temporal behaviour: fold them away by default.
    out.append("<details>" if kind == "synthetic" else "<details open>")
    out.append(f"<summary>{len(by_clip)} clip(s)</summary>")
    for clip_id, recs in by_clip.items():
        ref = results["clips"][clip_id]
        info = ref["info"]
        source = info.get("source") or f"{info.get('foreground')} on {info.get('background')}"
        top, bottom = [], []
        columns = len(recs) + (1 if ref["target_image"] else 0)
        for r in recs:
            caption = f"{r['method']} · {METRICS[key].label} {_fmt(key, r['metrics'].get(key))}"
            top.append(f'<figure><img loading="lazy" src="{_esc(r["images"]["pred"])}" alt="{_esc(r["method"])}">'
                       f"<figcaption>{_esc(caption)}</figcaption></figure>")
            bottom.append(f'<figure><img loading="lazy" src="{_esc(r["images"]["heat"])}" '
                          f'alt="{_esc(r["method"])} error"></figure>')
        if ref["target_image"]:
            top.append(f'<figure><img loading="lazy" src="{_esc(ref["target_image"])}" alt="ground truth">'
                       "<figcaption>ground truth</figcaption></figure>")
            bottom.append("<div></div>")
        series = [(r["method"], colors[r["method"]], r["brightness"]) for r in recs]
        if ref["target_brightness"]:
            series.append(("ground truth", GT_COLOR, ref["target_brightness"]))
        plot = line_chart("foreground brightness per frame", series) if ref["frames"] > 2 else ""
        out.append(f'<div class="clip"><b>{_esc(clip_id)}</b> — {_esc(ref["family"])}, {_esc(source)}, '
                   f'{ref["frames"]} frames<div class="row"><div class="pics" style="grid-template-columns: '
                   f'repeat({columns}, {PIC_WIDTH}px)">{"".join(top + bottom)}</div>{plot}</div></div>')
    out.append("</details>")
    return "".join(out)


def render_html(results: dict) -> str:
    """The whole report as one HTML page."""
    methods = list(dict.fromkeys(r["method"] for r in results["records"]))
    colors = _colors(methods)
    head = (f"<p>Test set <code>{_esc(results['testset'])}</code> (seed {_esc(results['manifest'].get('seed'))}); "
            f"methods: {_esc(', '.join(methods))}; {_esc(results['date'])}"
            f"{'; command: <code>' + _esc(results['command']) + '</code>' if results.get('command') else ''}.</p>"
            '<p class="note">Metrics as in docs/metrics.md of vharm: MSE/fMSE/PSNR/fPSNR on 0–255 per frame, '
            "averaged over frames then clips; TL = CO2Net's temporal loss with DIS flow on the ground truth (on the "
            "composite where there is none), its floor = the ground truth's own TL; L_T1/L_T2 = the paper's temporal "
            "loss with exact/estimated flow on [0, 1] colours. TL and L_T grow with the foreground's contrast: a "
            "method that flattens the foreground's colours lowers them without being steadier, so read them beside "
            "the floor and the fMSE.</p>")
    body = "".join(_kind_section(k, results, colors) for k in results["summary"])
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>vharm evaluation</title>'
            f"<style>{CSS}</style></head><body><h1>vharm evaluation</h1>{head}{body}</body></html>\n")
