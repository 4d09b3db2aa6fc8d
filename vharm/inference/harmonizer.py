"""The one inference path: `Harmonizer` serves the Python API, `vharm harmonize`, `vharm composite`, the demo
and the evaluation.

Per frame: the composite (and mask) are area-resized to the network's working resolution, G predicts a
per-pixel 3x4 colour transform there, the transform is bilinearly resampled onto the full-resolution pixels of
the mask's bounding box and applied, and the result is blended with the mask, so background pixels are the
input's exactly. Video is streamed: a decoder thread, the network, an encoder thread (PyAV and x264 release
the GIL), with bounded queues, so memory does not depend on the video's length.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from vharm.models import colortransform
from vharm.config import InferenceConfig, from_dict, read_json, validate_inference
from vharm.errors import VharmError
from vharm.io.files import check_output
from vharm.io.masks import mask_from_pixels as mask_from_array
from vharm.models import from_pretrained
from vharm.models.networks import Discriminator, Generator, check_inputs
from vharm.io.video import EncodeOptions, Frame, FrameSource, FrameWriter, StreamInfo

WEIGHTS_DIR = Path(__file__).parents[1] / "weights"
DEFAULT_WEIGHTS = "default"
MASK_EPS = 1 / 512  # mask values below half an 8-bit step count as background


def resolve_weights(name_or_dir: str | Path | None) -> Path:
    """A shipped weights name (e.g. "default"), a weights dir, or a run dir (its `best/` snapshot)."""
    if name_or_dir is None:
        name_or_dir = DEFAULT_WEIGHTS
    path = Path(name_or_dir)
    if len(path.parts) == 1 and (WEIGHTS_DIR / path / "config.json").is_file():  # a plain shipped name
        return WEIGHTS_DIR / path
    if (path / "best" / "config.json").is_file():
        return path / "best"
    if path.is_dir():
        return path
    shipped = sorted(p.parent.name for p in WEIGHTS_DIR.glob("*/config.json")) if WEIGHTS_DIR.is_dir() else []
    raise VharmError(f"{path}: no such weights; give a directory with config.json + generator.safetensors, "
                     f"a run directory, or a shipped name ({', '.join(shipped) or 'none are installed'})")


@dataclass
class Timing:
    """Seconds spent per stage, summed over frames (decode and encode run in their own threads)."""

    decode: float = 0.0
    network: float = 0.0
    apply: float = 0.0
    encode: float = 0.0
    frames: int = 0
    wall: float = 0.0
    warnings: list = field(default_factory=list)

    @property
    def fps(self) -> float:
        return self.frames / self.wall if self.wall else 0.0


class Harmonizer:
    """Harmonizes composites with a trained G (and, without a mask, D's disharmony map).

    Args:
        generator, discriminator: the networks (`from_pretrained` loads them; D only serves mask-free mode).
        device: "cpu" or "cuda".
        temporal_smoothing, min_change, full_change: `InferenceConfig` (EMA of the transform over frames; the
            do-no-harm gate of `gate_change`, in 0-255 levels). `from_pretrained` takes them from the weights.

    Example:
        >>> import torch
        >>> from vharm import Harmonizer
        >>> h = Harmonizer.from_pretrained()  # the weights shipped in the package
        >>> comp = torch.rand(1, 3, 120, 160)
        >>> mask = torch.zeros(1, 1, 120, 160); mask[..., 30:90, 40:120] = 1
        >>> pred = h(comp, mask)
        >>> pred.shape, bool((pred[..., :30, :] == comp[..., :30, :]).all())
        (torch.Size([1, 3, 120, 160]), True)
    """

    def __init__(self, generator: Generator, discriminator: Discriminator | None = None, device: str = "cpu",
                 temporal_smoothing: float = 0.0, min_change: float = 0.0, full_change: float = 0.0):
        if device == "cuda" and not torch.cuda.is_available():
            raise VharmError("--device cuda: this torch build or machine has no CUDA device")
        validate_inference(InferenceConfig(temporal_smoothing, min_change, full_change), "Harmonizer")
        self.device = torch.device(device)
        # channels_last: oneDNN's convolutions run G 20 % faster at 128^2 on this CPU (12.9 -> 10.2 ms).
        self.generator = generator.eval().to(self.device, memory_format=torch.channels_last)
        self.discriminator = (discriminator.eval().to(self.device, memory_format=torch.channels_last)
                              if discriminator is not None else None)
        self.resolution = generator.cfg.resolution
        self.temporal_smoothing = temporal_smoothing
        self.min_change, self.full_change = min_change, full_change

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path | None = None, device: str = "cpu",
                        temporal_smoothing: float | None = None, min_change: float | None = None,
                        full_change: float | None = None) -> "Harmonizer":
        """Loads shipped weights by name (default: "default"), a weights directory or a run directory.

        The inference options left None take the weights' own settings (`"inference"` in their config.json,
        `InferenceConfig`), or its defaults where they have none.
        """
        path = resolve_weights(name_or_dir)
        _, g, d = from_pretrained(path)
        cfg_file = path / "config.json"
        section = read_json(cfg_file).get("inference", {})
        if not isinstance(section, dict):
            raise VharmError(f"{cfg_file}: \"inference\" must be an object")
        cfg = from_dict(InferenceConfig, section, f"{cfg_file}:inference")
        validate_inference(cfg, f"{cfg_file}:inference")
        given = {"temporal_smoothing": temporal_smoothing, "min_change": min_change, "full_change": full_change}
        cfg = dataclasses.replace(cfg, **{k: v for k, v in given.items() if v is not None})
        validate_inference(cfg, "inference options (--temporal-smoothing, --min-change, --full-change over the "
                                "weights' settings)")
        return cls(g, d, device, cfg.temporal_smoothing, cfg.min_change, cfg.full_change)

    def _small(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, r, r) with OpenCV's area resampling, as the video path does on uint8."""
        r = self.resolution
        planes = [cv2.resize(np.ascontiguousarray(f.permute(1, 2, 0).cpu().numpy()), (r, r),
                             interpolation=cv2.INTER_AREA).reshape(r, r, -1) for f in x.float()]
        return torch.from_numpy(np.stack(planes)).permute(0, 3, 1, 2).to(self.device)

    @torch.no_grad()
    def disharmony_map(self, comp: torch.Tensor) -> torch.Tensor:
        """D's per-pixel disharmony map (B, 1, H, W) in [0, 1] for composites (B, 3, H, W) in [0, 1]."""
        check_inputs(comp)
        if self.discriminator is None:
            raise VharmError("these weights have no discriminator.safetensors: mask-free mode needs D")
        d = self.discriminator(self._small(comp.to(self.device)))
        return F.interpolate(d, size=comp.shape[-2:], mode="bilinear", align_corners=False).to(comp.device)

    @torch.no_grad()
    def predict(self, small: torch.Tensor, mask_small: torch.Tensor | None, state: dict | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """The network part, at the working resolution: (colour transform (B, 12, h, w), mask used).

        `mask_small` None means mask-free mode (D's map). `state` carries the previous transform between the
        frames of one video for temporal smoothing (an EMA; off when `temporal_smoothing` is 0). The change
        gate (`gate_change`) acts on the smoothed transform; the state keeps it ungated.
        """
        if mask_small is None:
            if self.discriminator is None:
                raise VharmError("these weights have no discriminator.safetensors: mask-free mode needs D")
            dmap = self.discriminator(small)
            mask_small = mask_from_map(dmap)
            coeffs = self.generator.transform(small, core_of_map(dmap))
        else:
            coeffs = self.generator.transform(small, mask_small)
        if state is not None:
            a = self.temporal_smoothing
            if a > 0 and "coeffs" in state and state["coeffs"].shape == coeffs.shape:
                coeffs = a * state["coeffs"] + (1 - a) * coeffs
            state["coeffs"] = coeffs
        return gate_change(coeffs, small, mask_small, self.min_change, self.full_change), mask_small

    @torch.no_grad()
    def harmonize(self, comp: torch.Tensor, mask: torch.Tensor | None, state: dict | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tensor path for a batch of frames (B, 3, H, W) in [0, 1]: returns (pred, mask used)."""
        check_inputs(comp, mask)
        comp = comp.to(self.device)
        small = self._small(comp)
        mask = None if mask is None else mask.to(self.device).clamp(0, 1)
        coeffs, mask_small = self.predict(small, None if mask is None else self._small(mask), state)
        if mask is None:
            mask = F.interpolate(mask_small, size=comp.shape[-2:], mode="bilinear", align_corners=False)
        pred = comp.clone()
        for b in range(comp.shape[0]):
            box = _bbox(mask[b, 0].cpu().numpy())
            if box is None:
                continue
            y0, y1, x0, x1 = box
            local = _sample(coeffs[b:b + 1], comp.shape[-2:], box)
            crop = comp[b:b + 1, :, y0:y1, x0:x1]
            m = mask[b:b + 1, :, y0:y1, x0:x1]
            g = colortransform.apply_affine(crop, local).clamp(0, 1)
            pred[b:b + 1, :, y0:y1, x0:x1] = m * g + (1 - m) * crop
        return pred, mask

    @torch.no_grad()
    def harmonize_frame(self, rgb: np.ndarray, mask: np.ndarray | None, state: dict | None = None
                        ) -> tuple[np.ndarray, np.ndarray, dict]:
        """Video path for one uint8 (H, W, 3) frame and float32 (H, W) mask (None: D's map).

        The same computation as `harmonize`, in OpenCV on uint8 at full resolution (a 1080p frame costs
        milliseconds here, ~100 ms in torch float). Returns (pred uint8, mask used float32, timings in s).
        """
        t0 = time.perf_counter()
        r = self.resolution
        h, w = rgb.shape[:2]
        # Resized at 16 bits (x 257 maps 0..255 onto 0..65535 exactly): within 1e-5 of the tensor path's float
        # resize, so API and CLI see the same network input, at half the cost of a float32 frame.
        small = cv2.resize(rgb.astype(np.uint16) * np.uint16(257), (r, r), interpolation=cv2.INTER_AREA)
        small = torch.from_numpy(small.astype(np.float32) / np.float32(65535)).permute(2, 0, 1).unsqueeze(0)
        small = small.to(self.device)
        mask_small = None if mask is None else torch.from_numpy(
            cv2.resize(mask, (r, r), interpolation=cv2.INTER_AREA)).view(1, 1, r, r).to(self.device)
        coeffs, mask_small = self.predict(small, mask_small, state)
        if mask is None:
            mask = cv2.resize(mask_small[0, 0].cpu().numpy(), (w, h), interpolation=cv2.INTER_LINEAR)
        t1 = time.perf_counter()
        pred = rgb.copy()
        box = _bbox(mask)
        if box is not None:
            y0, y1, x0, x1 = box
            crop, m = rgb[y0:y1, x0:x1], np.ascontiguousarray(mask[y0:y1, x0:x1], dtype=np.float32)
            g = _apply_uint8(crop, coeffs, (h, w), box)
            pred[y0:y1, x0:x1] = cv2.blendLinear(g, crop, m, 1 - m)
        return pred, mask, {"network": t1 - t0, "apply": time.perf_counter() - t1}

    def step(self, frame: np.ndarray, mask: np.ndarray | None, state: dict | None = None
             ) -> tuple[np.ndarray, np.ndarray, dict]:
        """One frame: uint8 (H, W, 3) and float32 (H, W) mask (None: D's map) -> (pred, mask used, state)."""
        state = {} if state is None else state
        pred, used, _ = self.harmonize_frame(frame, mask, state)
        return pred, used, state

    def __call__(self, comp: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Harmonizes (B, 3, H, W) or (B, T, 3, H, W) composites in [0, 1]; mask (B, [T,] 1, H, W) or None (D's map).

        Frames of a (B, T, ...) clip are processed in order, with temporal smoothing if it is on.
        """
        if comp.ndim == 5:
            if mask is not None and mask.ndim != 5:
                raise ValueError(f"a (B, T, 3, H, W) comp needs a (B, T, 1, H, W) mask, got {tuple(mask.shape)}")
            out = []
            for b in range(comp.shape[0]):
                state: dict = {}
                out.append(torch.cat([self.harmonize(comp[b, t:t + 1], None if mask is None else mask[b, t:t + 1],
                                                     state)[0] for t in range(comp.shape[1])]))
            return torch.stack(out)
        return self.harmonize(comp, mask, {})[0]

    def harmonize_video(self, input: str | Path, mask: str | Path | None = None, output: str | Path | None = None,
                        **options) -> Timing:
        """Harmonizes a video file, frame directory or image into `output` (see `harmonize_video` below)."""
        return harmonize_video(self, input, mask, output, **options)


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1) of the pixels above MASK_EPS, or None for an empty mask."""
    rows = np.flatnonzero(mask.max(axis=1) > MASK_EPS)
    if len(rows) == 0:
        return None
    cols = np.flatnonzero(mask.max(axis=0) > MASK_EPS)
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


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

    D finds the pasted object (AUC 0.94 on the validation clips, `benchmarks/d_probe.py`) but its map spreads
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
    `benchmarks/select_gate.py`.
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


def _sample(coeffs: torch.Tensor, size: tuple[int, int], box) -> torch.Tensor:
    """A (1, 12, gh, gw) transform grid resampled at the full-res pixel centres inside `box`, bilinear."""
    h, w = size
    y0, y1, x0, x1 = box
    ys = (torch.arange(y0, y1, device=coeffs.device, dtype=coeffs.dtype) + 0.5) / h * 2 - 1
    xs = (torch.arange(x0, x1, device=coeffs.device, dtype=coeffs.dtype) + 0.5) / w * 2 - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.stack([gx, gy], dim=-1).unsqueeze(0)
    return F.grid_sample(coeffs, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _apply_uint8(crop: np.ndarray, coeffs: torch.Tensor, size: tuple[int, int], box) -> np.ndarray:
    """Applies a (1, 12, gh, gw) transform grid to the uint8 crop `box` of an (H, W) frame."""
    if coeffs.shape[-2:] == (1, 1):  # one 3x4 matrix: OpenCV's fused uint8 transform (colours in 0-255 units)
        mat = coeffs.reshape(3, 4).cpu().double().numpy()
        mat[:, 3] *= 255
        return cv2.transform(crop, mat)
    a = _sample(coeffs, size, box)[0].permute(1, 2, 0).cpu().numpy().reshape(*crop.shape[:2], 3, 4)
    x = crop.astype(np.float32) / 255
    out = (a[..., :3] * x[..., None, :]).sum(-1) + a[..., 3]
    return np.clip(out * 255 + 0.5, 0, 255).astype(np.uint8)


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> (1, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).float().div_(255)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(1, C, H, W) float in [0, 1] -> uint8 (H, W, C)."""
    return x[0].mul(255).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


class MaskSource:
    """Masks for each frame: a static image, a video/directory of masks, the frames' alpha, or none (D)."""

    def __init__(self, path: Path | None, like: FrameSource, no_mask: bool):
        self.path, self.static, self.source = path, None, None
        if no_mask and path is not None:
            raise VharmError("--no-mask and -m/--mask exclude each other: give one")
        if path is None:
            return
        self.source = FrameSource(Path(path), gray=True)
        if self.source.size != like.size:
            raise VharmError(f"{path}: mask size {self.source.size[0]}x{self.source.size[1]} differs from the "
                             f"input's {like.size[0]}x{like.size[1]}")
        if self.source.count == 1:
            frame = next(iter(self.source))
            self.static = frame_mask(frame)
        elif like.count and self.source.count and self.source.count != like.count:
            raise VharmError(f"{path}: {self.source.count} mask frames for {like.count} input frames "
                             "(give one mask per frame, or one image for all)")

    def masks(self):
        """Yields float32 (H, W) masks, or None per frame to take the frame's alpha or D's map."""
        if self.source is None:
            return itertools.repeat(None)
        if self.static is not None:
            return itertools.repeat(self.static)
        return (frame_mask(f) for f in self.source)


def frame_mask(frame: Frame) -> np.ndarray:
    """A mask frame as float32 (H, W) in [0, 1]: its alpha if it carries one (not constant), else its pixels."""
    alpha = frame.alpha
    return mask_from_array(alpha if alpha is not None and alpha.min() != alpha.max() else frame.rgb)


_DONE = object()


def _producer(iterable, q: queue.Queue, errors: list, stop: threading.Event) -> None:
    """Feeds `q` from `iterable` in a thread; always ends with _DONE (the consumer drains until it sees it)."""
    try:
        for item in iterable:
            if stop.is_set():
                break
            q.put(item)
    except BaseException as e:  # noqa: BLE001 - handed to the main thread
        errors.append(e)
    finally:
        q.put(_DONE)


def harmonize_video(harmonizer: Harmonizer, input, mask=None, output=None, *, no_mask: bool = False,
                    save_mask=None, overwrite: bool = False, start: int = 0, frames: int | None = None,
                    encode: EncodeOptions | None = None, progress: bool = False, skip_bad_frames: bool = False,
                    warn=None) -> Timing:
    """Harmonizes INPUT (video file, frame dir or image) with MASK into OUTPUT (same forms), streaming.

    Args:
        harmonizer: the loaded model.
        input: composite video/frames/image.
        mask: mask video/frames/image (one image = static mask); None = RGBA alpha, or D's map with `no_mask`.
        output: output video/frames dir/image; refused if it exists and not `overwrite`.
        no_mask: the paper's mask-free mode, O = G(I, D(I)) (G's statistics from the core of D's map:
            `core_of_map`).
        save_mask: also write the mask actually used here.
        start, frames: process frames [start, start + frames) only.
        encode: x264 settings for video outputs.
        progress: show a progress bar (frames, fps, ETA).
        skip_bad_frames: replace a frame that fails to decode by the previous output (else: an error).

    Returns:
        Timing with the frame count, wall time and seconds per stage.
    """
    warn = warn or _stderr
    source = FrameSource(Path(input), skip_bad_frames)
    masks = MaskSource(Path(mask) if mask is not None else None, source, no_mask)
    if output is None:
        raise VharmError("no output given (-o OUTPUT)")
    inputs = (source.path, masks.path)
    total = source.count
    if total is not None:
        total = max(0, min(total - start, frames if frames is not None else total))
    items = itertools.islice(zip(source, masks.masks()), start, None if frames is None else start + frames)
    timing = run_stream(harmonizer, items, source.info, output, inputs=inputs, no_mask=no_mask,
                        save_mask=save_mask, overwrite=overwrite, total=total, encode=encode, progress=progress,
                        warn=warn, mask_name=str(mask or input))
    if source.count and source.kind == "video" and frames is None and start + timing.frames != source.count:
        warn(f"vharm: warning: {input}: the container claims {source.count} frames but {start + timing.frames} "
             "decoded; all decoded frames were processed")
    elif (source.count is None and frames is None and source.duration and source.decoded_until is not None
          and source.decoded_until + 2 / float(source.fps) < source.duration):
        warn(f"vharm: warning: {input}: the container lasts {source.duration:.2f} s but decoding stopped at "
             f"{source.decoded_until:.2f} s (a truncated file?); all decoded frames were processed")
    return timing


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def run_stream(harmonizer: Harmonizer | None, items, info: StreamInfo, output, *, inputs=(), no_mask=False,
               save_mask=None, overwrite=False, total=None, encode=None, progress=False, warn=_stderr,
               mask_name="mask") -> Timing:
    """Decode -> harmonize -> encode over `items` = (Frame, mask (H, W) float or None) in three threads.

    With `harmonizer` None the composites are written as they are (`vharm composite` without --harmonize).
    """
    check_output(Path(output), overwrite, inputs)
    if save_mask is not None:
        check_output(Path(save_mask), overwrite, (*inputs, Path(output)))
        if Path(save_mask).absolute() == Path(output).absolute():
            raise VharmError(f"{save_mask}: --save-mask and -o name the same file; choose another name")
    timing = Timing()
    t_start = time.perf_counter()
    q_in: queue.Queue = queue.Queue(maxsize=4)
    q_out: queue.Queue = queue.Queue(maxsize=4)
    errors: list = []
    stop = threading.Event()
    state: dict = {}
    warned_empty = False

    def timed(it):
        it = iter(it)
        while True:
            t = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            timing.decode += time.perf_counter() - t
            yield item

    def write_all(writer: FrameWriter, mask_writer: FrameWriter | None):
        try:
            while (item := q_out.get()) is not _DONE:
                rgb, mask_u8, frame = item
                t = time.perf_counter()
                writer.write(rgb, frame)
                if mask_writer is not None:
                    mask_writer.write(mask_u8, frame)
                timing.encode += time.perf_counter() - t
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            errors.append(e)
            stop.set()
            while q_out.get() is not _DONE:  # drain so the main thread never blocks
                pass

    reader = threading.Thread(target=_producer, args=(timed(items), q_in, errors, stop), daemon=True)
    # The decoder and encoder threads need CPU too: with torch on every core the three stages fight (1080p on 2
    # cores, veryfast: 15 fps with 2 torch threads, 21 fps with 1). Give the network half the cores.
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    bar = tqdm(total=total, unit="frame", disable=not progress, dynamic_ncols=True)
    mask_out = FrameWriter(Path(save_mask), info, overwrite, encode, copy_audio=False, warn=warn) \
        if save_mask is not None else _Null()
    try:
        with FrameWriter(Path(output), info, overwrite, encode, warn=warn) as writer, mask_out as mask_writer:
            writer_thread = threading.Thread(target=write_all, args=(writer, mask_writer), daemon=True)
            reader.start()
            writer_thread.start()
            try:
                previous = None
                while (item := q_in.get()) is not _DONE and not errors:
                    frame, m = item
                    if frame.rgb is None:
                        if previous is None:
                            raise VharmError(f"{inputs[0]}: the first frame failed to decode; nothing to repeat")
                        warn(f"vharm: warning: {frame.source or inputs[0]}: frame {timing.frames} failed to decode; "
                             "repeating the previous output")
                        q_out.put((previous[0], previous[1], Frame(previous[0], None, frame.name, frame.pts)))
                        timing.frames += 1
                        bar.update(1)
                        continue
                    if m is None and frame.alpha is not None and not no_mask:
                        m = frame.alpha
                    if harmonizer is None:
                        pred, used = frame.rgb, m
                    else:
                        if m is None and not no_mask:
                            raise VharmError(f"{inputs[0]}: no mask: give -m MASK, use RGBA frames, or --no-mask")
                        if m is not None and m.shape != frame.rgb.shape[:2]:
                            raise VharmError(f"{mask_name}: mask size {m.shape[1]}x{m.shape[0]} differs from "
                                             f"frame {frame.name}'s {frame.rgb.shape[1]}x{frame.rgb.shape[0]}")
                        if m is not None and m.max() <= MASK_EPS and not warned_empty:
                            warn(f"vharm: warning: {mask_name}: mask is empty at frame {timing.frames}: "
                                 "nothing to harmonize there, the frame is copied")
                            warned_empty = True
                        pred, used, t = harmonizer.harmonize_frame(frame.rgb, m, state)
                        timing.network += t["network"]
                        timing.apply += t["apply"]
                    mask_u8 = None
                    if mask_writer is not None:
                        mask_u8 = np.repeat(np.round(np.clip(used, 0, 1) * 255).astype(np.uint8)[..., None], 3, 2)
                    q_out.put((pred, mask_u8, frame))
                    previous = (pred, mask_u8)
                    timing.frames += 1
                    bar.update(1)
            finally:
                stop.set()
                q_out.put(_DONE)
                writer_thread.join()
                while reader.is_alive():  # unblock a reader waiting on a full queue
                    try:
                        q_in.get(timeout=0.1)
                    except queue.Empty:
                        pass
            if errors:
                raise errors[0]
            if timing.frames == 0:
                raise VharmError(f"{inputs[0] if inputs else output}: no frames to process (check --start/--frames)")
    finally:
        bar.close()
        torch.set_num_threads(torch_threads)
    timing.wall = time.perf_counter() - t_start
    return timing


class _Null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
