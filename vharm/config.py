"""Typed hyperparameters with the paper's defaults, presets by name, JSON round trip, and their one validation.

Every field says what it accepts: a `Literal[...]` type (or `choices` in its metadata) for names, a `range` for
numbers, a `length` for tuples, and a `help` line. `validate` checks a config against them and against the few
rules that tie fields together; `from_dict` runs it on every config read from JSON and `vharm train` on the preset
plus its flags, before anything is written or printed. Every field becomes a `vharm train` flag with that help
(`vharm.cli.train`), and every run writes the resolved config to `config.json`.

Example:
    >>> preset("cpu").model.backbone
    'stats'
    >>> validate(dataclasses.replace(preset("cpu"), lr_schedule="linear"))
    Traceback (most recent call last):
    ...
    vharm.errors.VharmError: lr_schedule is 'linear' (--lr-schedule): choose one of constant, cosine
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

from vharm.errors import VharmError


class Range(NamedTuple):
    """The numbers a field (or a tuple's length) accepts; `lo_open`/`hi_open` leave an end out.

    Example:
        >>> 0.5 in Range(0, 1, hi_open=True), 1 in Range(0, 1, hi_open=True), str(Range(0, 1, hi_open=True))
        (True, False, 'in [0, 1)')
    """

    lo: float
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, x) -> bool:
        above = x > self.lo if self.lo_open else x >= self.lo
        below = x < self.hi if self.hi_open else x <= self.hi
        return above and below

    def __str__(self) -> str:
        if self.hi == math.inf:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"


POSITIVE = Range(0, lo_open=True)
NONNEGATIVE = Range(0)
COUNT = Range(1)
FRACTION = Range(0, 1)  # a probability or a share of the frame
DECAY = Range(0, 1, hi_open=True)  # an EMA or Adam decay: 1 would never move


class _Families(Sequence):
    """The names of `vharm.data.recolor.FAMILIES`, imported on first use: that module loads OpenCV (0.1 s), which
    building the CLI's parsers does not need (it imports nothing of vharm, so there is no cycle either)."""

    def _names(self) -> tuple[str, ...]:
        from vharm.data.recolor import FAMILIES

        return tuple(FAMILIES)

    def __getitem__(self, i):
        return self._names()[i]

    def __len__(self) -> int:
        return len(self._names())


FAMILY_NAMES = _Families()


def _field(default, help: str, range: Range | None = None, length: Range | None = None,
           choices: Sequence[str] | None = None):
    """A dataclass field whose metadata says what it accepts (read by `validate`, `from_dict` and the CLI)."""
    meta = {"help": help, "range": range, "length": length, "choices": choices}
    return field(default=default, metadata={k: v for k, v in meta.items() if v is not None})


# Bounds far above any sensible model, so that a hostile config.json cannot ask for terabytes.
CHANNELS = Range(1, 4096)
LEVELS = Range(1, 10)


@dataclass
class ModelConfig:
    """Generator and discriminator architecture; the defaults are the shipped G's (`vharm/weights/default`).

    Example:
        >>> ModelConfig().backbone, ModelConfig().widths
        ('stats', (64, 64))
    """

    # stats: one transform per frame from colour statistics; it generalises to new videos where the UNet learned
    # its training images (docs/training.md).
    backbone: Literal["unet", "resnet", "dih", "stats"] = _field(
        "stats", "G's body: unet (paper), resnet (Johnson et al.), dih (Tsai et al.), stats (an MLP on the colour "
        "statistics of foreground and background)")
    head: Literal["affine", "rgb"] = _field(
        "affine", "affine: a 3x4 colour transform per pixel (or per grid cell); rgb: the paper's direct tanh image")
    widths: tuple[int, ...] = _field((64, 64), "channels per UNet level (depth = their number); for stats, the "
                                     "hidden layers", CHANNELS, LEVELS)
    norm: Literal["group", "batch", "instance", "none"] = _field(
        "group", "normalisation layers (group works with batch 1 and at test time)")
    resolution: int = _field(128, "working resolution in pixels (square); the full-resolution output comes from "
                             "the colour transform", Range(1, 4096))
    # Smooth transforms generalise and flicker less than free per-pixel ones.
    grid: int = _field(1, "affine head: average the transforms over the foreground in grid x grid cells (1 = one "
                       "per frame, 0 = per pixel); must divide the resolution", Range(0, 4096))
    disc_widths: tuple[int, ...] = _field((4, 8, 16, 32, 64, 128), "channels per level of D (a UNet too, paper "
                                          "Sec. III-B)", CHANNELS, LEVELS)
    # The paper's UNet D, trained adversarially at this scale, finds where pasted objects tend to be and no more; an
    # ImageNet encoder finds them better (docs/training.md, "vharm fit-d"). The default stays unet: it is the D of
    # every weights directory written before this field existed (their config.json does not name it).
    disc_backbone: Literal["unet", "efficientnet"] = _field(
        "unet", "D's body: unet (the paper's, disc_widths; trained by vharm train) or efficientnet (frozen ImageNet "
        "EfficientNet-Lite0 features and a small top-down decoder; fitted by vharm fit-d)")
    use_mask: bool = _field(True, "false: G sees an all-zero mask channel (paper Table IV, trained without mask)")
    confidence: bool = _field(False, "backbone stats: a second head says how much of the predicted change to apply "
                              "(trained by `vharm fit`)")
    # Colour-constancy estimates beside the means: more gain on both validation sets, and a harmed clip on one
    # (docs/training.md, "Colour-constancy statistics"). The default is the shipped G's, and that of every weights
    # directory written before this field existed.
    statistics: Literal["colour", "constancy"] = _field(
        "colour", "backbone stats: its inputs: colour (28 means, spreads and clipped fractions of foreground and "
        "background) or constancy (those and 42 colour-constancy estimates: edges, p = 6 means, quantiles)")
    # Separately trained G's err differently on a given composite (seeds of one recipe differ by 0.02-0.09 in the
    # real clips' fMSE ratio), so their mean could err less; on five seeds of the shipped recipe it did not pay
    # (docs/training.md, "Seeds and an ensemble"): the default is one G.
    members: int = _field(1, "G is the mean of this many networks' outputs, each trained on its own (an "
                          "ensemble, made by `vharm ensemble`; vharm train and fit train one)", Range(1, 64))


@dataclass
class InferenceConfig:
    """Inference defaults that ship with weights (the "inference" section of their config.json)."""

    temporal_smoothing: float = _field(0.0, "EMA of the colour transform over frames, and mask-free of D's map "
                                       "(0 = off)", DECAY)
    # G is unsure of changes that small: a naturally bright or saturated object looks like a slightly over-exposed
    # or over-saturated one from colour statistics. Ramping (not switching) keeps the output continuous in G's
    # estimate, so a change near the threshold does not flicker on and off.
    min_change: float = _field(0.0, "do-no-harm gate: drop a change of G below this many 0-255 levels (RMS over the "
                               "mask at the working resolution); 0 = off", NONNEGATIVE)
    full_change: float = _field(0.0, "do-no-harm gate: keep a change above this many levels whole, ramp it in "
                                "from min_change; both are raised to the change G makes to the frame's own "
                                "background where that is larger; 0 = off", NONNEGATIVE)
    # Scaling the transform (after the gate), not blending pixels: colours stay on the line from the input to G's
    # output, and 2 extrapolates it where a pixel blend would have nothing to blend with.
    strength: float = _field(1.0, "the correction's strength: 0 = the input, 1 = the model, 2 = twice its change "
                             "(applied to the colour transform, not by blending pixels)", Range(0, 2))
    # D's map is less sure of the region than a mask: G's change from its core needs more evidence.
    mask_free_gate: float = _field(1.0, "mask-free mode: min_change and full_change times this", Range(1, 10))
    # From colour statistics a bright object looks like an over-exposed one: G's darkening of a foreground is its
    # characteristic wrong change (a white dog, a small bright paraglider), so it needs more evidence.
    darken_gate: float = _field(1.0, "a change that darkens the foreground: min_change and full_change times this",
                                Range(1, 10))
    # G makes a tenth to two fifths of the change an exposure-shifted foreground needs; scaling up its brightening
    # helps there and multiplies its errors elsewhere, so the shipped weights keep 1 (docs/training.md).
    brighten: float = _field(1.0, "the luminance of a change that brightens the foreground, times this (after the "
                             "gate; darkening changes and colour casts as G makes them; automatic masks: 1): 1 = as "
                             "G predicts", Range(1, 10))
    # The same shrinkage, in both directions: G seen again on its own result makes a part of what is left. Where its
    # first estimate is right the next ones overshoot, so the count is chosen with the gate (the shipped weights: 3,
    # docs/training.md, "G again on its own result").
    g_steps: int = _field(1, "G run again on the frame as its change left it, this many steps in all, the transforms "
                          "composed; the gate judges the first step's change: 1 = as G predicts", Range(1, 10))


@dataclass
class LossConfig:
    """Paper Eqs. 1-2: L_G = MSE + lambda1 * temporal + lambda2 * adversarial."""

    lambda_temporal: float = _field(2e-2, "lambda1, the temporal loss's weight", NONNEGATIVE)
    lambda_adv: float = _field(1e-2, "lambda2, the adversarial loss's weight", NONNEGATIVE)
    temporal: Literal["regional", "global", "none"] = _field(
        "regional", "temporal loss over the foreground (regional, paper), the whole frame (global, Lai et al.) or "
        "none")
    use_discriminator: bool = _field(True, "train D and give G its adversarial loss")
    # A mildly-off composite then weighs as much as a badly-off one, so "leave it alone" is learned.
    relative: bool = _field(False, "divide each pair's reconstruction error by the composite's own (+ relative_eps); "
                            "false: the paper's plain MSE")
    relative_eps: float = _field(1e-3, "added to the composite's error, per pixel on [-1, 1] colours", POSITIVE)


@dataclass
class DataConfig:
    """Synthetic two-frame pairs (the paper's Dancing-MSCOCO recipe) generated on the fly or read from disk."""

    sources: tuple[str, ...] = _field((), "folders of images+masks or frames+masks (see vharm.data.sources)")
    # Made once per frame and cached (vharm.data.automask); the sources themselves are never written to.
    auto_mask: bool = _field(False, "sources without masks (photo or frame folders, video files) get automatic "
                             "person masks (vharm segment's); frames with too little person for min_fg are left out")
    mask_cache: str = _field("data/auto-masks", "where auto_mask keeps the masks it made (and decoded video frames), "
                             "one subfolder per source")
    dataset: str = _field("", "a `vharm make-dataset` directory, used instead of the sources when set")
    families: tuple[str, ...] = _field(("reinhard", "exposure", "gamma", "hue", "saturation", "temperature",
                                        "contrast", "curve"), "recolouring families of the training pairs",
                                       length=COUNT, choices=FAMILY_NAMES)
    # Families training never sees, so that checkpoint selection measures generalisation.
    val_families: tuple[str, ...] = _field(("lut",), "recolouring families of the validation pairs",
                                           length=COUNT, choices=FAMILY_NAMES)
    min_fg: float = _field(0.10, "drop images whose foreground covers less of the frame (paper: 10 %)", FRACTION)
    max_motion: float = _field(0.04, "largest foreground translation between the two frames, share of the size",
                               FRACTION)
    real_pair_prob: float = _field(0.0, "chance of a pair of real consecutive video frames (DIS flow)", FRACTION)
    mild_prob: float = _field(0.15, "chance of a nearly harmonious composite (the change scaled by 0-0.3)", FRACTION)
    # Every region of a real photo fits its scene, so this gives as many distinct foregrounds as there are crops.
    random_mask_prob: float = _field(0.0, "chance that the foreground is another item's mask laid on a random crop",
                                     FRACTION)
    scene_prob: float = _field(0.0, "chance that the whole source crop is recoloured first, a new scene (so G "
                               "cannot recognise a source by its background)", FRACTION)
    # One photo per ImageNet class gives a thousand scenes and objects the masked sources (a few hundred scenes)
    # lack; a random region needs no mask of its own canvas.
    backdrops: tuple[str, ...] = _field((), "folders of photos without masks (e.g. imagenet-samples/): random "
                                        "regions are laid on them too")
    backdrop_prob: float = _field(0.5, "share of the random regions laid on a photo of backdrops (when given) "
                                  "instead of a source image", FRACTION)
    val_pairs: int = _field(64, "pairs held out for validation (deterministic, from the same sources)", COUNT)
    val_testset: str = _field("", "a `vharm make-testset` directory of clips from videos kept out of the sources: "
                              "its real clips are scored at every validation and pick the best snapshot")


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping; `model`, `loss` and `data` hold the rest."""

    name: str = _field("run", "the run directory's name after its number (runs/NNNNN-name)")
    preset: str = _field("", "the preset this config started from (empty: none)")
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    steps: int = _field(20000, "training steps", COUNT)
    batch_size: int = _field(4, "pairs per step and process", COUNT)
    lr: float = _field(2e-4, "Adam's learning rate (paper: 2e-4)", POSITIVE)
    # cosine is a function of the step, so resume is exact as long as `steps` stays.
    lr_schedule: Literal["constant", "cosine"] = _field(
        "constant", "constant (paper) or cosine (to 0 at the last step)")
    # The paper preset keeps its 0.999; 0.5 is the usual GAN value and trained steadier here.
    beta1: float = _field(0.5, "Adam's beta1", DECAY)
    beta2: float = _field(0.999, "Adam's beta2", DECAY)
    seed: int = _field(0, "seed of the weights and of the pairs", NONNEGATIVE)
    val_every: int = _field(500, "steps between validations (PSNR, fMSE, temporal loss into stats.jsonl)", COUNT)
    snapshot_every: int = _field(1000, "steps between weight snapshots (network-snapshot-NNNNNN/)", COUNT)
    ema: float = _field(0.0, "weight EMA decay of the snapshot generator (0 = off)", DECAY)
    threads: int = _field(0, "torch intra-op threads (0 = torch's default)", NONNEGATIVE)
    # Synthesising a pair takes ~34 ms at 128^2 on one core: at batch 32 that is ~80 % of a CPU step, and all a GPU
    # would wait on. A batch is a pure function of its step, so the batches are the same with any number of workers.
    workers: int = _field(0, "processes that synthesise the next batches while the networks train (0: in the "
                          "training loop)", NONNEGATIVE)
    # bf16: ~2x the fp32 steps/s on a CPU with AMX/AVX-512 BF16 units, ~10x slower on an AVX2-only one (`vharm
    # benchmark` measures both on yours).
    precision: Literal["fp32", "bf16"] = _field("fp32", "autocast of the training step; validation is always fp32")
    device: Literal["cpu", "cuda"] = _field("cpu", "where to train")


@dataclass
class FitConfig:
    """`vharm fit`: the statistics G fitted on cached features (`vharm.train.fit`); `model`, `data` as in training."""

    name: str = _field("fit", "the run directory's name after its number (runs/NNNNN-name)")
    model: ModelConfig = field(default_factory=lambda: ModelConfig(confidence=True))
    # What won on the validation clips (docs/training.md, "vharm fit"): the `cpu` preset's data; scene recolouring
    # and the three newer families made it worse there.
    data: DataConfig = field(default_factory=lambda: DataConfig(real_pair_prob=0.2, random_mask_prob=0.5))
    pairs: int = _field(6000, "training pairs to synthesise and cache (two frames each)", COUNT)
    pixels: int = _field(256, "foreground pixels sampled per frame for the loss", COUNT)
    epochs: int = _field(15, "passes over the cached pairs to fit the change", COUNT)
    confidence_epochs: int = _field(5, "passes to fit the confidence head afterwards (model.confidence)", COUNT)
    batch_size: int = _field(256, "frames per step", COUNT)
    lr: float = _field(2e-3, "AdamW's learning rate", POSITIVE)
    weight_decay: float = _field(1e-4, "AdamW's weight decay", NONNEGATIVE)
    # fMSE on 0-255 is ~20-100 for a nearly harmonious composite and ~300-2500 for a clearly-off one: an eps of 25
    # weighs the first kind about as much as the second, instead of a plain MSE's 1/20.
    relative_eps: float = _field(25.0, "the change's loss: each frame's fMSE over (its composite's + this), 0-255 "
                                 "levels squared", POSITIVE)
    confidence_eps: float = _field(10.0, "the confidence's loss: as relative_eps; smaller weighs harm to nearly "
                                   "harmonious composites more", POSITIVE)
    identity_share: float = _field(0.5, "share of the frames shown as their own target, a composite that needs no "
                                   "change", FRACTION)
    feature_noise: float = _field(0.0, "Gaussian noise on the standardised statistics while fitting (a regulariser)",
                                  NONNEGATIVE)
    discriminator: str = _field("default", "the weights whose D goes with the fitted G (mask-free mode); empty: none")
    workers: int = _field(2, "processes that synthesise the pairs", COUNT)
    seed: int = _field(0, "seed of the pairs and of the weights", NONNEGATIVE)
    threads: int = _field(0, "torch intra-op threads while fitting (0 = torch's default)", NONNEGATIVE)


@dataclass
class FitDConfig:
    """`vharm fit-d`: D for mask-free mode fitted on frozen ImageNet features (`vharm.train.fit_d`)."""

    name: str = _field("fit-d", "the run directory's name after its number (runs/NNNNN-name)")
    data: DataConfig = field(default_factory=lambda: DataConfig(real_pair_prob=0.2, random_mask_prob=0.5))
    generator: str = _field("default", "the weights whose G (and inference settings) go with the fitted D; the "
                            "validation harmonizes with them")
    # Mask-free scores of one epoch and the next differ by a few hundredths on 25 clips: more clips, steadier choice.
    more_val: tuple[str, ...] = _field((), "more `vharm make-testset` directories whose real and mild clips join "
                                       "those of --val-testset in the epoch's score")
    pairs: int = _field(4000, "training pairs to synthesise and cache (two frames each, composite and target)",
                        COUNT)
    epochs: int = _field(8, "passes over the cached features", COUNT)
    batch_size: int = _field(32, "frames per step (each with its target)", COUNT)
    lr: float = _field(1e-3, "AdamW's learning rate (constant)", POSITIVE)
    weight_decay: float = _field(1e-4, "AdamW's weight decay", NONNEGATIVE)
    # The decoder reads ~47,000 frozen ImageNet activations of a 128^2 frame and learns from a few thousand scenes.
    dropout: float = _field(0.2, "channel dropout on the encoder's features while fitting", FRACTION)
    workers: int = _field(2, "processes that synthesise the pairs", COUNT)
    seed: int = _field(0, "seed of the pairs and of the decoder", NONNEGATIVE)
    threads: int = _field(0, "torch intra-op threads (0 = torch's default)", NONNEGATIVE)


# ----------------------------------------------------------------------------------------- field specs


class FieldSpec(NamedTuple):
    """What one config field accepts, from its type and metadata."""

    name: str
    kind: type  # bool, int, float or str; or a config dataclass (a nested section)
    many: bool  # a tuple of `kind`
    choices: Sequence[str] | None
    range: Range | None
    length: Range | None
    help: str


@functools.cache
def field_specs(cls) -> tuple[FieldSpec, ...]:
    """The specs of a config dataclass's fields, in order.

    Example:
        >>> spec = field_specs(LossConfig)[2]
        >>> spec.name, spec.kind.__name__, spec.choices
        ('temporal', 'str', ('regional', 'global', 'none'))
    """
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        many = typing.get_origin(hints[f.name]) is tuple
        kind = typing.get_args(hints[f.name])[0] if many else hints[f.name]
        choices = f.metadata.get("choices")
        if typing.get_origin(kind) is Literal:
            choices = typing.get_args(kind)
            kind = type(choices[0])
        specs.append(FieldSpec(f.name, kind, many, choices, f.metadata.get("range"), f.metadata.get("length"),
                               f.metadata.get("help", "")))
    return tuple(specs)


def flag(name: str) -> str:
    """The `vharm` command-line flag of a field."""
    return "--" + name.replace("_", "-")


# ------------------------------------------------------------------------------------------ validation


def _section(cls) -> str:
    """The prefix of a class's fields in a run's config.json ("model." for ModelConfig); "" for the top level and
    for InferenceConfig (the weights' "inference" section, whose fields are `vharm harmonize` flags)."""
    return next((f"{s.name}." for s in field_specs(TrainConfig) if s.kind is cls), "")


def _value(p: str, name: str, value) -> str:
    """A field, its value and its flag, as the messages show them."""
    return f"{p}{name} {value} ({flag(name)})"


def _model_rules(m: ModelConfig, p: str) -> Iterator[str]:
    if m.backbone == "stats" and m.head != "affine":
        yield f"{p}backbone stats predicts one colour transform per frame: it needs {p}head affine (--head)"
    if m.confidence and m.backbone != "stats":
        yield f"{p}confidence (--confidence) is a head of backbone stats, not of {m.backbone} (--backbone)"
    if m.statistics != "colour" and m.backbone != "stats":
        yield f"{p}statistics (--statistics) are the inputs of backbone stats, not of {m.backbone} (--backbone)"
    if m.grid and m.resolution % m.grid:
        yield f"{_value(p, 'grid', m.grid)} must be 0 or divide {_value(p, 'resolution', m.resolution)}"
    step = 2 ** (max(len(m.widths), len(m.disc_widths) if m.disc_backbone == "unet" else 0) - 1)
    if m.resolution % step:
        yield f"{_value(p, 'resolution', m.resolution)} must be a multiple of 2**(depth - 1) = {step}"
    if m.disc_backbone == "efficientnet" and m.resolution % 32:
        yield (f"{_value(p, 'resolution', m.resolution)} must be a multiple of 32 for {p}disc_backbone efficientnet "
               "(the encoder halves it five times)")


def _inference_rules(c: InferenceConfig, p: str) -> Iterator[str]:
    if c.min_change > c.full_change:
        yield (f"the change gate needs {p}min_change <= {p}full_change (levels, --min-change and --full-change), "
               f"got {c.min_change} and {c.full_change}")


# Checks that tie fields of one section together, beyond each field's own choices and range.
_RULES = {ModelConfig: _model_rules, InferenceConfig: _inference_rules}


def _problems(cfg) -> Iterator[str]:
    """Every value outside its field's choices, range or length, then every broken rule of `_RULES`."""
    p = _section(type(cfg))
    for spec in field_specs(type(cfg)):
        value = getattr(cfg, spec.name)
        if dataclasses.is_dataclass(spec.kind):
            yield from _problems(value)
            continue
        if spec.length and len(value) not in spec.length:
            yield f"{_value(p, spec.name, f'has {len(value)} entries')}: the number must be {spec.length}"
        for item in value if spec.many else (value,):
            shown = _value(p, spec.name, f"{'holds' if spec.many else 'is'} {item!r}")
            if spec.choices is not None and item not in spec.choices:
                yield f"{shown}: choose {'from' if spec.many else 'one of'} {', '.join(spec.choices)}"
            if spec.range and item not in spec.range:
                yield f"{shown}: must be {spec.range}"
    yield from _RULES.get(type(cfg), lambda c, p: ())(cfg, p)


def validate(cfg, where: str = "") -> None:
    """Raises VharmError for the first value a config cannot run with, naming the field, its flag and what is allowed.

    `where` (a file, "Harmonizer") starts the message. Runs in `from_dict`, in `vharm train` before anything is
    written or printed, in `train()` and wherever networks are built.

    Example:
        >>> validate(preset("tiny"))
        >>> validate(dataclasses.replace(preset("tiny").model, grid=5), "my.json")
        Traceback (most recent call last):
        ...
        vharm.errors.VharmError: my.json: model.grid 5 (--grid) must be 0 or divide model.resolution 64 (--resolution)
    """
    problem = next(_problems(cfg), None)
    if problem is not None:
        raise VharmError(f"{where}: {problem}" if where else problem)



# --------------------------------------------------------------------------------------------- presets


def preset(name: str) -> TrainConfig:
    """Returns a fresh TrainConfig for a preset name (`tiny`, `cpu`, `unet` or `paper`).

    Example:
        >>> preset("tiny").model.backbone, preset("tiny").model.resolution
        ('unet', 64)
    """
    if name == "tiny":  # for tests: seconds on a laptop core
        return TrainConfig(
            name="tiny",
            preset="tiny",
            model=ModelConfig(backbone="unet", widths=(8, 16, 32), disc_widths=(8, 16), resolution=64, grid=0),
            steps=200,
            batch_size=2,
            val_every=50,
            snapshot_every=100,
            data=DataConfig(val_pairs=4, val_families=DataConfig.families),
        )
    if name == "cpu":  # the weights we ship: one transform per frame from colour statistics, minutes to train
        return TrainConfig(name="cpu", preset="cpu", model=ModelConfig(),
                           loss=LossConfig(relative=True, relative_eps=2e-3),
                           data=DataConfig(real_pair_prob=0.2, random_mask_prob=0.5), steps=400, batch_size=32,
                           lr=1e-3, beta1=0.9, val_every=50, snapshot_every=50)
    if name == "unet":  # the UNet recipe of the 2026-11 weights (a 1.97 M-parameter UNet, one transform per frame)
        # Doubling the channels per level makes every level cost the same; starting at 8 keeps 256^2 training at
        # ~1 step/s (batch 4) on 2 CPU cores.
        return TrainConfig(name="unet", preset="unet",
                           model=ModelConfig(backbone="unet", widths=(8, 16, 32, 64, 128, 256), resolution=256),
                           loss=LossConfig(relative=True), data=DataConfig(mild_prob=0.3, real_pair_prob=0.2),
                           ema=0.998)
    if name == "paper":  # Huang et al. Sec. IV: 512^2, batch 1, beta1 0.999, 45 epochs of 29,818 pairs
        return TrainConfig(
            name="paper",
            preset="paper",
            model=ModelConfig(
                backbone="unet",
                head="rgb",
                widths=(64, 128, 256, 512, 512, 512, 512, 512),
                disc_widths=(64, 128, 256, 512, 512, 512, 512, 512),
                norm="instance",
                resolution=512,
                grid=0,
            ),
            steps=45 * 29818,
            batch_size=1,
            beta1=0.999,
        )
    raise VharmError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")


PRESETS = ("tiny", "cpu", "unet", "paper")


# ------------------------------------------------------------------------------------------------ JSON


def to_dict(cfg) -> dict:
    """A dataclass as plain JSON-able data (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


# The JSON types a scalar field accepts, and how its error names them. bool is an int in Python: never a number.
_JSON_TYPES = {bool: ((bool,), "true or false"), int: ((int,), "an integer"), float: ((int, float), "a number"),
               str: ((str,), "a string")}


def _coerce(value, spec: FieldSpec, where: str):
    """Checks/converts one JSON value against a field's type; raises VharmError naming the field."""
    if spec.many:
        if not isinstance(value, (list, tuple)):
            raise VharmError(f"{where}: expected a list, got {type(value).__name__}")
        item = spec._replace(many=False)
        return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(spec.kind):
        if not isinstance(value, dict):
            raise VharmError(f"{where}: expected an object, got {type(value).__name__}")
        return _build(spec.kind, value, where)
    accepted, wanted = _JSON_TYPES[spec.kind]
    if not isinstance(value, accepted) or (isinstance(value, bool) and spec.kind is not bool):
        raise VharmError(f"{where}: expected {wanted}, got {value!r}")
    return float(value) if spec.kind is float else value


def _build(cls, data: dict, where: str):
    specs = {s.name: s for s in field_specs(cls)}
    unknown = sorted(set(data) - set(specs))
    if unknown:
        raise VharmError(f"{where}: unknown key(s) {', '.join(unknown)}")
    return cls(**{k: _coerce(v, specs[k], f"{where}.{k}") for k, v in data.items()})


def from_dict(cls, data: dict, where: str = "config"):
    """Builds a config dataclass from JSON data, checking every type and value; unknown keys are an error.

    Example:
        >>> from_dict(LossConfig, {"temporal": "bogus"}, "c.json")
        Traceback (most recent call last):
        ...
        vharm.errors.VharmError: c.json: loss.temporal is 'bogus' (--temporal): choose one of regional, global, none
    """
    cfg = _build(cls, data, where)
    validate(cfg, where)
    return cfg


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
    """Reads a config JSON file into `cls`, checking every type and value."""
    return from_dict(cls, read_json(path, "no such config file"), where=str(path))
