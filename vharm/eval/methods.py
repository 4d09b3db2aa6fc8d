"""The methods `vharm evaluate` compares (`parse_method`):

- `composite`: the cut-and-paste input itself (always evaluated: a number means little without it);
- `reinhard-frame` / `reinhard-clip`: Lab mean/std transfer of the foreground toward the background
  (Reinhard et al. 2001) with statistics per frame / pooled over the clip;
- `default`, another shipped weights name, a weights directory or a run directory, run through
  `Harmonizer.step` (the per-frame step of `vharm harmonize`) frame by frame with a fresh state per clip, with
  the suffixes `:nomask` (mask-free, paper Table IV: D's disharmony map instead of the mask, as
  `vharm harmonize --no-mask`), `:zeros` / `:ones` (an all-zero / all-one mask, Table IV), `:automask` /
  `:automask-all` (the automatic person mask of `vharm harmonize --mask auto`, the main subject / every person:
  what a user without a mask gets, `docs/segment.md`; with `:seg=MODEL`, `Segmenter(model=MODEL)`, as `--seg-model`:
  `pose` or `pose+selfie`), `:smooth=A`
  (inference-time temporal smoothing of the colour transform), `:two-pass` (one transform per shot, `vharm
  harmonize --two-pass`), `:gate=MIN,FULL` (the do-no-harm gate,
  `--min-change` / `--full-change` of `vharm harmonize`, in levels; `0,0` = off) and `:brighten=S` (the gain on
  a brightening change's luminance, `--brighten`), `:mfgate=K` (the mask-free gate's factor,
  `--mask-free-gate`), `:dgate=K` (the gate's factor for darkening changes, `--darken-gate`), `:gsteps=N` (G run
  again on its own result, `--g-steps`), e.g.
  `runs/00000-cpu:nomask` or `default:smooth=0.8`. Options not given take the weights' own settings (the
  "inference" section of their config.json), as `vharm harmonize` does.

`Method.predict` is given the clip's true masks; the metrics use them whatever mask a model method runs with.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np

from vharm.config import InferenceConfig, field_specs, validate
from vharm.errors import VharmError
from vharm.inference.harmonizer import PLAN_VERSION, STEP_VERSION, Harmonizer
from vharm.io.masks import AUTO, MASK_EPS, MaskSource
from vharm.io.video import Frame
from vharm.models.networks import DEFAULT_WEIGHTS, WEIGHTS_DIR, resolve_weights
from vharm.segment import VERSION as SEGMENTER_VERSION
from vharm.segment import Segmenter
from vharm.segment.segmenter import MODELS as SEG_MODELS


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


# The model methods' other masks, as the `MaskSource` spec that `vharm harmonize` resolves them from: D's map
# (mask-free), an all-zero and an all-one mask (paper Table IV), and the automatic person mask (`--mask auto`; the
# `Segmenter` itself is made by `Model`, with or without `--all-people`).
MASK_MODES = {"nomask": None, "zeros": 0.0, "ones": 1.0, "automask": AUTO, "automask-all": AUTO}


class Model(Method):
    """Trained weights through `Harmonizer.step` (what `vharm harmonize` runs), frame by frame, with a fresh
    state per clip.

    Args:
        name: the method as the user wrote it (the report's label).
        weights: the resolved weights directory.
        harmonizer: loaded from `weights`.
        mask_mode: "true" (the clip's mask) or a key of `MASK_MODES`: "nomask" (D's disharmony map), "zeros"
            or "ones" (a constant mask), "automask" / "automask-all" (the automatic mask of the main subject / of
            every person, made from the composite frames). The metrics always use the true mask.
    """

    def __init__(self, name: str, weights: Path, harmonizer: Harmonizer, mask_mode: str = "true",
                 two_pass: bool = False, seg_model: str | None = None):
        self.name, self.weights, self.harmonizer, self.mask_mode = name, weights, harmonizer, mask_mode
        self.two_pass, self.seg_model = two_pass, seg_model
        self._segmenter = None

    def fingerprint(self) -> dict:
        files = {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(self.weights.iterdir())
                 if p.is_file()}
        return {"method": self.name, "weights": str(self.weights.resolve()), "files": files,
                "mask": self.mask_mode, "smoothing": self.harmonizer.temporal_smoothing,
                "gate": [self.harmonizer.min_change, self.harmonizer.full_change],
                **({"brighten": b} if (b := self._harmonizer().brighten) != 1 else {}),
                **({"darken_gate": d} if (d := self.harmonizer.darken_gate) != 1 else {}),
                **({"g_steps": n} if (n := self.harmonizer.g_steps) != 1 else {}),
                **({"mask_free_gate": self.harmonizer.mask_free_gate} if self.mask_mode == "nomask" else {}),
                **({"segmenter": [SEGMENTER_VERSION, self.seg_model or "selfie"]}
                   if self.mask_mode.startswith("automask") else {}),
                **({"two_pass": PLAN_VERSION} if self.two_pass else
                   {"step": STEP_VERSION} if self.harmonizer.full_change > 0 else {})}

    def _harmonizer(self) -> Harmonizer:
        """The harmonizer for this method's masks (`Harmonizer.for_mask`: automatic masks without the brightening
        gain, as `vharm harmonize --mask auto`)."""
        return self.harmonizer.for_mask("auto" if self.mask_mode.startswith("automask") else "file")

    def _mask_spec(self):
        if not self.mask_mode.startswith("automask"):
            return MASK_MODES[self.mask_mode]
        if self._segmenter is None:  # loaded once, on first use; it keeps no state between clips
            self._segmenter = Segmenter(model=self.seg_model, subject=self.mask_mode == "automask")
        return self._segmenter

    def predict(self, comps, masks):
        if self.mask_mode == "true":
            masks = [np.ascontiguousarray(m, dtype=np.float32) for m in masks]
        else:
            # Constant, automatic and no masks come from vharm.io.masks, as for `vharm harmonize`; none depends on
            # the composite's file, so there is none to check them against (`like`).
            source = MaskSource(self._mask_spec(), like=None, no_mask=self.mask_mode == "nomask")
            masks = [m for _, m in source.attach(Frame(c, None, "", None) for c in comps)]
        comps = [np.ascontiguousarray(c) for c in comps]
        transforms = [None] * len(comps)
        h = self._harmonizer()
        if self.two_pass:
            transforms = h.plan_shots([h.estimate(c, m) for c, m in zip(comps, masks)])
        state = None
        for comp, m, transform in zip(comps, masks, transforms):
            pred, _, state = h.step(comp, m, state, transform=transform)
            yield pred


# `:NAME=NUMBER` options: the InferenceConfig field each sets and, for the error, the form it takes (`:seg=MODEL` and
# `:gate=MIN,FULL` are parsed apart)
VALUE_OPTIONS = {"smooth": ("temporal_smoothing", "smooth=A with a number A in [0, 1)"),
                 "brighten": ("brighten", "brighten=S with a number S >= 1"),
                 "mfgate": ("mask_free_gate", "mfgate=K with a number K >= 1"),
                 "dgate": ("darken_gate", "dgate=K with a number K >= 1"),
                 "gsteps": ("g_steps", "gsteps=N with a whole number N >= 1")}
NAMED_OPTIONS = ("seg", "gate", *VALUE_OPTIONS)
FIELD_KINDS = {spec.name: spec.kind for spec in field_specs(InferenceConfig)}  # "2.5" is not a number of steps


def _split_options(spec: str) -> tuple[str, str, dict]:
    """A model method's (weights, mask mode, options: InferenceConfig changes, `two_pass` and `seg_model`) from
    `WEIGHTS[:OPTION]...`.

    Example:
        >>> _split_options("runs/00000-cpu:nomask:gate=0,0")
        ('runs/00000-cpu', 'nomask', {'min_change': 0.0, 'full_change': 0.0})
        >>> _split_options("default:two-pass")
        ('default', 'true', {'two_pass': True})
        >>> _split_options("default:automask:seg=pose")
        ('default', 'automask', {'seg_model': 'pose'})
        >>> _split_options("default:brighten=1")
        ('default', 'true', {'brighten': 1.0})
        >>> _split_options("default:nomask:mfgate=1")
        ('default', 'nomask', {'mask_free_gate': 1.0})
    """
    weights, mask_mode, options = spec, "true", {}
    while True:
        head, sep, option = weights.rpartition(":")
        name, eq, value = option.partition("=")
        if not sep or option not in MASK_MODES and option != "two-pass" and not (eq and name in NAMED_OPTIONS):
            return weights, mask_mode, options
        if option in MASK_MODES:
            mask_mode = option
        elif option == "two-pass":
            options["two_pass"] = True
        elif name == "seg":
            options["seg_model"] = value
        elif name == "gate":
            try:
                options["min_change"], options["full_change"] = map(float, value.split(","))
            except ValueError:
                raise VharmError(f"--method {spec}: {option!r} is not gate=MIN,FULL with two numbers (levels, "
                                 "0,0 = off)") from None
        else:
            field, form = VALUE_OPTIONS[name]
            try:
                options[field] = FIELD_KINDS[field](value)
            except ValueError:
                raise VharmError(f"--method {spec}: {option!r} is not {form}") from None
        weights = head


def parse_method(spec: str, device: str = "cpu") -> Method:
    """A method from its name: see the module docstring; weights are loaded here, so errors come first.

    Example:
        >>> parse_method("reinhard-clip").name
        'reinhard-clip'
    """
    if spec == "composite":
        return Composite()
    if spec in ("reinhard-frame", "reinhard-clip"):
        return Reinhard(pooled=spec == "reinhard-clip")
    weights, mask_mode, options = _split_options(spec)
    two_pass, seg_model = options.pop("two_pass", False), options.pop("seg_model", None)
    if seg_model is not None and (seg_model not in SEG_MODELS or not mask_mode.startswith("automask")):
        raise VharmError(f"--method {spec}: seg={seg_model} needs :automask or :automask-all and one of "
                         f"{', '.join(SEG_MODELS)}")
    validate(dataclasses.replace(InferenceConfig(), **options), f"--method {spec}")
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
    return Model(spec, path, harmonizer, mask_mode, two_pass, seg_model)
