"""The one inference path: `Harmonizer.step` harmonizes one frame, for the Python API, `vharm harmonize`,
`vharm composite`, the demo, the evaluation and training's validation on real clips.

Per frame: the composite (and mask) are area-resized to the network's working resolution, G predicts a 3x4
colour transform there (one per frame, or a grid), the do-no-harm gate may move it back toward the identity,
the strength scales its change (`scale_change`), and the transform is applied to the full-resolution pixels of
the mask's bounding box and blended with the mask (`colortransform.apply_to_frame`), so background pixels are the
input's exactly. The recurrent state (the previous frame's transform, for temporal smoothing) is explicit:
`pred, mask, state = h.step(frame, mask, state)`, as RobustVideoMatting's `fgr, pha, *rec = model(src, *rec)`.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.nn import functional as F

from vharm.config import InferenceConfig, from_dict, validate
from vharm.errors import VharmError
from vharm.models import colortransform
from vharm.models.networks import Discriminator, Generator, check_inputs, read_weights_config, resolve_weights


class Harmonizer:
    """Harmonizes composites with a trained G (and, without a mask, D's disharmony map).

    Args:
        generator, discriminator: the networks (`from_pretrained` loads them; D only serves mask-free mode).
        device: "cpu" or "cuda" (the network runs there; the full-resolution apply runs on the CPU).
        temporal_smoothing, min_change, full_change, strength: `InferenceConfig` (EMA of the transform over frames;
            the do-no-harm gate of `gate_change`, in 0-255 levels; the scale of the gated change, `scale_change`).
            `from_pretrained` takes them from the weights.

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
                 strength: float = 1.0):
        if device == "cuda" and not torch.cuda.is_available():
            raise VharmError("--device cuda: this torch build or machine has no CUDA device")
        validate(InferenceConfig(temporal_smoothing, min_change, full_change, strength), "Harmonizer")
        self.device = torch.device(device)
        # channels_last: oneDNN's convolutions run G 20 % faster at 128^2 on this CPU (12.9 -> 10.2 ms).
        self.generator = generator.eval().to(self.device, memory_format=torch.channels_last)
        self.discriminator = (discriminator.eval().to(self.device, memory_format=torch.channels_last)
                              if discriminator is not None else None)
        self.resolution = generator.cfg.resolution
        self.temporal_smoothing = temporal_smoothing
        self.min_change, self.full_change = min_change, full_change
        self.strength = strength

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path | None = None, device: str = "cpu",
                        temporal_smoothing: float | None = None, min_change: float | None = None,
                        full_change: float | None = None, strength: float | None = None) -> "Harmonizer":
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
                 "strength": strength}
        cfg = dataclasses.replace(cfg, **{k: v for k, v in given.items() if v is not None})
        validate(cfg, "inference options (--temporal-smoothing, --min-change, --full-change, --strength over the "
                      "weights' settings)")
        return cls(g, d, device, **dataclasses.asdict(cfg))

    def with_options(self, **options) -> "Harmonizer":
        """The same networks with other `InferenceConfig` settings (those not given stay), checked like
        `from_pretrained`'s: `vharm serve` previews and exports each page's settings with its one loaded model."""
        cfg = dataclasses.replace(self.inference_config, **options)
        validate(cfg, "inference options")
        return Harmonizer(self.generator, self.discriminator, str(self.device), **dataclasses.asdict(cfg))

    def save_pretrained(self, path: str | Path) -> None:
        """Writes G, D (if any) and the inference settings: a weights directory `from_pretrained` loads."""
        self.generator.save_pretrained(path, inference=dataclasses.asdict(self.inference_config))
        if self.discriminator is not None:
            self.discriminator.save_pretrained(path)
        else:  # a D left from earlier weights in `path` would be loaded with this G
            (Path(path) / Discriminator.WEIGHTS).unlink(missing_ok=True)

    @property
    def inference_config(self) -> InferenceConfig:
        return InferenceConfig(self.temporal_smoothing, self.min_change, self.full_change, self.strength)

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

    def _predict(self, small: torch.Tensor, mask_small: torch.Tensor | None, state: torch.Tensor | None):
        """The network part, at the working resolution: (gated, scaled transform (1, 12, h, w), mask used, new
        state).

        `mask_small` None means mask-free mode: G's statistics come from the core of D's map, the change is
        blended with the stretched map. The state is the smoothed transform before the gate and the strength, so
        that the gate acts on each frame's estimate and the EMA is not pulled toward the identity.
        """
        if mask_small is None:
            dmap = self._discriminate(small)
            mask_small = mask_from_map(dmap)
            coeffs = self.generator.transform(small, core_of_map(dmap))
        else:
            coeffs = self.generator.transform(small, mask_small)
        a = self.temporal_smoothing
        if a > 0 and state is not None and state.shape == coeffs.shape:
            coeffs = a * state + (1 - a) * coeffs
        gated = gate_change(coeffs, small, mask_small, self.min_change, self.full_change)
        return scale_change(gated, self.strength), mask_small, coeffs

    @torch.no_grad()
    def step(self, frame: np.ndarray, mask: np.ndarray | None, state: torch.Tensor | None = None,
             timing=None) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
        """Harmonizes one frame: the only inference step.

        Args:
            frame: uint8 (H, W, 3) RGB composite.
            mask: float32 (H, W) foreground in [0, 1]; None: mask-free (D's map finds the region).
            state: what the previous frame of the same video returned (None for the first frame, or for an
                unrelated frame).
            timing: optional `Timing`: the seconds spent in the network and in the full-resolution apply are
                added to it.

        Returns:
            (pred uint8 (H, W, 3), mask used float32 (H, W), state for the next frame).
        """
        t0 = time.perf_counter()
        check_frame(frame, mask)
        r, (h, w) = self.resolution, frame.shape[:2]
        mask_small = None if mask is None else torch.from_numpy(
            cv2.resize(mask, (r, r), interpolation=cv2.INTER_AREA)).view(1, 1, r, r).to(self.device)
        coeffs, mask_small, state = self._predict(self._small(frame), mask_small, state)
        if mask is None:
            mask = cv2.resize(mask_small[0, 0].cpu().numpy(), (w, h), interpolation=cv2.INTER_LINEAR)
        t1 = time.perf_counter()
        pred = colortransform.apply_to_frame(frame, coeffs, mask)
        if timing is not None:
            timing.network += t1 - t0
            timing.apply += time.perf_counter() - t1
        return pred, mask, state

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

    D's raw map is low in contrast (about 0.2 on the background and 0.4 on a pasted foreground after the
    shipped training): used as it is, a fifth of the change would land on the background. The square keeps the
    map's core and thins the halo it spreads around an object: on the validation clips the whole-frame MSE went
    from 0.980x to 0.969x the composite's at the same foreground fMSE (0.940x, 0.941x).
    """
    flat = dmap.flatten(1)
    lo = flat.median(1).values.view(-1, 1, 1, 1)
    hi = torch.quantile(flat, 0.99, dim=1).view(-1, 1, 1, 1)
    return ((dmap - lo) / (hi - lo).clamp_min(1e-3)).clamp(0, 1) ** 2


def core_of_map(dmap: torch.Tensor, top: float = 0.03) -> torch.Tensor:
    """The mask G's statistics come from in mask-free mode: the `top` fraction of each frame's pixels that D's map
    (B, 1, h, w) finds most disharmonious, as a binary (B, 1, h, w) mask.

    D finds the pasted object (AUC 0.94 on the validation clips, `experiments/d_probe.py`) but its map spreads
    around it: statistics over the whole map mix the two regions and look harmonious. On the validation clips
    the core's statistics took the mask-free fMSE from 0.99x to 0.94x the composite's (the whole true mask:
    0.83x; `vharm evaluate --testset data/valset-real --method default default:nomask`); the change is still
    blended with `mask_from_map`.
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
    change = colortransform.apply_affine(small, coeffs).clamp(0, 1) - small
    weight = mask.sum((1, 2, 3)) * 3
    rms = ((change.square() * mask).sum((1, 2, 3)) / weight.clamp_min(1e-6)).sqrt() * 255
    if full_change > min_change:
        ramp = full_change * (rms - min_change) / ((full_change - min_change) * rms.clamp_min(1e-6))
    else:
        ramp = torch.ones_like(rms)
    scale = torch.where(rms <= min_change, torch.zeros_like(rms), torch.where(rms >= full_change, 1.0, ramp))
    return eye + scale.view(-1, 1, 1, 1) * (coeffs - eye)


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
