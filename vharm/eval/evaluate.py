"""`vharm evaluate`: the metrics of ../shared/reference/METRICS.md on one clip, or on every clip of a
`vharm make-testset` test set for several methods, cached per (method, clip) so an interrupted run resumes.

Methods (`parse_method`):
- `composite`: the cut-and-paste input itself (always evaluated: a number means little without it);
- `reinhard-frame` / `reinhard-clip`: Lab mean/std transfer of the foreground toward the background
  (Reinhard et al. 2001) with statistics per frame / pooled over the clip;
- `default`, another shipped weights name, a weights directory or a run directory, run through
  `Harmonizer.harmonize_frame` (the video path of `vharm harmonize`) frame by frame with a fresh state per
  clip, with the suffixes `:nomask` (mask-free, paper Table IV: D's disharmony map
  instead of the mask, as `vharm harmonize --no-mask`), `:zeros` / `:ones` (an all-zero /
  all-one mask, Table IV), `:smooth=A` (inference-time temporal smoothing of the colour transform) and
  `:gate=MIN,FULL` (the do-no-harm gate of `pipeline.gate_change`, in levels; `0,0` = off), e.g.
  `runs/00000-cpu:nomask` or `default:smooth=0.8`. Options not given take the weights' own settings (the
  "inference" section of their config.json), as `vharm harmonize` does.

Metrics per clip, averaged over its frames (the report then averages over clips): `mse`, `fmse`, `psnr`,
`fpsnr` against the ground truth; `tl`, CO2Net's TL with DIS flow estimated on the reference frames (the
ground truth, or the composite where there is none) and `tl_floor`, the reference's own TL; `lt2`, the
paper's L_T with that flow; `lt1`, the paper's L_T with the exact flow of a synthetic pair. Every output is
rounded to 8 bits first, as a written video would be.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import itertools
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from vharm.eval import metrics, report
from vharm.config import InferenceConfig, validate_inference
from vharm.data.flow import estimate_flow
from vharm.errors import VharmError
from vharm.io.files import atomic_path
from vharm.io.images import list_frames, read_image
from vharm.io.masks import mask_from_pixels as mask_from_array, read_mask
from vharm.inference.harmonizer import DEFAULT_WEIGHTS, MASK_EPS, WEIGHTS_DIR, Harmonizer, resolve_weights, to_tensor
from vharm.eval.testset import SETS, load_manifest
from vharm.io.video import FrameSource

METRIC_KEYS = ("mse", "fmse", "psnr", "fpsnr", "tl", "tl_floor", "lt1", "lt2")
CACHE_VERSION = 1  # bump when a metric's computation changes, so old cache entries are recomputed
THUMB_WIDTH = 320
HEAT_MAX = 40.0  # |error| (0-255, mean over channels) shown at full heat; the same scale for every method
LUMA = np.float32([0.299, 0.587, 0.114])


def _t(rgb: np.ndarray) -> torch.Tensor:
    return to_tensor(np.ascontiguousarray(rgb))


def fg_brightness(rgb: np.ndarray, mask: np.ndarray) -> float:
    """Mask-weighted mean luma (0-255) of the foreground; NaN for an empty mask."""
    w = mask.sum()
    return float((rgb.astype(np.float32) @ LUMA * mask).sum() / w) if w > MASK_EPS else math.nan


class ClipScorer:
    """Per-frame metrics of one clip, fed frame by frame in order (holds only the previous frame).

    Args:
        has_target: the reference frames are ground truth (MSE, fMSE, PSNR, fPSNR are defined); otherwise
            they are the composite, and only the temporal metrics are.
    """

    def __init__(self, has_target: bool):
        self.has_target = has_target
        self.values: dict[str, list[float]] = {k: [] for k in METRIC_KEYS}
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


# ---------------------------------------------------------------------------------------------- methods


class Method:
    """Turns a clip's composite frames into predictions; `fingerprint` changes whenever its output would."""

    name: str

    def fingerprint(self) -> dict:
        """What the cached scores depend on, besides the clip."""
        return {"method": self.name}

    def predict(self, comps: list[np.ndarray], masks: list[np.ndarray]):
        """Yields the uint8 (H, W, 3) prediction of each frame in order."""
        raise NotImplementedError


class Composite(Method):
    """Cut-and-paste: the composite itself."""

    name = "composite"

    def predict(self, comps, masks):
        yield from comps


def _lab(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb.astype(np.float32) / 255, cv2.COLOR_RGB2Lab)


