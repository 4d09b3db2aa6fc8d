"""The one inference path: `Harmonizer.step` harmonizes one frame, for the Python API, `vharm harmonize`,
`vharm composite`, the demo, the evaluation and training's validation on real clips.

Per frame: the composite (and mask) are area-resized to the network's working resolution, G predicts a 3x4
colour transform there (one per frame, or a grid), the do-no-harm gate may move it back toward the identity
(its thresholds raised to the scene's floor, the change G makes to the frame's own background),
a change that brightens the foreground may have its luminance scaled by `brighten` (`brighten_change`, an option:
G brightens too little), the strength scales the change (`scale_change`), and the transform is applied to the
full-resolution pixels of the mask's bounding box and blended with the mask (`colortransform.apply_to_frame`), so
background pixels are the input's exactly. The recurrent state (the smoothed transform and scene floor of the
frames before) is explicit: `pred, mask, state = h.step(frame, mask, state)`, as RobustVideoMatting's
`fgr, pha, *rec = model(src, *rec)`.

Two passes (files only, `--two-pass`): `estimate` keeps what G says of each frame, `plan_shots` makes one transform
per shot of them (the gate and the strength applied once per shot), and `step(..., transform=...)` applies it.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import torch
from torch.nn import functional as F

from vharm.config import InferenceConfig, from_dict, validate
from vharm.errors import VharmError
from vharm.models import colortransform
from vharm.models.networks import Discriminator, Generator, check_inputs, read_weights_config, resolve_weights


class StepState(NamedTuple):
    """What `Harmonizer.step` carries from one frame of a video to the next (None for a first frame): the EMA of G's
    transform before the gate and the strength (None with `transform=` given), mask-free the EMA of D's map, and the
    EMA of the scene's floor (levels, `Harmonizer._scene_floor`; None with the gate off or before any frame had one)."""

    transform: torch.Tensor | None
    dmap: torch.Tensor | None
    floor: float | None = None


