"""Typed hyperparameters with the paper's defaults, presets by name, JSON round trip.

Every field of these dataclasses becomes a `vharm train` flag (see `vharm.cli`), every run writes the
resolved config to `config.json`, and `vharm train --dry-run` prints it.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path

from vharm.errors import VharmError


@dataclass
class ModelConfig:
    """Generator and discriminator architecture."""

    # unet (paper) | resnet (Johnson et al.) | dih (Tsai et al.): paper Table III; stats: an MLP on the colour
    # statistics of foreground and background (one transform per frame; `widths` are its hidden layers)
    backbone: str = "unet"
    head: str = "affine"  # affine: per-pixel 3x4 colour transform | rgb: the paper's direct tanh image
    # Channels per UNet level (depth = len(widths)). Doubling per level makes every level cost the same;
    # starting at 8 keeps 256^2 training at ~1 step/s (batch 4) on 2 CPU cores.
    widths: tuple[int, ...] = (8, 16, 32, 64, 128, 256)
    norm: str = "group"  # group | batch | instance | none (group works with batch 1 and at test time)
    resolution: int = 256  # working resolution in pixels (square); full-res output via the colour transform
    # affine head: average the per-pixel transforms over the foreground in grid x grid cells (1 = one transform
    # per frame, 0 = per pixel). Smooth transforms generalise and flicker less than free per-pixel ones.
    grid: int = 0
    disc_widths: tuple[int, ...] = (4, 8, 16, 32, 64, 128)  # D is a UNet too (paper Sec. III-B)
    use_mask: bool = True  # False: G sees an all-zero mask channel (paper Table IV, "trained without mask")


@dataclass
class InferenceConfig:
    """Inference defaults that ship with weights (the "inference" section of their config.json)."""

    temporal_smoothing: float = 0.0  # EMA of the colour transform over frames, in [0, 1); 0 = off
    # Do-no-harm gate on G's change, in 0-255 levels RMS over the mask at the working resolution: a change
    # below min_change is dropped, one above full_change is kept whole, and in between it is ramped in (the
    # output stays continuous in G's estimate, so a change near the threshold does not flicker on and off).
    # G is unsure of changes that small: a naturally bright or saturated object looks like a slightly
    # over-exposed or over-saturated one from colour statistics. Both 0 = off.
    min_change: float = 0.0
    full_change: float = 0.0


def validate_inference(cfg: InferenceConfig, where: str) -> None:
    """Raises VharmError (naming `where`, e.g. a config file or a flag) for values outside their range."""
    if not 0 <= cfg.temporal_smoothing < 1:
        raise VharmError(f"{where}: temporal smoothing must be in [0, 1), got {cfg.temporal_smoothing}")
    if not 0 <= cfg.min_change <= cfg.full_change:
        raise VharmError(f"{where}: the change gate needs 0 <= min_change <= full_change (levels), got "
                         f"{cfg.min_change} and {cfg.full_change}")


@dataclass
class LossConfig:
    """Paper Eqs. 1-2: L_G = MSE + lambda1 * temporal + lambda2 * adversarial."""

    lambda_temporal: float = 2e-2  # lambda1
    lambda_adv: float = 1e-2  # lambda2
    temporal: str = "regional"  # regional (paper) | global (whole frame, Lai et al.) | none
    use_discriminator: bool = True
    # Divide each pair's reconstruction error by the composite's own (+ relative_eps): a mildly-off composite
    # weighs as much as a badly-off one, so "leave it alone" is learned. The paper's plain MSE: False.
    relative: bool = False
    relative_eps: float = 1e-3  # on [-1, 1] colours, per pixel


@dataclass
class DataConfig:
    """Synthetic two-frame pairs (the paper's Dancing-MSCOCO recipe) generated on the fly or read from disk."""

    sources: tuple[str, ...] = ()  # folders of images+masks or frames+masks (see vharm.data.sources)
    dataset: str = ""  # a `vharm make-dataset` directory; used instead of `sources` when set
    families: tuple[str, ...] = ("reinhard", "exposure", "gamma", "hue", "saturation", "temperature", "contrast",
                                 "curve")
    # Validation recolours with a family training never sees, so checkpoint selection measures generalisation.
    val_families: tuple[str, ...] = ("lut",)
    min_fg: float = 0.10  # paper: drop images whose foreground covers < 10 % of the frame
    max_motion: float = 0.04  # max foreground translation between the two frames, fraction of the size
    real_pair_prob: float = 0.0  # chance of a pair of real consecutive video frames (DIS flow, estimated)
    mild_prob: float = 0.15  # chance of a nearly harmonious composite (the change scaled by 0-0.3)
    # Chance that the foreground is another item's mask laid on a random crop of any source image: every region
    # of a real photo fits its scene, so this gives as many distinct foregrounds as there are crops.
    random_mask_prob: float = 0.0
    val_pairs: int = 64  # pairs held out for validation (deterministic, from the same sources)
    # A `vharm make-testset` directory of clips from videos kept out of `sources`: its real clips are scored at
    # every validation through `vharm harmonize`'s path, and this score picks the `best` snapshot.
    val_testset: str = ""


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping; `model`, `loss` and `data` hold the rest."""

    name: str = "run"
    preset: str = ""  # the preset this config started from ("" = none)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    steps: int = 20000
    batch_size: int = 4
    lr: float = 2e-4  # paper
    # constant (paper) | cosine (to 0 at `steps`; a function of the step, so resume is exact as long as `steps` stays)
    lr_schedule: str = "constant"
    beta1: float = 0.5  # paper preset keeps its 0.999; 0.5 is the usual GAN value and trained steadier here
    beta2: float = 0.999
    seed: int = 0
    val_every: int = 500  # steps between validations (PSNR / fMSE / temporal loss, stats.jsonl)
    snapshot_every: int = 1000  # steps between weight snapshots (network-snapshot-NNNNNN/)
    ema: float = 0.0  # weight EMA decay for the snapshot generator (0 = off)
    threads: int = 0  # torch intra-op threads (0 = torch's default)
    # bf16 autocast for the training step: ~2x the fp32 steps/s on a CPU with AMX/AVX-512 BF16 units, ~10x slower
    # on an AVX2-only one (`vharm benchmark` measures both on yours). Validation always runs in fp32.
    precision: str = "fp32"  # fp32 | bf16
    device: str = "cpu"


def _preset(name: str) -> TrainConfig:
    if name == "tiny":  # for tests: seconds on a laptop core
        return TrainConfig(
            name="tiny",
            preset="tiny",
            model=ModelConfig(widths=(8, 16, 32), disc_widths=(8, 16), resolution=64),
            steps=200,
            batch_size=2,
            val_every=50,
            snapshot_every=100,
            data=DataConfig(val_pairs=4, val_families=DataConfig.families),
        )
    if name == "cpu":  # the weights we ship: one transform per frame from colour statistics, minutes to train
        return TrainConfig(name="cpu", preset="cpu",
                           model=ModelConfig(backbone="stats", widths=(64, 64), resolution=128, grid=1),
                           loss=LossConfig(relative=True, relative_eps=2e-3),
                           data=DataConfig(real_pair_prob=0.2, random_mask_prob=0.5), steps=400, batch_size=32,
                           lr=1e-3, beta1=0.9, val_every=50, snapshot_every=50)
    if name == "unet":  # the UNet recipe of the 2026-11 weights (a 1.97 M-parameter UNet, one transform per frame)
        return TrainConfig(name="unet", preset="unet", model=ModelConfig(grid=1), loss=LossConfig(relative=True),
                           data=DataConfig(mild_prob=0.3, real_pair_prob=0.2), ema=0.998)
    if name == "paper":  # Huang et al. Sec. IV: 512^2, batch 1, beta1 0.999, 45 epochs of 29,818 pairs
        return TrainConfig(
            name="paper",
            preset="paper",
            model=ModelConfig(
                head="rgb",
                widths=(64, 128, 256, 512, 512, 512, 512, 512),
                disc_widths=(64, 128, 256, 512, 512, 512, 512, 512),
                norm="instance",
                resolution=512,
            ),
            steps=45 * 29818,
            batch_size=1,
            beta1=0.999,
        )
    raise VharmError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")


PRESETS = ("tiny", "cpu", "unet", "paper")


def preset(name: str) -> TrainConfig:
    """Returns a fresh TrainConfig for a preset name (`tiny`, `cpu`, `unet` or `paper`)."""
    return _preset(name)


def to_dict(cfg) -> dict:
    """A dataclass as plain JSON-able data (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _coerce(value, tp, where: str):
    """Checks/converts one JSON value against a dataclass field type; raises VharmError naming the field."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise VharmError(f"{where}: expected an object, got {type(value).__name__}")
        return from_dict(tp, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise VharmError(f"{where}: expected a list, got {type(value).__name__}")
        (item,) = {a for a in typing.get_args(tp) if a is not Ellipsis}
        return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise VharmError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise VharmError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise VharmError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise VharmError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp}")


def from_dict(cls, data: dict, where: str = "config"):
    """Builds a config dataclass from JSON data, checking every type; unknown keys are an error."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise VharmError(f"{where}: unknown key(s) {', '.join(unknown)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def read_json(path: Path, missing: str = "no such file", shape: str = "") -> dict:
    """A JSON object from a file (parsed as data, never executed); one-line errors name the file.

    `missing` and `shape` (e.g. 'with a "model" section') complete the messages for a missing file / non-object.
    """
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise VharmError(f"{path}: {missing}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VharmError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise VharmError(f"{path}: expected an object {shape}".rstrip())
    return data


def load_json(path: Path, cls):
    """Reads a config JSON file into `cls`, checking every type."""
    return from_dict(cls, read_json(path, "no such config file"), where=str(path))


def validate_train(cfg: TrainConfig) -> None:
    """Teaching errors for impossible training settings (before anything is written)."""
    validate_model(cfg.model)
    for key in ("steps", "batch_size", "val_every", "snapshot_every"):
        if getattr(cfg, key) < 1:
            raise VharmError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(cfg, key)}")
    if cfg.lr <= 0 or not 0 <= cfg.ema < 1 or cfg.data.val_pairs < 1:
        raise VharmError("--lr must be > 0, --ema in [0, 1) and --val-pairs >= 1")
    if cfg.lr_schedule not in ("constant", "cosine"):
        raise VharmError(f"--lr-schedule must be constant or cosine, got {cfg.lr_schedule!r}")
    if cfg.precision not in ("fp32", "bf16"):
        raise VharmError(f"--precision must be fp32 or bf16, got {cfg.precision!r}")
    if cfg.device not in ("cpu", "cuda"):
        raise VharmError(f"device must be cpu or cuda, got {cfg.device!r}")


def validate_model(cfg: ModelConfig) -> None:
    """Teaching errors for impossible model settings."""
    choices = {"backbone": ("unet", "resnet", "dih", "stats"), "head": ("affine", "rgb"),
               "norm": ("group", "batch", "instance", "none")}
    for key, allowed in choices.items():
        if getattr(cfg, key) not in allowed:
            raise VharmError(f"model.{key} is {getattr(cfg, key)!r}: choose one of {', '.join(allowed)}")
    if cfg.backbone == "stats" and cfg.head != "affine":
        raise VharmError("model.backbone stats predicts one colour transform per frame: it needs model.head affine")
    if not cfg.widths or not cfg.disc_widths or min(cfg.widths + cfg.disc_widths) < 1:
        raise VharmError("model.widths and model.disc_widths need at least one positive entry")
    # Bounds far above any sensible model, so that a hostile config.json cannot ask for terabytes.
    if max(cfg.widths + cfg.disc_widths) > 4096 or max(len(cfg.widths), len(cfg.disc_widths)) > 10:
        raise VharmError("model.widths/disc_widths: at most 10 levels of at most 4096 channels")
    if cfg.resolution > 4096:
        raise VharmError(f"model.resolution {cfg.resolution} is above 4096")
    step = 2 ** (max(len(cfg.widths), len(cfg.disc_widths)) - 1)
    if cfg.grid < 0 or cfg.grid and cfg.resolution % cfg.grid:
        raise VharmError(f"model.grid {cfg.grid} must be 0 or divide model.resolution {cfg.resolution}")
    if cfg.resolution < step or cfg.resolution % step:
        raise VharmError(f"model.resolution {cfg.resolution} must be a multiple of 2**(depth - 1) = {step}")
