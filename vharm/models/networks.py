"""G (the harmonization network) and D (the pixel-wise disharmony discriminator) of Huang et al. 2020, each with
`save_pretrained` / `from_pretrained` of `config.json` + `generator.safetensors` / `discriminator.safetensors`.

Vocabulary: `comp` (B, 3, H, W) composite in [0, 1], `mask` (B, 1, H, W) foreground in [0, 1], `pred` the
harmonized frame in [0, 1]. The networks use [-1, 1] inside.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from vharm.config import ModelConfig, from_dict, read_json, to_dict, validate
from vharm.errors import VharmError
from vharm.io.files import atomic_path
from vharm.models import colortransform
from vharm.models.backbones import BACKBONES, TopDown, UNet
from vharm.models.efficientnet import EfficientNetLite0


def check_inputs(comp: torch.Tensor, mask: torch.Tensor | None = None) -> None:
    """Shape/range contract of the API, with errors that say what to pass instead."""
    if not isinstance(comp, torch.Tensor) or comp.ndim != 4 or comp.shape[1] != 3:
        shape = tuple(comp.shape) if isinstance(comp, torch.Tensor) else type(comp).__name__
        raise ValueError(f"comp must be a (B, 3, H, W) float tensor in [0, 1], got {shape}")
    if not comp.is_floating_point():
        raise ValueError(f"comp must be float in [0, 1], got {comp.dtype} (divide uint8 frames by 255)")
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.ndim != 4 or mask.shape[1] != 1:
            shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f"mask must be a (B, 1, H, W) float tensor in [0, 1], got {shape}")
        if mask.shape[0] != comp.shape[0] or mask.shape[-2:] != comp.shape[-2:]:
            raise ValueError(f"mask {tuple(mask.shape)} does not match comp {tuple(comp.shape)} in batch or size")


WEIGHTS_DIR = Path(__file__).parents[1] / "weights"  # the weights shipped in the package, by name
DEFAULT_WEIGHTS = "default"
CONFIG = "config.json"


def resolve_weights(name_or_dir: str | Path | None) -> Path:
    """A shipped weights name (e.g. "default"), a weights directory, or a run directory (its `best/` snapshot)."""
    path = Path(DEFAULT_WEIGHTS if name_or_dir is None else name_or_dir)
    if len(path.parts) == 1 and (WEIGHTS_DIR / path / CONFIG).is_file():  # a plain shipped name
        return WEIGHTS_DIR / path
    if (path / "best" / CONFIG).is_file():
        return path / "best"
    if path.is_dir():
        return path
    shipped = sorted(p.parent.name for p in WEIGHTS_DIR.glob(f"*/{CONFIG}")) if WEIGHTS_DIR.is_dir() else []
    raise VharmError(f"{path}: no such weights; give a directory with config.json + generator.safetensors, "
                     f"a run directory, or a shipped name ({', '.join(shipped) or 'none are installed'})")


def read_weights_config(path: Path) -> dict:
    """The config.json of a weights directory: {"model": ..., and what else its writers put there}."""
    cfg_file = Path(path) / CONFIG
    data = read_json(cfg_file, "missing (a weights directory holds config.json + generator.safetensors)",
                     'with a "model" section')
    if not isinstance(data.get("model"), dict):
        raise VharmError(f"{cfg_file}: expected an object with a \"model\" section")
    return data


def write_weights_config(path: Path, sections: dict) -> None:
    """Merges `sections` into the config.json of the weights directory `path` (written atomically)."""
    cfg_file = Path(path) / CONFIG
    data = {**(read_json(cfg_file) if cfg_file.is_file() else {}), **sections}
    with atomic_path(cfg_file) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


class Pretrained(nn.Module):
    """`save_pretrained` / `from_pretrained` for a network that owns its `ModelConfig` (diffusers' ModelMixin).

    A weights directory holds config.json (its "model" section: the architecture G and D share) and one
    safetensors file per network, `WEIGHTS`. Weights load with safetensors only: nothing is unpickled.
    """

    WEIGHTS = ""
    # G writes config.json afresh (its "model" and `sections`); D adds to the config.json of the G it goes with.
    OWNS_CONFIG = False
    cfg: ModelConfig

    def save_pretrained(self, path: str | Path, **sections) -> None:
        """Writes `WEIGHTS` and the config into `path` (created); `sections` are more config.json keys."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        model, cfg_file = to_dict(self.cfg), path / CONFIG
        if not self.OWNS_CONFIG and cfg_file.is_file() and read_json(cfg_file).get("model") != model:
            raise VharmError(f"{cfg_file}: describes another architecture than this {type(self).__name__}'s; save "
                             "the Generator first, or into another directory")
        with atomic_path(path / self.WEIGHTS) as tmp:
            save_file(self.stored_state(), str(tmp))
        if self.OWNS_CONFIG or not cfg_file.is_file():
            with atomic_path(cfg_file) as tmp:
                tmp.write_text(json.dumps({"model": model, **sections}, indent=2) + "\n")
        elif sections:
            write_weights_config(path, sections)

    def stored_state(self) -> dict[str, torch.Tensor]:
        """The tensors `save_pretrained` writes (loading casts them back to the parameters' dtype)."""
        return {k: v.contiguous() for k, v in self.state_dict().items()}

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path | None = None):
        """Loads a shipped name, a weights directory or a run directory (`resolve_weights`), in eval mode."""
        path = resolve_weights(name_or_dir)
        cfg_file = path / CONFIG
        cfg = from_dict(ModelConfig, read_weights_config(path)["model"], where=f"{cfg_file}:model")  # validates
        net = cls(cfg)
        file = path / cls.WEIGHTS
        if not file.is_file():
            raise VharmError(f"{file}: missing weights file")
        try:
            state = load_file(str(file))
        except (SafetensorError, OSError, ValueError) as e:
            raise VharmError(f"{file}: not a safetensors weights file ({str(e).splitlines()[0]})") from None
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError:
            raise VharmError(f"{file}: weights do not match the architecture in config.json "
                             "(another backbone, head or widths?)") from None
        return net.eval()