class Harmonizer:
    """Harmonizes composites with a trained G (and, without a mask, D's disharmony map).

    Args:
        generator, discriminator: the networks (`from_pretrained` loads them; D only serves mask-free mode).
        device: "cpu" or "cuda" (the network runs there; the full-resolution apply runs on the CPU).
        temporal_smoothing, min_change, full_change, strength, mask_free_gate, brighten, darken_gate, g_steps:
            `InferenceConfig` (EMA of the transform over frames; the do-no-harm gate of `gate_change`, in 0-255
            levels; the scale of the gated change, `scale_change`; the gate's factor in mask-free mode; the gain on
            a brightening change's luminance, `brighten_change`; the gate's factor for a darkening change; G run
            again on its own result, `Harmonizer._more_steps`). `from_pretrained` takes them from the weights.

    Example:
        >>> import numpy as np
        >>> from vharm import Harmonizer
        >>> h = Harmonizer.from_pretrained()  # the weights shipped in the package
        >>> frame = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
        >>> mask = np.zeros((120, 160), np.float32); mask[30:90, 40:120] = 1
        >>> pred, used, state = h.step(frame, mask)  # the next frame: h.step(frame2, mask2, state)
        >>> pred.shape, bool((pred[:30] == frame[:30]).all())
        ((120, 160, 3), True)
    """

    def __init__(self, generator: Generator, discriminator: Discriminator | None = None, device: str = "cpu",
                 temporal_smoothing: float = 0.0, min_change: float = 0.0, full_change: float = 0.0,
                 strength: float = 1.0, mask_free_gate: float = 1.0, brighten: float = 1.0,
                 darken_gate: float = 1.0, g_steps: int = 1):
        if device == "cuda" and not torch.cuda.is_available():
            raise VharmError("--device cuda: this torch build or machine has no CUDA device")
        validate(InferenceConfig(temporal_smoothing=temporal_smoothing, min_change=min_change, full_change=full_change,
                                 strength=strength, mask_free_gate=mask_free_gate, brighten=brighten,
                                 darken_gate=darken_gate, g_steps=g_steps), "Harmonizer")
        self.device = torch.device(device)
        # channels_last: oneDNN's convolutions run G 20 % faster at 128^2 on this CPU (12.9 -> 10.2 ms).
        self.generator = generator.eval().to(self.device, memory_format=torch.channels_last)
        self.discriminator = (discriminator.eval().to(self.device, memory_format=torch.channels_last)
                              if discriminator is not None else None)
        self.resolution = generator.cfg.resolution
        self.temporal_smoothing = temporal_smoothing
        self.min_change, self.full_change = min_change, full_change
        self.strength = strength
        self.mask_free_gate = mask_free_gate
        self.brighten = brighten
        self.darken_gate = darken_gate
        self.g_steps = g_steps

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path | None = None, device: str = "cpu",
                        temporal_smoothing: float | None = None, min_change: float | None = None,
                        full_change: float | None = None, strength: float | None = None,
                        mask_free_gate: float | None = None, brighten: float | None = None,
                        darken_gate: float | None = None, g_steps: int | None = None) -> "Harmonizer":
        """Loads shipped weights by name (default: "default"), a weights directory or a run directory.

        The inference options left None take the weights' own settings (`"inference"` in their config.json,
        `InferenceConfig`), or its defaults where they have none.
        """
        path = resolve_weights(name_or_dir)
        g = Generator.from_pretrained(path)
        d = Discriminator.from_pretrained(path) if (path / Discriminator.WEIGHTS).is_file() else None
        where = f"{path / 'config.json'}:inference"
        section = read_weights_config(path).get("inference", {})
        if not isinstance(section, dict):
            raise VharmError(f"{path / 'config.json'}: \"inference\" must be an object")
        cfg = from_dict(InferenceConfig, section, where)
        validate(cfg, where)
        given = {"temporal_smoothing": temporal_smoothing, "min_change": min_change, "full_change": full_change,
                 "strength": strength, "mask_free_gate": mask_free_gate, "brighten": brighten,
                 "darken_gate": darken_gate, "g_steps": g_steps}
        cfg = dataclasses.replace(cfg, **{k: v for k, v in given.items() if v is not None})
        validate(cfg, "inference options (--temporal-smoothing, --min-change, --full-change, --strength, "
                      "--mask-free-gate, --brighten, --darken-gate, --g-steps over the weights' settings)")
        return cls(g, d, device, **dataclasses.asdict(cfg))

    def with_options(self, **options) -> "Harmonizer":
        """The same networks with other `InferenceConfig` settings (those not given stay), checked like
        `from_pretrained`'s: `vharm serve` previews and exports each page's settings with its one loaded model."""
        cfg = dataclasses.replace(self.inference_config, **options)
        validate(cfg, "inference options")
        return Harmonizer(self.generator, self.discriminator, str(self.device), **dataclasses.asdict(cfg))

    def for_mask(self, kind: str) -> "Harmonizer":
        """This harmonizer for masks of `MaskSource.kind` `kind`: for automatic masks ("auto") without the
        brightening gain and with one step of G (`brighten` 1, `g_steps` 1), else itself.

        Why: the gain (and the steps, in both directions) multiplies G's change, and it was chosen with masks of the
        pasted region.
        An automatic mask marks the people it finds, pasted or not, and misses parts of them; where it marks the wrong
        region G's change is wrong, and the gain makes that harm several times worse (`docs/training.md`, "G
        brightens too little": `valset-real`'s mild clips 1.32x the composite's error with the automatic mask, 5.0x
        with the gain).
        """
        plain = self.brighten == 1 and self.g_steps == 1
        return self.with_options(brighten=1.0, g_steps=1) if kind == "auto" and not plain else self

    def save_pretrained(self, path: str | Path) -> None:
        """Writes G, D (if any) and the inference settings: a weights directory `from_pretrained` loads."""
        self.generator.save_pretrained(path, inference=dataclasses.asdict(self.inference_config))
        if self.discriminator is not None:
            self.discriminator.save_pretrained(path)
        else:  # a D left from earlier weights in `path` would be loaded with this G
            (Path(path) / Discriminator.WEIGHTS).unlink(missing_ok=True)

    @property
    def inference_config(self) -> InferenceConfig:
        # by name: the fields' order is the config file's, not this class's
        return InferenceConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(InferenceConfig)})

    def _small(self, frame: np.ndarray) -> torch.Tensor:
        """uint8 (H, W, 3) -> (1, 3, r, r) float in [0, 1] with OpenCV's area resampling, at 16 bits (x 257 maps
        0..255 onto 0..65535 exactly): within 1e-5 of a float32 resize, at half its cost."""
        r = self.resolution
        small = cv2.resize(frame.astype(np.uint16) * np.uint16(257), (r, r), interpolation=cv2.INTER_AREA)
        return torch.from_numpy(small.astype(np.float32) / np.float32(65535)).permute(2, 0, 1)[None].to(self.device)

    def require_discriminator(self) -> Discriminator:
        """D, or the error that says mask-free mode and D's map need it."""
        if self.discriminator is None:
            raise VharmError("these weights have no discriminator.safetensors: mask-free mode needs D")
        return self.discriminator

    def _discriminate(self, small: torch.Tensor) -> torch.Tensor:
        return self.require_discriminator()(small)

    def _raw_transform(self, small: torch.Tensor, mask_small: torch.Tensor | None, dmap: torch.Tensor | None = None):
        """G's transform (1, 12, h, w) before the EMA, the gate and the strength, and the mask (1, 1, r, r) its
        change is blended with.

        `mask_small` None means mask-free mode: G's statistics come from the core of D's map (`dmap`, computed
        here if not given), the change is blended with the stretched map.
        """
        if mask_small is None:
            dmap = self._discriminate(small) if dmap is None else dmap
            return self.generator.transform(small, core_of_map(dmap)), mask_from_map(dmap)
        return self.generator.transform(small, mask_small), mask_small

    def _mask_small(self, mask: np.ndarray | None) -> torch.Tensor | None:
        r = self.resolution
        return None if mask is None else torch.from_numpy(
            cv2.resize(mask, (r, r), interpolation=cv2.INTER_AREA)).view(1, 1, r, r).to(self.device)

    def _predict(self, small: torch.Tensor, mask_small: torch.Tensor | None, dmap: torch.Tensor | None,
                 previous: StepState | None):
        """The network part, at the working resolution: (gated, scaled transform (1, 12, h, w), mask used, the
        smoothed transform, the smoothed floor).

        The smoothed transform (`StepState.transform`) is taken before the gate and the strength, so that the gate
        acts on each frame's estimate and the EMA is not pulled toward the identity. The gate's threshold is raised
        to the scene's floor, smoothed by the same EMA (`raise_to_floor`; two passes take the shot's median instead).
        """
        coeffs, mask_used = self._raw_transform(small, mask_small, dmap)
        a = self.temporal_smoothing
        before = previous.transform if previous is not None else None
        if a > 0 and before is not None and before.shape == coeffs.shape:
            coeffs = a * before + (1 - a) * coeffs
        # The direction of the change, which the darkening factor and the brightening gain need: the gate scales the
        # change by a factor >= 0, so the gated change brightens where this one does.
        brighter = luma_change(coeffs, small, mask_used) if self.darken_gate != 1 or self.brighten != 1 else None
        lo, hi = self._gate(mask_free=mask_small is None, darker=brighter is not None and float(brighter) < 0)
        floor = self._smoothed_floor(small, mask_used, previous) if hi > 0 else None  # gate off: no use for it
        lo, hi = raise_to_floor(lo, hi, floor)
        if self.g_steps > 1:
            # The gate judges G's first estimate, as with one step; the steps after it only say how far to go.
            scale = gate_scale(change_rms(coeffs, small, mask_used), lo, hi).view(-1, 1, 1, 1)
            stats_mask = mask_used if mask_small is not None else core_of_map(dmap)
            eye = colortransform.identity(1, 1, 1, coeffs.device, coeffs.dtype)
            further = self._more_steps(small, stats_mask, mask_used, coeffs) if float(scale.max()) > 0 else eye
            gated = eye + scale * (further - eye)
        else:
            gated = gate_change(coeffs, small, mask_used, lo, hi)
        if self.brighten != 1:
            gated = brighten_change(gated, brighter, self.brighten)
        return scale_change(gated, self.strength), mask_used, coeffs, floor

    def _more_steps(self, small: torch.Tensor, stats_mask: torch.Tensor, mask_used: torch.Tensor,
                    coeffs: torch.Tensor) -> torch.Tensor:
        """`g_steps` - 1 more steps of G after its estimate `coeffs` (1, 12, h, w): each time G sees the frame as the
        transform so far leaves it (blended with `mask_used`, clamped to [0, 1] as shown) and its transform is
        composed after the one so far. Returns the composed transform.

        Why: G makes a part of the change an exposure-shifted foreground needs (7-42 % on the validation sets'
        exposure clips, docs/training.md); seen again, the foreground is still off the same way, and G makes a part
        of what is left. Where G's first estimate is already right, the next ones overshoot, so their number is
        chosen with the gate on the validation sets (docs/training.md, "G again on its own result").
        """
        for _ in range(self.g_steps - 1):
            shown = small + mask_used * (colortransform.apply_affine(small, coeffs).clamp(0, 1) - small)
            coeffs = colortransform.compose(self.generator.transform(shown, stats_mask), coeffs)
        return coeffs

    def _smoothed_floor(self, small: torch.Tensor, mask_used: torch.Tensor, previous: StepState | None) -> float | None:
        """This frame's scene floor (`_scene_floor`) in the EMA of `temporal_smoothing` over the frames before; the
        last one known where this frame has none (its mask leaves too little background to move onto)."""
        floor, before = self._scene_floor(small, mask_used), previous.floor if previous is not None else None
        if floor is None or before is None:
            return before if floor is None else floor
        return self.temporal_smoothing * before + (1 - self.temporal_smoothing) * floor

    def _gate(self, mask_free: bool, darker: bool) -> tuple[float, float]:
        """The do-no-harm gate's (min_change, full_change), raised by `mask_free_gate` without a mask and by
        `darken_gate` for a change that lowers the foreground's mean luma."""
        k = (self.mask_free_gate if mask_free else 1.0) * (self.darken_gate if darker else 1.0)
        return self.min_change * k, self.full_change * k

    @torch.no_grad()
    def step(self, frame: np.ndarray, mask: np.ndarray | None, state: StepState | None = None,
             timing=None, transform: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray, StepState]:
        """Harmonizes one frame: the only inference step.

        Args:
            frame: uint8 (H, W, 3) RGB composite.
            mask: float32 (H, W) foreground in [0, 1]; None: mask-free (D's map finds the region).
            state: what the previous frame of the same video returned (None for the first frame, or for an
                unrelated frame).
            timing: optional `Timing`: the seconds spent in the network and in the full-resolution apply are
                added to it.
            transform: the frame's transform from `plan_shots` (two passes): applied as it is, instead of G's
                (the gate and the strength are in it already; without a mask D's map still blends it).

        Returns:
            (pred uint8 (H, W, 3), mask used float32 (H, W), state for the next frame).
        """
        t0 = time.perf_counter()
        check_frame(frame, mask)
        h, w = frame.shape[:2]
        mask_small, small = self._mask_small(mask), self._small(frame)
        dmap = None if mask is not None else self._smoothed_map(self._discriminate(small), state)
        if transform is None:
            coeffs, mask_small, smoothed, floor = self._predict(small, mask_small, dmap, state)
        else:
            coeffs, smoothed, floor = transform, None, None
            if dmap is not None:
                mask_small = mask_from_map(dmap)
        state = StepState(smoothed, dmap, floor)
        if mask is None:
            mask = cv2.resize(mask_small[0, 0].cpu().numpy(), (w, h), interpolation=cv2.INTER_LINEAR)
        t1 = time.perf_counter()
        pred = colortransform.apply_to_frame(frame, coeffs, mask)
        if timing is not None:
            timing.network += t1 - t0
            timing.apply += time.perf_counter() - t1
        return pred, mask, state

    def _smoothed_map(self, dmap: torch.Tensor, state: StepState | None) -> torch.Tensor:
        """D's map, mask-free, with the EMA of `temporal_smoothing` over the frames before (`StepState.dmap`)."""
        a, previous = self.temporal_smoothing, state and state.dmap
        if a > 0 and previous is not None and previous.shape == dmap.shape:
            return a * previous + (1 - a) * dmap
        return dmap

    @torch.no_grad()
    def estimate(self, frame: np.ndarray, mask: np.ndarray | None) -> "Estimate":
        """The first of two passes: what G says of one frame (`Estimate`), nothing applied yet. Frames, masks and
        mask-free mode as for `step`; the weights must predict one transform per frame (`grid` 1)."""
        check_frame(frame, mask)
        small = self._small(frame)
        dmap = self._discriminate(small) if mask is None else None
        coeffs, mask_small = self._raw_transform(small, self._mask_small(mask), dmap)
        if coeffs.shape[-2:] != (1, 1):
            raise VharmError("two passes need weights that predict one colour transform per frame (grid 1); these "
                             f"predict a {coeffs.shape[-2]}x{coeffs.shape[-1]} grid")
        x = torch.cat([small, torch.ones_like(small[:, :1])], 1).flatten(2)[0]  # (4, r*r): r, g, b, 1
        m = mask_small.flatten()
        mass = m.sum()
        moments = (x * m) @ x.T / mass.clamp_min(1e-6)
        histogram = torch.stack([torch.histc(small[0, c], CUT_BINS, 0, 1) for c in range(3)])
        stats_mask = mask_small if dmap is None else core_of_map(dmap)
        further = self._more_steps(small, stats_mask, mask_small, coeffs).cpu() if self.g_steps > 1 else None
        return Estimate(coeffs.cpu(), moments.cpu(), float(mass), (histogram / histogram.sum(1, keepdim=True)).cpu(),
                        self._scene_floor(small, mask_small), mask is None, further, self.g_steps)

    @torch.no_grad()
    def _scene_floor(self, small: torch.Tensor, mask_small: torch.Tensor) -> float | None:
        """The change G makes to regions of this frame that are harmonious by construction: its mask moved a third of
        the frame's width to either side (the part still on the foreground left out), the mean of the two RMS changes
        in levels; None when neither lands on enough background (30 % of the mask's area).

        Both regions go through G as one batch of two: 4 ms a frame on one core, against 7.8 ms one by one.
        """
        shift = self.resolution // 3
        regions = torch.cat([torch.roll(mask_small, s, dims=-1) for s in (shift, -shift)]) * (1 - mask_small)
        area = float(mask_small.sum())
        regions = regions[regions.sum((1, 2, 3)) >= FLOOR_AREA * area] if area > 0 else regions[:0]
        if not len(regions):
            return None
        both = small.expand(len(regions), -1, -1, -1)
        return float(change_rms(self._raw_transform(both, regions)[0], both, regions).mean())

    def plan_shots(self, estimates: list["Estimate | None"]) -> list[torch.Tensor | None]:
        """The second pass's transforms: one per shot, for every frame of it (None where `estimates` has None, a
        frame that failed to decode).

        A shot ends where the frame's colour histogram changes abruptly (`cut_between`). Its transform is the mean of
        G's over its frames, weighted by the mask's area (a frame showing little of the foreground says little);
        the do-no-harm gate then judges that transform once, on the shot's pooled foreground colours (the change's
        RMS from the colour moments, without `gate_change`'s clamp to [0, 1]), and the strength scales it. So one
        clip-long transform where the frames agree, with no EMA lag and no gate switching on and off within a shot.

        The gate's threshold is raised, for the shot, to the change G makes to the shot's own harmonious regions
        (`Estimate.floor`, the median over its frames; the ramp keeps its proportion): a change no larger than what
        G would do to the scene's background is not evidence of disharmony. With the gate off, neither applies.
        """
        shots: list[list[int]] = []
        previous = None
        for i, e in enumerate(estimates):
            if e is None:
                continue
            if previous is None or cut_between(previous, e):
                shots.append([])
            shots[-1].append(i)
            previous = e
        out: list[torch.Tensor | None] = [None] * len(estimates)
        for shot in shots:
            transform = self._shot_transform([estimates[j] for j in shot])
            for j in shot:
                out[j] = transform
        return out

    def _shot_transform(self, shot: list["Estimate"]) -> torch.Tensor:
        if shot[0].steps != self.g_steps:
            raise ValueError(f"estimates made with {shot[0].steps} step(s) of G cannot be planned with g_steps "
                             f"{self.g_steps}: make them with this harmonizer's estimate()")
        eye = colortransform.identity(1, 1, 1)
        weights = torch.tensor([e.mass for e in shot])
        if float(weights.sum()) <= 0:  # no foreground anywhere in the shot: nothing to harmonize
            return eye.to(self.device)
        w = (weights / weights.sum()).view(-1, 1, 1, 1)
        coeffs = (w * torch.cat([e.coeffs for e in shot])).sum(0, keepdim=True)
        moments = (w.view(-1, 1, 1) * torch.stack([e.moments for e in shot])).sum(0)
        change = (coeffs - eye).view(3, 4)
        rms = (torch.trace(change @ moments @ change.T) / 3).clamp_min(0).sqrt() * 255
        floors = [e.floor for e in shot if e.floor is not None]
        brighter = LUMA @ change @ moments[:, 3]  # the mean luma change: w^T (A - I | b) E[x; 1]
        lo, hi = raise_to_floor(*self._gate(shot[0].mask_free, darker=float(brighter) < 0),
                                float(np.median(floors)) if floors else None)
        if shot[0].further is not None:  # the gate judged the first step; the shot goes as far as all the steps
            coeffs = (w * torch.cat([e.further for e in shot])).sum(0, keepdim=True)
        gated = eye + gate_scale(rms.view(1), lo, hi).view(1, 1, 1, 1) * (coeffs - eye)
        return scale_change(brighten_change(gated, brighter.view(1), self.brighten), self.strength).to(self.device)

    def __call__(self, comp: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Harmonizes (B, 3, H, W) frames or (B, T, 3, H, W) clips in [0, 1]; mask (B, [T,] 1, H, W) or None (D's
        map). Each frame goes through `step` at 8 bits per channel, as a video does, and the change it makes is added
        to the input: pixels outside the mask come back exactly as given. The frames of a clip carry the state in
        order; the frames of a batch are independent.

        Example:
            >>> import torch
            >>> from vharm import Harmonizer
            >>> h = Harmonizer.from_pretrained()
            >>> comp = torch.rand(1, 3, 120, 160)
            >>> mask = torch.zeros(1, 1, 120, 160); mask[..., 30:90, 40:120] = 1
            >>> pred = h(comp, mask)
            >>> pred.shape, bool((pred[..., :30, :] == comp[..., :30, :]).all())
            (torch.Size([1, 3, 120, 160]), True)
        """
        clips = isinstance(comp, torch.Tensor) and comp.ndim == 5
        if clips and mask is not None and mask.ndim != 5:
            raise ValueError(f"a (B, T, 3, H, W) comp needs a (B, T, 1, H, W) mask, got {tuple(mask.shape)}")
        if not clips:
            check_inputs(comp, mask)
        # One layout below: (B, T, C, H, W), a batch of frames being T = 1 clips that do not share a state.
        comp5 = comp if clips else comp.unsqueeze(1)
        mask5 = None if mask is None else mask if clips else mask.unsqueeze(1)
        out = torch.empty_like(comp5)
        for b in range(comp5.shape[0]):
            check_inputs(comp5[b], None if mask5 is None else mask5[b])
            state = None
            for t in range(comp5.shape[1]):
                m = None if mask5 is None else mask5[b, t, 0].detach().float().clamp(0, 1).cpu().numpy()
                frame = to_uint8(comp5[b, t:t + 1])
                pred, _, state = self.step(frame, m, state if clips else None)
                change = (to_tensor(pred) - to_tensor(frame))[0].to(out)
                out[b, t] = (comp5[b, t] + change).clamp(0, 1)
        return out if clips else out[:, 0]

    @torch.no_grad()
    def disharmony_map(self, comp: torch.Tensor) -> torch.Tensor:
        """D's per-pixel disharmony map (B, 1, H, W) in [0, 1] for composites (B, 3, H, W) in [0, 1], computed at
        the working resolution from the same 8-bit frames `step` sees."""
        check_inputs(comp)
        d = self._discriminate(torch.cat([self._small(to_uint8(comp[b:b + 1])) for b in range(comp.shape[0])]))
        return F.interpolate(d, size=comp.shape[-2:], mode="bilinear", align_corners=False).to(comp.device)

    def harmonize_video(self, input: str | Path, mask: str | Path | float | None = None,
                        output: str | Path | None = None, **options):
        """Harmonizes a video file, frame directory or image into `output` (`vharm.inference.stream`)."""
        from vharm.inference.stream import harmonize_video

        return harmonize_video(self, input, mask, output, **options)


# A cut: the colour histograms (16 bins a channel, of the whole frame at the working resolution) of two consecutive
# frames differ by more than this total-variation distance (0 = the same, 1 = disjoint; mean over channels).
# Measured on the 44 DAVIS sequences of ../shared/data: consecutive frames at most 0.18 apart (mallard-fly, a bird
# taking off; motocross and bmx 0.12-0.15), the last frame of one sequence and the first of another 0.43 apart at
# the median and under 0.24 for 5 % of the pairs (those cuts are missed: two shots of alike colours share one
# transform).
CUT_BINS, CUT_DISTANCE = 16, 0.25
FLOOR_AREA = 0.3  # `Harmonizer._scene_floor`: the moved mask must land this share of its area on the background
# The version of what `plan_shots` makes: bump it when its transforms change, so that scores cached for two-pass
# methods are made again. 1: the shot mean, gated once; 2: + the scene's floor.
PLAN_VERSION = 2
# The same for `step`'s gate, one pass: 1: the thresholds as set; 2: raised to the scene's floor (2026-12-02). Part
# of the cache key only where the gate is on (with it off, step's transforms did not change).
STEP_VERSION = 2


@dataclass
class Estimate:
    """What the first pass keeps of a frame (`Harmonizer.estimate`), a few hundred bytes whatever the video.

    Attributes:
        coeffs: G's transform (1, 12, 1, 1), before the EMA, the gate and the strength.
        moments: (4, 4) second moments of the foreground's colours [r, g, b, 1] at the working resolution, weighted
            by the mask: what the gate needs to measure any transform's change on this frame.
        mass: the mask's sum at the working resolution (pixels).
        histogram: (3, CUT_BINS) the whole frame's colour histogram per channel, each summing to 1.
        floor: the RMS change (levels) G makes to harmonious regions of this frame (`Harmonizer._scene_floor`), or
            None.
        mask_free: True when the frame had no mask (G's statistics from D's map).
        further: with `g_steps` > 1, the transform after all of G's steps (`Harmonizer._more_steps`); the gate still
            judges `coeffs`.
        steps: the `g_steps` of the harmonizer that made it (its `plan_shots` needs the same).
    """

    coeffs: torch.Tensor
    moments: torch.Tensor
    mass: float
    histogram: torch.Tensor
    floor: float | None = None
    mask_free: bool = False  # made from D's map: the gate is `mask_free_gate` times stricter
    further: torch.Tensor | None = None
    steps: int = 1


def cut_between(a: Estimate, b: Estimate, distance: float = CUT_DISTANCE) -> bool:
    """Whether a shot ends between two consecutive frames: their colour histograms are further apart than
    `distance` (mean total-variation distance over the channels)."""
    return float((a.histogram - b.histogram).abs().sum(1).mean()) / 2 > distance


def check_frame(frame: np.ndarray, mask: np.ndarray | None) -> None:
    """The contract of `Harmonizer.step`, with errors that say what to pass instead."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        what = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise ValueError(f"frame must be a uint8 (H, W, 3) RGB array, got {what} (tensors: call the Harmonizer)")
    if mask is not None and (not isinstance(mask, np.ndarray) or mask.shape != frame.shape[:2]
                             or mask.dtype != np.float32):
        what = f"{mask.dtype} {mask.shape}" if isinstance(mask, np.ndarray) else type(mask).__name__
        raise ValueError(f"mask must be a float32 (H, W) array in [0, 1] of the frame's size "
                         f"{frame.shape[:2]}, got {what}")


def mask_from_map(dmap: torch.Tensor) -> torch.Tensor:
    """D's disharmony map (B, 1, h, w) -> the mask that blends G's change in mask-free mode: each frame's map
    stretched so that its median (the background covers most of a frame) becomes 0 and its 99th percentile 1,
    then squared.

    D's raw map is low in contrast (about 0.2 on the background and 0.35-0.4 on a pasted foreground, for the
    UNet D and for `vharm fit-d`'s): used as it is, a fifth of the change would land on the background. The square
    keeps the map's core and thins the halo it spreads around an object: on the validation clips the whole-frame
    MSE went from 0.980x to 0.969x the composite's at the same foreground fMSE (0.940x, 0.941x; the UNet D).
    """
    flat = dmap.flatten(1)
    lo = flat.median(1).values.view(-1, 1, 1, 1)
    hi = torch.quantile(flat, 0.99, dim=1).view(-1, 1, 1, 1)
    return ((dmap - lo) / (hi - lo).clamp_min(1e-3)).clamp(0, 1) ** 2


def core_of_map(dmap: torch.Tensor, top: float = 0.03) -> torch.Tensor:
    """The mask G's statistics come from in mask-free mode: the `top` fraction of each frame's pixels that D's map
    (B, 1, h, w) finds most disharmonious, as a binary (B, 1, h, w) mask.

    D finds the pasted object (AUC 0.89-0.94 on the validation clips, `experiments/d_probe.py`) but its map spreads
    around it: statistics over the whole map mix the two regions and look harmonious. On the validation clips,
    with the UNet D shipped until 2026-12-02, the core's statistics took the mask-free fMSE from 0.99x to 0.94x the
    composite's (the whole true mask: 0.83x; `vharm evaluate --testset data/valset-real --method default
    default:nomask`); the change is still blended with `mask_from_map`.
    """
    threshold = torch.quantile(dmap.flatten(1), 1 - top, dim=1).view(-1, 1, 1, 1)
    return (dmap >= threshold).to(dmap.dtype)


def gate_change(coeffs: torch.Tensor, small: torch.Tensor, mask: torch.Tensor, min_change: float,
                full_change: float) -> torch.Tensor:
    """The do-no-harm gate: G's transform (B, 12, h, w) moved back toward the identity when the change it makes
    to `small` (B, 3, r, r) is small, measured as the RMS change over `mask` (B, 1, r, r) in 0-255 levels.

    A change of RMS c is scaled to 0 for c <= min_change, kept for c >= full_change, and ramped in between so
    that the resulting RMS rises linearly from 0 to full_change (a firm threshold: small changes are dropped
    like a soft threshold's, large ones pass unshrunk). Both 0: the transform as it is.

    Why: G's changes of a few levels are as often wrong as right (a white dog looks over-exposed, a red hoodie
    over-saturated), and a composite that close to harmonious loses more PSNR from a wrong change than it gains
    from a right one. The shipped weights' thresholds were chosen on the validation clips by
    `experiments/select_gate.py`.
    """
    if full_change <= 0:
        return coeffs
    eye = colortransform.identity(1, 1, 1, coeffs.device, coeffs.dtype)
    rms = change_rms(coeffs, small, mask)
    return eye + gate_scale(rms, min_change, full_change).view(-1, 1, 1, 1) * (coeffs - eye)


def raise_to_floor(min_change: float, full_change: float, floor: float | None) -> tuple[float, float]:
    """The gate's thresholds (levels) raised to the scene's floor, the change G makes to the scene's own harmonious
    regions (`Harmonizer._scene_floor`): a change no larger than that is not evidence of disharmony. The ramp keeps
    its proportion; with the gate off (full_change 0) or no floor, the thresholds as they are.

    Why: in a scene where G changes the background by 7-8 levels (the kite-surf clips' sea and sky), its 5-level
    change to a nearly right surfer is the scene's, not the surfer's (`docs/results.md`, "Temporal modes").

    Example:
        >>> raise_to_floor(5.0, 7.5, 8.0), raise_to_floor(5.0, 7.5, 2.0), raise_to_floor(0.0, 0.0, 8.0)
        ((8.0, 12.0), (5.0, 7.5), (0.0, 0.0))
    """
    if floor is None or full_change <= 0 or floor <= min_change:
        return min_change, full_change
    return floor, full_change * floor / min_change if min_change > 0 else max(full_change, floor)


def change_rms(coeffs: torch.Tensor, small: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The RMS change (B,) in 0-255 levels that the transform (B, 12, h, w) makes to `small` (B, 3, r, r) over `mask`
    (B, 1, r, r), the result clamped to [0, 1] as it is shown."""
    change = colortransform.apply_affine(small, coeffs).clamp(0, 1) - small
    weight = mask.sum((1, 2, 3)) * 3
    return ((change.square() * mask).sum((1, 2, 3)) / weight.clamp_min(1e-6)).sqrt() * 255


def gate_scale(rms: torch.Tensor, min_change: float, full_change: float) -> torch.Tensor:
    """The gate's factor on a change of RMS `rms` (B,) levels: 0 up to min_change, then a ramp that makes the kept
    RMS rise linearly to full_change, 1 beyond (`gate_change`). full_change 0: the gate is off.

    Example:
        >>> [round(v, 3) for v in gate_scale(torch.tensor([4.0, 6.0, 10.0]), 5.0, 7.5).tolist()]
        [0.0, 0.5, 1.0]
    """
    if full_change <= 0:
        return torch.ones_like(rms)
    if full_change > min_change:
        ramp = full_change * (rms - min_change) / ((full_change - min_change) * rms.clamp_min(1e-6))
    else:
        ramp = torch.ones_like(rms)
    return torch.where(rms <= min_change, torch.zeros_like(rms), torch.where(rms >= full_change, 1.0, ramp))


# Rec. 601 luma weights: the luminance of a change (`luma_change`, `brighten_change`).
LUMA = torch.tensor([0.299, 0.587, 0.114])


def luma_change(coeffs: torch.Tensor, small: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean luma change (B,) in [0, 1] units that the transform (B, 12, h, w) makes to `small` (B, 3, r, r) over
    `mask` (B, 1, r, r): positive where it brightens the foreground."""
    change = torch.einsum("c,bchw->bhw", LUMA.to(small), colortransform.apply_affine(small, coeffs) - small)
    return (change * mask[:, 0]).sum((1, 2)) / mask.sum((1, 2, 3)).clamp_min(1e-6)


def brighten_change(coeffs: torch.Tensor, brighter: torch.Tensor, gain: float) -> torch.Tensor:
    """The transform (B, 12, h, w) with the luminance part of its change (its luma, added equally to R, G and B)
    multiplied by `gain` where it brightens the foreground (`brighter` (B,), the mean luma change, above 0); its
    chroma part, and every darkening change, as they are.

    Why: G makes a tenth to two fifths of the change an exposure-shifted foreground needs (`docs/training.md`, "G
    brightens too little"): from colour statistics a dark object and an under-exposed one look alike, and the dark
    ones of its training scenes pull its estimate toward no change. Scaling darkening changes as well over-darkened
    foregrounds G had right (a clipped white dog) and harmed a mild validation clip, so only brightening is scaled.
    The gain acts after the gate: only a change large enough to pass it is scaled up. The shipped weights keep it at
    1: it helps the dev and validation clips (dev 0.665x -> 0.507x at 5) but multiplies G's wrong brightening of a
    held-out scene (`docs/training.md`, table `brighten-heldout`).

    Example:
        >>> brighter = colortransform.identity(1, 1, 1); brighter[:, 3::4] = 0.1  # +0.1 on every channel
        >>> [round(v, 6) for v in brighten_change(brighter, torch.tensor([0.1]), 3.0)[0, 3::4, 0, 0].tolist()]
        [0.3, 0.3, 0.3]
        >>> darker = colortransform.identity(1, 1, 1); darker[:, 3::4] = -0.1
        >>> bool((brighten_change(darker, torch.tensor([-0.1]), 3.0) == darker).all())
        True
    """
    if gain == 1:
        return coeffs
    up = (brighter > 0).to(coeffs.dtype).view(-1, 1, 1, 1)
    return coeffs + (gain - 1) * up * luma_part(coeffs)


def luma_part(coeffs: torch.Tensor) -> torch.Tensor:
    """The luminance part (B, 12, h, w) of a transform's change (coeffs - identity): its luma (Rec. 601), added
    equally to R, G and B; the rest of the change leaves every pixel's luma as it is.

    Example:
        >>> warmer = colortransform.identity(1, 1, 1); warmer[:, 3::4] = torch.tensor([0.1, 0.0, -0.1]).view(3, 1, 1)
        >>> [round(v, 4) for v in luma_part(warmer)[0, 3::4, 0, 0].tolist()]  # 0.299 * 0.1 - 0.114 * 0.1
        [0.0185, 0.0185, 0.0185]
    """
    eye = colortransform.identity(1, 1, 1, coeffs.device, coeffs.dtype)
    b, _, h, w = coeffs.shape
    change = (coeffs - eye).view(b, 3, 4, h, w)
    luma = torch.einsum("c,bckhw->bkhw", LUMA.to(coeffs), change)[:, None].expand(-1, 3, -1, -1, -1)
    return luma.reshape(b, 12, h, w)


def scale_change(coeffs: torch.Tensor, strength: float) -> torch.Tensor:
    """The transform's change scaled: identity + strength * (coeffs - identity), (B, 12, h, w).

    0 gives the identity (the input back exactly), 1 the transform itself, 2 twice its change. Scaling the transform
    rather than blending pixels keeps one transform per pixel, applied once (at full resolution, inside the mask),
    and lets strengths above 1 extrapolate the change.

    Example:
        >>> brighter = colortransform.identity(1, 1, 1); brighter[:, 3::4] = 0.1  # +0.1 on every channel
        >>> [round(v, 6) for v in scale_change(brighter, 2.0)[0, 3::4, 0, 0].tolist()]
        [0.2, 0.2, 0.2]
    """
    if strength == 1:
        return coeffs
    eye = colortransform.identity(1, 1, 1, coeffs.device, coeffs.dtype)
    return eye + strength * (coeffs - eye)


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> (1, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).float().div_(255)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(1, C, H, W) float in [0, 1] -> uint8 (H, W, C)."""
    return x[0].detach().mul(255).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous().cpu().numpy()
