"""`vharm evaluate`: the metrics of docs/metrics.md on one clip (`evaluate_clip`), or on every clip of a
`vharm make-testset` test set for several methods (`evaluate_testset`), cached per (method, clip) so an
interrupted run resumes.

Metrics per clip, averaged over its frames (the report then averages over clips): `mse`, `fmse`, `psnr`,
`fpsnr` against the ground truth; `tl`, CO2Net's TL with DIS flow estimated on the reference frames (the
ground truth, or the composite where there is none) and `tl_floor`, the reference's own TL; `lt2`, the
paper's L_T with that flow; `lt1`, the paper's L_T with the exact flow of a synthetic pair. Every output is
rounded to 8 bits first, as a written video would be.
"""

from __future__ import annotations

import datetime
import hashlib
import itertools
import json
import math
import re
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from vharm.data.flow import estimate_flow
from vharm.errors import VharmError
from vharm.eval import metrics, report
from vharm.eval.clips import Clip, load_clip, reference_flows
from vharm.eval.methods import Composite, Method, Model, parse_method
from vharm.eval.pictures import heat_map, show_frame, write_jpeg
from vharm.eval.testset import SETS, load_manifest
from vharm.inference.harmonizer import Harmonizer, to_tensor
from vharm.io.files import atomic_path
from vharm.io.masks import MASK_EPS, MaskSource
from vharm.io.video import FrameSource

CACHE_VERSION = 1  # bump when a metric's computation changes, so old cache entries are recomputed
LUMA = np.float32([0.299, 0.587, 0.114])


def _t(rgb: np.ndarray) -> torch.Tensor:
    return to_tensor(np.ascontiguousarray(rgb))


def fg_brightness(rgb: np.ndarray, mask: np.ndarray) -> float:
    """Mask-weighted mean luma (0-255) of the foreground; NaN for an empty mask.

    Example:
        >>> fg_brightness(np.full((2, 2, 3), 100, np.uint8), np.ones((2, 2), np.float32))
        100.0
    """
    w = mask.sum()
    return float((rgb.astype(np.float32) @ LUMA * mask).sum() / w) if w > MASK_EPS else math.nan


class ClipScorer:
    """Per-frame metrics of one clip, fed frame by frame in order (holds only the previous frame).

    Args:
        has_target: the reference frames are ground truth (MSE, fMSE, PSNR, fPSNR are defined); otherwise
            they are the composite, and only the temporal metrics are.

    Example:
        >>> frame, mask = np.full((4, 4, 3), 128, np.uint8), np.ones((4, 4), np.float32)
        >>> scorer = ClipScorer(has_target=True)
        >>> scorer.add(frame + 2, frame, mask)  # 2 levels off everywhere
        >>> {k: round(v, 2) for k, v in scorer.result().items()}
        {'mse': 4.0, 'fmse': 4.0, 'psnr': 42.11, 'fpsnr': 42.11}
    """

    def __init__(self, has_target: bool):
        self.has_target = has_target
        self.values: dict[str, list[float]] = {k: [] for k in metrics.METRICS}
        self.brightness: list[float] = []
        self._prev = None

    def add(self, pred: np.ndarray, ref: np.ndarray, mask: np.ndarray, flow: np.ndarray | None = None,
            exact_flow: np.ndarray | None = None) -> None:
        """Scores one frame.

        Args:
            pred: the method's frame, uint8 (H, W, 3).
            ref: the ground truth (or the composite), uint8 (H, W, 3).
            mask: the true foreground, float32 (H, W) in [0, 1].
            flow: (2, H, W) estimated on the references from this frame back to the previous one; None at
                the first frame.
            exact_flow: the same from a synthetic pair's exact motion, if known.
        """
        p, r, m = _t(pred), _t(ref), torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
        v = self.values
        # The foreground metrics of an empty foreground are undefined, not 0: such frames are left out.
        has_fg = mask.max() > MASK_EPS
        if self.has_target:
            err = metrics.mse(p, r)
            v["mse"].append(float(err))
            v["psnr"].append(float(metrics.psnr(err)))
            if has_fg:
                ferr = metrics.fmse(p, r, m)
                v["fmse"].append(float(ferr))
                v["fpsnr"].append(float(metrics.psnr(ferr)))
        if self._prev is not None and flow is not None and has_fg:
            pp, pr, pm = self._prev
            f = torch.from_numpy(flow)[None]
            v["tl"].append(float(metrics.co2net_tl(p, pp, r, pr, m, pm, f)))
            v["tl_floor"].append(float(metrics.co2net_tl(r, pr, r, pr, m, pm, f)))
            v["lt2"].append(float(metrics.temporal_lt(p, pp, f, m)))
        if self._prev is not None and exact_flow is not None and has_fg:
            v["lt1"].append(float(metrics.temporal_lt(p, self._prev[0], torch.from_numpy(exact_flow)[None], m)))
        self.brightness.append(fg_brightness(pred, mask))
        self._prev = (p, r, m)

    def result(self) -> dict[str, float]:
        """Each metric averaged over the frames it is defined on (metrics defined on none are left out)."""
        return {k: metrics.mean(vals) for k, vals in self.values.items() if vals}