class Generator(Pretrained):
    """G(comp, mask) -> harmonized frame; background pixels are exactly the composite's.

    The `affine` head predicts a per-pixel 3x4 colour transform (initialised to the identity, so an
    untrained G returns its input; one for the whole frame with `backbone stats`); the `rgb` head predicts the
    image directly through a tanh (the paper's).
    """

    WEIGHTS = "generator.safetensors"
    OWNS_CONFIG = True

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        validate(cfg)
        self.cfg = cfg
        out_ch = 12 if cfg.head == "affine" else 3
        extra = {"confidence": cfg.confidence, "statistics": cfg.statistics} if cfg.backbone == "stats" else {}
        nets = [BACKBONES[cfg.backbone](4, out_ch, cfg.widths, cfg.norm, **extra) for _ in range(cfg.members)]
        # One network is `net` itself, as in every weights file written before ensembles.
        self.net = nets[0] if cfg.members == 1 else Mean(nets)
        if cfg.head == "affine":
            for net in nets:
                nn.init.zeros_(net.out.weight)
                nn.init.zeros_(net.out.bias)
            self.register_buffer("eye", torch.tensor(colortransform.IDENTITY).view(1, 12, 1, 1), persistent=False)

    def raw(self, comp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The head's output before blending: (B, 12, h, w) coefficients (h = w = grid if set) or (B, 3, H, W)
        colours in [0, 1]."""
        step = self.net.multiple
        if comp.shape[-2] % step or comp.shape[-1] % step:
            raise ValueError(f"G needs H and W divisible by {step} (2**(depth-1)), got {tuple(comp.shape[-2:])}; "
                             f"resize to the working resolution {self.cfg.resolution} (as Harmonizer does)")
        if not self.cfg.use_mask:
            mask = torch.zeros_like(mask)
        out = self.net(torch.cat([comp * 2 - 1, mask], dim=1))
        if self.cfg.head == "rgb":
            return (torch.tanh(out) + 1) / 2
        coeffs = out + self.eye
        return colortransform.pool_masked(coeffs, mask, self.cfg.grid) if self.cfg.grid else coeffs

    def forward(self, comp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """pred = mask * G + (1 - mask) * comp, at the input's resolution (the working resolution)."""
        check_inputs(comp, mask)
        raw = self.raw(comp, mask)
        g = colortransform.apply_affine(comp, raw).clamp(0, 1) if self.cfg.head == "affine" else raw
        return mask * g + (1 - mask) * comp

    def transform(self, comp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The colour transform G applies to `comp`, (B, 12, H, W); for the rgb head it is fitted locally."""
        check_inputs(comp, mask)
        raw = self.raw(comp, mask)
        if self.cfg.head == "affine":
            return raw
        return colortransform.fit_local_affine(comp, raw)


def ensemble(generators: list[Generator], names: list[str] | None = None) -> Generator:
    """One Generator whose output is the mean of `generators`' outputs (the head's, before the transform is applied):
    `ModelConfig.members` networks of one architecture, trained apart (e.g. with different seeds). `names` (their
    weights directories, say) name them in the error when the architectures differ.

    Example:
        >>> a, b = Generator(ModelConfig()), Generator(ModelConfig())
        >>> _ = a.net.out.bias.data.fill_(0.1), b.net.out.bias.data.fill_(-0.05)   # two different changes
        >>> comp, mask = torch.rand(1, 3, 32, 32), torch.ones(1, 1, 32, 32)
        >>> g = ensemble([a.eval(), b.eval()]).eval()
        >>> g.cfg.members, torch.allclose(g.raw(comp, mask), (a.raw(comp, mask) + b.raw(comp, mask)) / 2)
        (2, True)
    """
    flat = [m for g in generators for m in (g.net.members if g.cfg.members > 1 else [g.net])]
    first = generators[0].cfg

    def architecture(cfg: ModelConfig) -> ModelConfig:  # G's own fields (D's come with D, from the first)
        return dataclasses.replace(cfg, members=1, disc_backbone="unet", disc_widths=first.disc_widths)

    names = names or [f"G {i}" for i in range(len(generators))]
    for name, g in zip(names[1:], generators[1:]):
        a, b = architecture(g.cfg), architecture(first)
        if a != b:
            fields = [f.name for f in dataclasses.fields(ModelConfig) if getattr(a, f.name) != getattr(b, f.name)]
            raise VharmError(f"{name}: its G differs from {names[0]}'s in {', '.join(fields)}; an ensemble's G's "
                             "share one architecture")
    g = Generator(dataclasses.replace(first, members=len(flat)))
    for member, net in zip(g.net.members, flat):
        member.load_state_dict(net.state_dict())
    return g


class Mean(nn.Module):
    """The mean of the outputs of `members`, networks of one architecture (`ModelConfig.members`)."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.multiple = members[0].multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)


class EncoderD(nn.Module):
    """D's body for `disc_backbone efficientnet`: the ImageNet EfficientNet-Lite0 trunk, kept frozen (its weights
    are ImageNet's, converted once by `vharm fit-d`), and a `TopDown` decoder; (B, 3, H, W) in [0, 1] -> logits."""

    def __init__(self):
        super().__init__()
        self.encoder = EfficientNetLite0().requires_grad_(False).eval()
        self.decoder = TopDown(EfficientNetLite0.CHANNELS, dropout=0.0)  # `vharm fit-d` sets it while fitting

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()  # frozen: its batch norms keep ImageNet's statistics
        return self

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            maps = self.encoder(image)
        return self.decoder(maps, image)


class Discriminator(Pretrained):
    """D(image) -> (B, 1, H, W) disharmony map in [0, 1]: 1 where a pixel looks pasted in (paper Eq. 1).

    `disc_backbone unet` is the paper's UNet (`disc_widths`); `efficientnet` an `EncoderD`, stored in float16 (the
    frozen encoder is 2.96 M of its 2.99 M parameters: 6 MB instead of 12) and computed in float32.
    """

    WEIGHTS = "discriminator.safetensors"

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.disc_backbone == "efficientnet":
            self.net = EncoderD()
        else:
            self.net = UNet(3, 1, cfg.disc_widths, cfg.norm)

    def stored_state(self) -> dict[str, torch.Tensor]:
        state = super().stored_state()
        if self.cfg.disc_backbone != "efficientnet":
            return state
        return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        check_inputs(image)
        if self.cfg.disc_backbone == "efficientnet":
            return torch.sigmoid(self.net(image))
        return torch.sigmoid(self.net(image * 2 - 1))


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = ["Generator", "Discriminator", "resolve_weights", "count_params", "check_inputs"]