def _moments(lab: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """(3, 3): weight sum, weighted sum and weighted sum of squares per Lab channel (float64, poolable)."""
    w = weight.astype(np.float64)[..., None]
    x = lab.astype(np.float64)
    return np.stack([np.broadcast_to(w.sum(), (3,)), (w * x).sum((0, 1)), (w * x * x).sum((0, 1))])


def _mean_std(mom: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = np.maximum(mom[0], 1e-8)
    mean = mom[1] / n
    return mean, np.sqrt(np.maximum(mom[2] / n - mean ** 2, 0))


class Reinhard(Method):
    """Reinhard et al. 2001 colour transfer of the foreground toward the background, in Lab (OpenCV).

    Args:
        pooled: False = statistics of each frame (`reinhard-frame`); True = foreground and background
            statistics pooled over the whole clip, one transfer for every frame (`reinhard-clip`).
    """

    def __init__(self, pooled: bool):
        self.pooled = pooled
        self.name = "reinhard-clip" if pooled else "reinhard-frame"

    def predict(self, comps, masks):
        labs = [_lab(c) for c in comps]
        fg = [_moments(lab, m) for lab, m in zip(labs, masks)]
        bg = [_moments(lab, 1 - m) for lab, m in zip(labs, masks)]
        if self.pooled:
            fg = [sum(fg)] * len(comps)
            bg = [sum(bg)] * len(comps)
        for comp, lab, m, f, b in zip(comps, labs, masks, fg, bg):
            if f[0, 0] <= MASK_EPS or b[0, 0] <= MASK_EPS:  # nothing to transfer from or to
                yield comp
                continue
            (mf, sf), (mb, sb) = _mean_std(f), _mean_std(b)
            out = ((lab - mf) * ((sb + 1e-3) / (sf + 1e-3)) + mb).astype(np.float32)
            rgb = np.clip(cv2.cvtColor(out, cv2.COLOR_Lab2RGB), 0, 1) * 255
            blended = m[..., None] * rgb + (1 - m[..., None]) * comp
            yield np.round(blended).clip(0, 255).astype(np.uint8)


MASK_MODES = ("nomask", "zeros", "ones")  # paper Table IV: D's map, an all-zero and an all-one mask


class Model(Method):
    """Trained weights through `Harmonizer.harmonize_frame` (what `vharm harmonize` runs), frame by frame,
    with a fresh `state` per clip.

    Args:
        name: the method as the user wrote it (the report's label).
        weights: the resolved weights directory.
        harmonizer: loaded from `weights`.
        mask_mode: "true" (the clip's mask), "nomask" (D's disharmony map), "zeros" or "ones" (a constant mask).
            The metrics always use the true mask.
    """

    def __init__(self, name: str, weights: Path, harmonizer: Harmonizer, mask_mode: str = "true"):
        self.name, self.weights, self.harmonizer, self.mask_mode = name, weights, harmonizer, mask_mode

    def fingerprint(self) -> dict:
        files = {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(self.weights.iterdir())
                 if p.is_file()}
        return {"method": self.name, "weights": str(self.weights.resolve()), "files": files,
                "mask": self.mask_mode, "smoothing": self.harmonizer.temporal_smoothing,
                "gate": [self.harmonizer.min_change, self.harmonizer.full_change]}

    def predict(self, comps, masks):
        state: dict = {}
        for comp, m in zip(comps, masks):
            if self.mask_mode in ("zeros", "ones"):
                m = np.full(m.shape, float(self.mask_mode == "ones"), np.float32)
            m = None if self.mask_mode == "nomask" else np.ascontiguousarray(m, dtype=np.float32)
            yield self.harmonizer.harmonize_frame(np.ascontiguousarray(comp), m, state)[0]


def parse_method(spec: str, device: str = "cpu") -> Method:
    """A method from its name: see the module docstring; weights are loaded here, so errors come first."""
    if spec == "composite":
        return Composite()
    if spec in ("reinhard-frame", "reinhard-clip"):
        return Reinhard(pooled=spec == "reinhard-clip")
    weights, mask_mode, options = spec, "true", {}
    while True:
        head, sep, option = weights.rpartition(":")
        if not sep or option not in MASK_MODES and not option.startswith(("smooth=", "gate=")):
            break
        if option in MASK_MODES:
            mask_mode = option
        elif option.startswith("smooth="):
            try:
                options["temporal_smoothing"] = float(option.removeprefix("smooth="))
            except ValueError:
                raise VharmError(f"--method {spec}: {option!r} is not smooth=A with a number A in [0, 1)") from None
        else:
            try:
                options["min_change"], options["full_change"] = map(float, option.removeprefix("gate=").split(","))
            except ValueError:
                raise VharmError(f"--method {spec}: {option!r} is not gate=MIN,FULL with two numbers (levels, "
                                 "0,0 = off)") from None
        weights = head
    validate_inference(dataclasses.replace(InferenceConfig(), **options), f"--method {spec}")
    if not weights:
        raise VharmError(f"--method {spec}: no weights before the options")
    if weights == DEFAULT_WEIGHTS and not (WEIGHTS_DIR / DEFAULT_WEIGHTS / "config.json").is_file():
        raise VharmError(f"--method {spec}: no shipped weights yet ({WEIGHTS_DIR / DEFAULT_WEIGHTS} is missing); "
                         "give a weights or run directory instead")
    try:
        path = resolve_weights(weights)
    except VharmError:
        raise VharmError(f"--method {spec}: {weights} is not a method (composite, reinhard-frame, reinhard-clip) "
                         "nor a weights or run directory") from None
    harmonizer = Harmonizer.from_pretrained(path, device=device, **options)
    if mask_mode == "nomask" and harmonizer.discriminator is None:
        raise VharmError(f"--method {spec}: {path} has no discriminator.safetensors; :nomask needs D")
    return Model(spec, path, harmonizer, mask_mode)


# ---------------------------------------------------------------------------------------------- clips


@dataclass
class Clip:
    """One test clip in memory: uint8 frames, float32 masks, and the exact flows of a synthetic pair."""

    id: str
    kind: str
    family: str
    info: dict
    comp: list[np.ndarray]
    mask: list[np.ndarray]
    target: list[np.ndarray] | None
    exact_flow: list[np.ndarray] | None

    @property
    def reference(self) -> list[np.ndarray]:
        """What the metrics compare with: the ground truth, or the composite where there is none."""
        return self.target if self.target is not None else self.comp


def _read_frames(folder: Path) -> list[np.ndarray]:
    if not folder.is_dir():
        raise VharmError(f"{folder}: frame folder missing")
    frames = [read_image(p)[0] for p in list_frames(folder)]
    if not frames:
        raise VharmError(f"{folder}: no frames")
    return frames


def load_clip(testset: Path, entry: dict) -> Clip:
    """Reads a clip listed in a test set's manifest; frames, masks and flows must agree in count and size."""
    folder = Path(testset) / entry["clip"]
    info_path = folder / "clip.json"
    try:
        info = json.loads(info_path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VharmError(f"{info_path}: missing or not valid JSON ({e.__class__.__name__})") from None
    comp = _read_frames(folder / "comp")
    mask = [read_mask(p) for p in list_frames(folder / "mask")] if (folder / "mask").is_dir() else []
    target = _read_frames(folder / "target") if entry["kind"] != "composites" else None
    size = comp[0].shape[:2]
    for name, frames in (("mask", mask), ("target", target)):
        if frames is None:
            continue
        if len(frames) != len(comp):
            raise VharmError(f"{folder / name}: {len(frames)} frames for {len(comp)} composite frames")
        if any(f.shape[:2] != size for f in frames) or any(c.shape[:2] != size for c in comp):
            raise VharmError(f"{folder / name}: frame sizes differ from {folder / 'comp'}'s {size[1]}x{size[0]}")
    exact = None
    if (folder / "flow.npy").is_file():
        flow = np.load(folder / "flow.npy").astype(np.float32)
        flow = flow[None] if flow.ndim == 3 else flow
        if flow.shape != (len(comp) - 1, 2, *size):
            raise VharmError(f"{folder / 'flow.npy'}: shape {flow.shape}, expected ({len(comp) - 1}, 2, {size[0]}, "
                             f"{size[1]}) or (2, {size[0]}, {size[1]}) for a pair")
        exact = list(flow)
    return Clip(entry["clip"], entry["kind"], str(entry.get("family", info.get("family", ""))), info, comp, mask,
                target, exact)


def reference_flows(clip: Clip) -> list[np.ndarray]:
    """DIS flow of each reference frame back to the one before (shared by every method of the clip)."""
    ref = clip.reference
    return [estimate_flow(ref[t], ref[t - 1]) for t in range(1, len(ref))]


# ---------------------------------------------------------------------------------------------- scoring


def _thumb(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    if w <= THUMB_WIDTH:
        return rgb
    return cv2.resize(rgb, (THUMB_WIDTH, round(h * THUMB_WIDTH / w)), interpolation=cv2.INTER_AREA)


def heat_map(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """|pred - ref| (mean over channels, 0-255) as an RGB inferno map, HEAT_MAX and above at full heat."""
    err = np.abs(pred.astype(np.float32) - ref.astype(np.float32)).mean(2)
    level = np.round(np.clip(err / HEAT_MAX, 0, 1) * 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(level, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)


def write_jpeg(path: Path, rgb: np.ndarray) -> None:
    """A report picture, written atomically (a half-written file would survive into a resumed report)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(_thumb(rgb), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 88]):
            raise VharmError(f"{path}: could not write image")


def _with(stem: Path, suffix: str) -> Path:
    """`stem` + `suffix` (unlike Path.with_suffix, keeps a dot that is part of a clip's name)."""
    return stem.parent / (stem.name + suffix)


def show_frame(clip: Clip) -> int:
    """The frame the report pictures: the middle one (the second of a pair)."""
    return len(clip.comp) // 2


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


def load_real_clips(testset: Path) -> list[Clip]:
    """The clips of a test set's `real` set, in memory (the real-video validation of `vharm train`)."""
    clips = [load_clip(Path(testset), e) for e in load_manifest(testset)["clips"] if e["kind"] == "real"]
    if not clips:
        raise VharmError(f"{Path(testset) / 'manifest.json'}: no real clips (build it with `vharm make-testset "
                         "--sequences ...`)")
    return clips


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
               harm: float = 1.1) -> dict[str, float]:
    """The report's real-clip numbers of `harmonizer` (true masks), without pictures or temporal metrics.

    Args:
        comp_fmse: `composite_fmse(clips)`, computed here when None.

    Returns:
        fmse / comp_fmse: mean over clips of the clip's mean fMSE, for the model and the composite; ratio:
        their quotient; harmed: the number of clips whose fMSE is above `harm` times the composite's.
    """
    model = Model("model", Path("."), harmonizer)
    ours = [_clip_fmse(model, clip) for clip in clips]
    theirs = composite_fmse(clips) if comp_fmse is None else comp_fmse
    fmse, comp = float(np.mean(ours)), float(np.mean(theirs))
    return {"fmse": fmse, "comp_fmse": comp, "ratio": fmse / comp,
            "harmed": sum(a > harm * b for a, b in zip(ours, theirs))}


def _safe_name(name: str) -> str:
    """A folder name for a method: readable, and distinct for names that only differ in unsafe characters."""
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
    """JSON has no NaN: undefined values are written as null."""
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
        specs: method names (see `parse_method`); `composite` is added first if missing.
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


def _masks(path: Path, count: int | None):
    """Masks of a mask video/folder (as many as `count` frames, when known), or one mask image for every frame."""
    source = FrameSource(path)
    if source.count == 1:
        frame = next(iter(source))
        return itertools.repeat(mask_from_array(frame.alpha if frame.alpha is not None else frame.rgb))
    if count and source.count and source.count != count:
        raise VharmError(f"{path}: {source.count} masks for {count} frames (give one per frame, or one image)")
    return (mask_from_array(f.alpha if f.alpha is not None else f.rgb) for f in source)


def evaluate_clip(pred: Path, target: Path, mask: Path, warn=None) -> dict:
    """Scores one clip: PRED against TARGET inside MASK (each a video, a folder of frames or one image).

    Frames are compared at the ground truth's resolution: predictions (and masks) of another size are
    resized to it, with a warning. Streams, so long clips do not fill memory.

    Returns:
        {"frames", "mse", "fmse", "psnr", "fpsnr", "tl", "tl_floor", "lt2"}: per-frame values averaged.
    """
    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    pred_src, target_src = FrameSource(Path(pred)), FrameSource(Path(target))
    for src in (pred_src, target_src):
        if src.count and target_src.count and src.count != target_src.count:
            raise VharmError(f"{src.path}: {src.count} frames, but {target_src.path} has {target_src.count}")
    scorer = ClipScorer(has_target=True)
    prev_target, count, warned = None, 0, set()
    masks = _masks(Path(mask), target_src.count)
    for p, t in itertools.zip_longest(pred_src, target_src):
        m = next(masks, None)
        if p is None or t is None or m is None:
            short = pred if p is None else target if t is None else mask
            raise VharmError(f"{short}: ends after {count} frames, before the other inputs")
        h, w = t.rgb.shape[:2]
        rgb = p.rgb
        if rgb.shape[:2] != (h, w):
            rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA if rgb.shape[0] > h else cv2.INTER_LINEAR)
            if "pred" not in warned:
                warn(f"vharm: warning: {pred}: {p.rgb.shape[1]}x{p.rgb.shape[0]} frames resized to the ground "
                     f"truth's {w}x{h}")
                warned.add("pred")
        if m.shape != (h, w):
            if "mask" not in warned:
                warn(f"vharm: warning: {mask}: {m.shape[1]}x{m.shape[0]} masks resized to the ground truth's {w}x{h}")
                warned.add("mask")
            m = cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)
        flow = estimate_flow(t.rgb, prev_target) if prev_target is not None else None
        scorer.add(rgb, t.rgb, m, flow)
        prev_target = t.rgb
        count += 1
    return {"frames": count, **_nan_to_none(scorer.result())}