def _with(stem: Path, suffix: str) -> Path:
    """`stem` + `suffix` (unlike Path.with_suffix, keeps a dot that is part of a clip's name)."""
    return stem.parent / (stem.name + suffix)


def score(method: Method, clip: Clip, flows: list[np.ndarray], image_stem: Path) -> dict:
    """Runs `method` on `clip` and scores it; writes its picture and heat map to `image_stem`.{jpg,heat.jpg}."""
    scorer = ClipScorer(has_target=clip.target is not None)
    ref, shown = clip.reference, show_frame(clip)
    count = 0
    for t, pred in enumerate(method.predict(clip.comp, clip.mask)):
        scorer.add(pred, ref[t], clip.mask[t], flows[t - 1] if t else None,
                   clip.exact_flow[t - 1] if t and clip.exact_flow is not None else None)
        if t == shown:
            write_jpeg(_with(image_stem, ".jpg"), pred)
            write_jpeg(_with(image_stem, ".heat.jpg"), heat_map(pred, ref[t]))
        count += 1
    if count != len(clip.comp):
        raise VharmError(f"{method.name}: {count} frames out for {len(clip.comp)} in ({clip.id})")
    return {"clip": clip.id, "kind": clip.kind, "family": clip.family, "method": method.name, "frames": count,
            "metrics": scorer.result(), "brightness": scorer.brightness}


# ---------------------------------------------------------------------------------------------- real clips


def _clip_fmse(method: Method, clip: Clip) -> float:
    """The clip's mean fMSE for `method` (true masks)."""
    scorer = ClipScorer(has_target=True)
    for t, pred in enumerate(method.predict(clip.comp, clip.mask)):
        scorer.add(pred, clip.target[t], clip.mask[t])
    return scorer.result()["fmse"]


def composite_fmse(clips: list[Clip]) -> list[float]:
    """The composite's mean fMSE per clip: what `score_real` compares with (computed once per training run)."""
    return [_clip_fmse(Composite(), clip) for clip in clips]


def score_real(harmonizer: Harmonizer, clips: list[Clip], comp_fmse: list[float] | None = None,
               mask_mode: str = "true") -> dict[str, float]:
    """The report's real-clip numbers of `harmonizer`, without pictures or temporal metrics.

    Args:
        comp_fmse: `composite_fmse(clips)`, computed here when None.
        mask_mode: the mask it harmonizes with (`Model`'s: "true", "nomask", ...); the metrics use the true mask.

    Returns:
        fmse / comp_fmse: mean over clips of the clip's mean fMSE, for the model and the composite; ratio:
        their quotient; harmed: the number of clips `metrics.harmed` by it, of `clips`.
    """
    model = Model("model", Path("."), harmonizer, mask_mode)
    ours = [_clip_fmse(model, clip) for clip in clips]
    theirs = composite_fmse(clips) if comp_fmse is None else comp_fmse
    fmse, comp = float(np.mean(ours)), float(np.mean(theirs))
    return {"fmse": fmse, "comp_fmse": comp, "ratio": fmse / comp,
            "harmed": sum(metrics.harmed(a, b) for a, b in zip(ours, theirs)), "clips": len(clips)}


# ---------------------------------------------------------------------------------------------- test sets


def _safe_name(name: str) -> str:
    """A folder name for a method: readable, and distinct for names that only differ in unsafe characters.

    Example:
        >>> _safe_name("reinhard-clip"), _safe_name("default:smooth=0.5")
        ('reinhard-clip', 'default_smooth=0.5-31873d67')
    """
    safe = re.sub(r"[^A-Za-z0-9._=-]+", "_", name).strip("._") or "method"
    return safe if safe == name else f"{safe}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def _clip_fingerprint(testset: Path, clip: Clip) -> str:
    """Changes when the clip is rebuilt (its clip.json records the seed-drawn parameters) or resized."""
    text = (Path(testset) / clip.id / "clip.json").read_text()
    return hashlib.sha1(f"{text}|{len(clip.comp)}|{clip.comp[0].shape}".encode()).hexdigest()


def _read_cache(path: Path, key: dict) -> dict | None:
    try:
        entry = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if entry.get("key") != key:
        return None
    stem = path.parent / path.name.removesuffix(".json")
    if not (_with(stem, ".jpg").is_file() and _with(stem, ".heat.jpg").is_file()):
        return None
    return entry.get("result")


def _nan_to_none(value):
    """JSON has no NaN: undefined values are written as null.

    Example:
        >>> _nan_to_none({"fmse": float("nan"), "brightness": [1.5, float("nan")]})
        {'fmse': None, 'brightness': [1.5, None]}
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


def evaluate_testset(testset: Path, specs: list[str], report_dir: Path, *, device: str = "cpu",
                     sets: list[str] | None = None, max_clips: int | None = None, fresh: bool = False,
                     progress: bool = False, command: str | None = None) -> dict:
    """Scores every method on every clip of a test set and writes the report (results.json/.csv, report.html).

    Args:
        testset: a `vharm make-testset` directory.
        specs: method names (see `vharm.eval.methods.parse_method`); `composite` is added first if missing.
        report_dir: where the report and the cache (`cache/<method>/<clip>.json`) go.
        device: torch device of the model methods.
        sets: only clips of these sets (default: all).
        max_clips: at most this many clips per set (the manifest's first ones).
        fresh: ignore cached scores (they are overwritten).
        progress: show a progress bar.
        command: the command line that ran this, recorded in the results.

    Returns:
        The results as written to results.json.
    """
    testset, report_dir = Path(testset), Path(report_dir)
    manifest = load_manifest(testset)
    specs = list(dict.fromkeys(["composite", *specs]))  # the baseline first, each method once
    methods = [parse_method(s, device) for s in specs]
    chosen = set(sets or SETS)
    entries = [e for e in manifest["clips"] if e["kind"] in chosen]
    if max_clips is not None:
        entries = [e for kind in SETS for e in [x for x in entries if x["kind"] == kind][:max_clips]]
    if not entries:
        raise VharmError(f"{testset / 'manifest.json'}: no clips of the sets {', '.join(sorted(chosen))}")
    report_dir.mkdir(parents=True, exist_ok=True)
    cache = report_dir / "cache"
    fingerprints = [m.fingerprint() for m in methods]
    records, clips = [], {}
    computed = 0
    with tqdm(total=len(entries) * len(methods), unit="clip", disable=not progress, dynamic_ncols=True) as bar:
        for entry in entries:
            clip = load_clip(testset, entry)
            clip_key = _clip_fingerprint(testset, clip)
            flows = None
            for method, fingerprint in zip(methods, fingerprints):
                bar.set_postfix_str(f"{clip.id} {method.name}", refresh=False)
                stem = cache / _safe_name(method.name) / clip.id
                key = {"version": CACHE_VERSION, "clip": clip_key, "method": fingerprint}
                record = None if fresh else _read_cache(_with(stem, ".json"), key)
                if record is None:
                    flows = flows if flows is not None else reference_flows(clip)
                    record = _nan_to_none(score(method, clip, flows, stem))
                    with atomic_path(_with(stem, ".json")) as tmp:
                        tmp.write_text(json.dumps({"key": key, "result": record}) + "\n")
                    computed += 1
                record["images"] = {k: (stem.relative_to(report_dir)).as_posix() + suffix
                                    for k, suffix in (("pred", ".jpg"), ("heat", ".heat.jpg"))}
                records.append(record)
                bar.update(1)
            clips[clip.id] = _reference_record(clip, report_dir)
    results = {
        "testset": str(testset),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command,
        "methods": specs,
        "manifest": {k: manifest.get(k) for k in ("seed", "test_sequences", "settings")},
        "scored": computed,
        "cached": len(records) - computed,
        "summary": report.summarize(records),
        "clips": clips,
        "records": records,
    }
    report.write_all(report_dir, results)
    return results


def _reference_record(clip: Clip, report_dir: Path) -> dict:
    """The clip's own pictures and brightness curve for the report: the ground truth, when there is one."""
    rec = {"kind": clip.kind, "family": clip.family, "frames": len(clip.comp), "info": clip.info,
           "target_image": None, "target_brightness": None}
    if clip.target is not None:
        path = report_dir / "img" / f"{clip.id}.target.jpg"
        write_jpeg(path, clip.target[show_frame(clip)])
        rec["target_image"] = path.relative_to(report_dir).as_posix()
        rec["target_brightness"] = _nan_to_none([fg_brightness(f, m) for f, m in zip(clip.target, clip.mask)])
    return rec


# ---------------------------------------------------------------------------------------------- one clip


def _resized(path: Path, what: str, size: tuple[int, int], target: FrameSource, resize: bool, warn) -> bool:
    """Whether `what` (frames or masks) of `path`, `size` (w, h), are to be resized to the ground truth's.

    A metric of a resized picture is not the metric of the picture given: another size is refused, unless
    `resize` asks for it (then said in a warning)."""
    if size == target.size:
        return False
    (w, h), (tw, th) = size, target.size
    if not resize:
        raise VharmError(f"{path}: {w}x{h} {what}, but the ground truth {target.path} is {tw}x{th}: give {what} of "
                         "its size, or --resize to resize them to it")
    warn(f"vharm: warning: {path}: {w}x{h} {what} resized to the ground truth's {tw}x{th}")
    return True


def evaluate_clip(pred: Path, target: Path, mask: Path, *, resize: bool = False, warn=None) -> dict:
    """Scores one clip: PRED against TARGET inside MASK (each a video, a folder of frames or one image).

    Frames are compared at the ground truth's resolution: predictions and masks of another size are refused,
    or with `resize` resized to it (with a warning). Masks are read by the rule of vharm.io.masks. Streams, so
    long clips do not fill memory.

    Returns:
        {"frames", "mse", "fmse", "psnr", "fpsnr", "lt2", "tl", "tl_floor"}: per-frame values averaged.
    """
    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    pred_src, target_src = FrameSource(Path(pred)), FrameSource(Path(target))
    for src in (pred_src, target_src):
        if src.count and target_src.count and src.count != target_src.count:
            raise VharmError(f"{src.path}: {src.count} frames, but {target_src.path} has {target_src.count}")
    resize_pred = _resized(Path(pred), "frames", pred_src.size, target_src, resize, warn)
    mask_size = FrameSource(Path(mask), gray=True).size
    resize_mask = _resized(Path(mask), "masks", mask_size, target_src, resize, warn)
    w, h = target_src.size
    masks = MaskSource(Path(mask), target_src, check_size=not resize_mask)
    scorer, prev_target, count = ClipScorer(has_target=True), None, 0
    for p, tm in itertools.zip_longest(pred_src, masks.attach(target_src)):
        if p is None or tm is None:
            raise VharmError(f"{pred if p is None else target}: ends after {count} frames, before the other inputs")
        (t, m), rgb = tm, p.rgb
        if resize_pred:
            rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA if rgb.shape[0] > h else cv2.INTER_LINEAR)
        if m.shape != (h, w):
            m = cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)
        flow = estimate_flow(t.rgb, prev_target) if prev_target is not None else None
        scorer.add(rgb, t.rgb, m, flow)
        prev_target = t.rgb
        count += 1
    return {"frames": count, **_nan_to_none(scorer.result())}
