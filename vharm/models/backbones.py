"""Backbones for G and D: UNet (paper Fig. 2), ResNet (Johnson et al.), DIH (Tsai et al.), a colour-statistics MLP,
and `TopDown`, D's decoder over a pretrained encoder's maps.

The encoder-decoders map (B, in_ch, H, W) -> (B, out_ch, H, W) at the same resolution; H and W must be
divisible by `multiple` = 2**(depth - 1). `ColourStats` maps the same input to (B, out_ch, 1, 1): one value per
image, at any size (`multiple` 1). Each ends in a layer named `out`, which the generator's heads initialise. The
heads live in `networks.py`.
"""

from __future__ import annotations

import kornia
import torch
from torch import nn
from torch.nn import functional as F


def norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.Identity()


class ConvBlock(nn.Sequential):
    """Two 3x3 conv -> norm -> LeakyReLU(0.2) layers."""

    def __init__(self, cin: int, cout: int, norm: str):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1), norm_layer(norm, cout), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1), norm_layer(norm, cout), nn.LeakyReLU(0.2, inplace=True),
        )


class UNet(nn.Module):
    """UNet with concatenated skip connections; `widths[i]` channels at 1/2**i resolution."""

    def __init__(self, in_ch: int, out_ch: int, widths: tuple[int, ...], norm: str = "group"):
        super().__init__()
        self.multiple = 2 ** (len(widths) - 1)
        self.down = nn.ModuleList()
        cin = in_ch
        for w in widths:
            self.down.append(ConvBlock(cin, w, norm))
            cin = w
        self.up = nn.ModuleList()
        for w_skip in reversed(widths[:-1]):
            self.up.append(ConvBlock(cin + w_skip, w_skip, norm))
            cin = w_skip
        self.out = nn.Conv2d(cin, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        skips.pop()
        for block in self.up:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.out(x)


class ResidualBlock(nn.Module):
    def __init__(self, ch: int, norm: str):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(ch, ch, 3, padding=1), norm_layer(norm, ch), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ch, ch, 3, padding=1), norm_layer(norm, ch),
        )

    def forward(self, x):
        return x + self.body(x)


class ResNetED(nn.Module):
    """Style-transfer ResNet (Johnson et al.): strided encoder, residual blocks at the bottom, no skips."""

    def __init__(self, in_ch: int, out_ch: int, widths: tuple[int, ...], norm: str = "group", blocks: int = 5):
        super().__init__()
        self.multiple = 2 ** (len(widths) - 1)
        layers = [nn.Conv2d(in_ch, widths[0], 7, padding=3), norm_layer(norm, widths[0]), nn.LeakyReLU(0.2, True)]
        for a, b in zip(widths, widths[1:]):
            layers += [nn.Conv2d(a, b, 3, stride=2, padding=1), norm_layer(norm, b), nn.LeakyReLU(0.2, True)]
        layers += [ResidualBlock(widths[-1], norm) for _ in range(blocks)]
        for a, b in zip(reversed(widths), reversed(widths[:-1])):
            layers += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                       nn.Conv2d(a, b, 3, padding=1), norm_layer(norm, b), nn.LeakyReLU(0.2, True)]
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(widths[0], out_ch, 7, padding=3)

    def forward(self, x):
        return self.out(self.body(x))


class DIH(nn.Module):
    """Deep Image Harmonization (Tsai et al. 2017) style: strided conv encoder, deconv decoder,
    skip connections by element-wise summation instead of concatenation."""

    def __init__(self, in_ch: int, out_ch: int, widths: tuple[int, ...], norm: str = "group"):
        super().__init__()
        self.multiple = 2 ** (len(widths) - 1)
        self.stem = nn.Sequential(nn.Conv2d(in_ch, widths[0], 3, padding=1), nn.LeakyReLU(0.2, True))
        self.enc = nn.ModuleList(
            nn.Sequential(nn.Conv2d(a, b, 4, stride=2, padding=1), norm_layer(norm, b), nn.LeakyReLU(0.2, True))
            for a, b in zip(widths, widths[1:])
        )
        self.dec = nn.ModuleList(
            nn.Sequential(nn.ConvTranspose2d(a, b, 4, stride=2, padding=1), norm_layer(norm, b), nn.ReLU(True))
            for a, b in zip(reversed(widths), reversed(widths[:-1]))
        )
        self.out = nn.Conv2d(widths[0], out_ch, 3, padding=1)

    def forward(self, x):
        x = self.stem(x)
        skips = [x]
        for layer in self.enc:
            x = layer(x)
            skips.append(x)
        skips.pop()
        for layer in self.dec:
            x = layer(x) + skips.pop()
        return self.out(x)


STATS = 28  # the number of `colour_statistics`
QUANTILES = (0.02, 0.1, 0.5, 0.9, 0.98)  # of each RGB channel, in `constancy_statistics`


def colour_statistics(comp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """What a compositor compares by eye: colour statistics of the foreground and of the background.

    Args:
        comp: (B, 3, H, W) colours in [0, 1].
        mask: (B, 1, H, W) foreground weights in [0, 1].

    Returns:
        (B, 28): for the foreground, then the background, the mask-weighted Lab mean and standard deviation
        (Lab / 100), RGB mean and standard deviation, and the fractions of near-white (L > 95) and near-black
        (L < 5) pixels.
    """
    lab = kornia.color.rgb_to_lab(comp.clamp(0, 1)) / 100
    rows = []
    for w in (mask, 1 - mask):
        total = w.sum((2, 3)).clamp_min(1e-6)

        def mean(x):
            return (x * w).sum((2, 3)) / total

        for x in (lab, comp):
            m = mean(x)
            rows += [m, (mean(x * x) - m * m).clamp_min(0).add(1e-6).sqrt()]
        rows += [mean((lab[:, :1] > 0.95).float()), mean((lab[:, :1] < 0.05).float())]
    return torch.cat(rows, 1)


def weighted_quantiles(x: torch.Tensor, w: torch.Tensor, qs: tuple[float, ...], bins: int = 256) -> torch.Tensor:
    """The weighted quantiles of each channel of values in [0, 1], on a grid of `bins` levels: the smallest level
    whose share of the weight reaches q. A histogram instead of a sort: 16,384 pixels of 3 channels take 0.3 ms
    instead of 5 on one core, and 256 levels are what 8-bit frames hold.

    Args:
        x: (B, C, N) values in [0, 1] (clamped); w: (B, 1, N) non-negative weights (all zero: the top level).

    Returns:
        (B, C, len(qs)) levels k / (bins - 1).

    Example:
        >>> weighted_quantiles(torch.arange(10.).view(1, 1, 10) / 9, torch.ones(1, 1, 10), (0.05, 0.5, 1.0), 10) * 9
        tensor([[[0., 4., 9.]]])
    """
    if x.ndim != 3 or w.shape != (x.shape[0], 1, x.shape[2]):
        raise ValueError(f"weighted_quantiles needs x (B, C, N) and w (B, 1, N), got {tuple(x.shape)} and "
                         f"{tuple(w.shape)}")
    b, c, _ = x.shape
    level = (x.clamp(0, 1) * (bins - 1)).round().long()
    offset = (torch.arange(b * c, device=x.device) * bins).view(b, c, 1)  # one histogram per (item, channel)
    hist = torch.bincount((level + offset).flatten(), weights=w.expand_as(x).flatten().to(torch.float64),
                          minlength=b * c * bins).view(b, c, bins)
    cum = hist.cumsum(-1)
    cum = cum / cum[..., -1:].clamp_min(1e-12)
    # the first level whose share reaches q (a hair under it, for the sums' rounding; q = 0: the first with weight)
    q = (torch.tensor(qs, dtype=cum.dtype, device=x.device) * (1 - 1e-9)).clamp_min(1e-12)
    return torch.searchsorted(cum, q.expand(b, c, len(qs)).contiguous()).clamp_max(bins - 1).to(x.dtype) / (bins - 1)


def constancy_statistics(comp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Colour-constancy estimates of the foreground and of the background, beside `colour_statistics`' means.

    The means are gray-world estimates of a region's cast; these err differently: the mean colour of edges
    (grey-edge, van de Weijer et al. 2007), the Minkowski p = 6 mean (shades of grey, Finlayson and Trezzi 2004),
    and the brightest and darkest pixels and the shape of each channel's distribution (its quantiles). With them
    the `cpu` recipe gains more on both validation sets and harms a clip of one (docs/training.md,
    "Colour-constancy statistics"): not the shipped G's inputs.

    Args:
        comp: (B, 3, H, W) colours in [0, 1].
        mask: (B, 1, H, W) foreground weights in [0, 1].

    Returns:
        (B, 42): for the foreground, then the background, the log of the mean gradient magnitude of each channel
        (inside the region eroded by a pixel, so that the seam between them does not count), the log of the p = 6
        mean of each channel, and the `QUANTILES` of each channel over the pixels of weight above 0.5.

    Example:
        >>> constancy_statistics(torch.rand(2, 3, 16, 16), torch.ones(2, 1, 16, 16)).shape
        torch.Size([2, 42])
    """
    comp = comp.clamp(0, 1)
    grad = kornia.filters.spatial_gradient(comp).square().sum(2).sqrt()  # (B, 3, H, W), [0, 1] per pixel
    rows = []
    for w in (mask, 1 - mask):
        inner = -F.max_pool2d(-w, 3, 1, 1)  # erosion by one pixel
        rows.append(torch.log((grad * inner).sum((2, 3)) / inner.sum((2, 3)).clamp_min(1e-6) + 1e-3))
        p6 = (comp ** 6 * w).sum((2, 3)) / w.sum((2, 3)).clamp_min(1e-6)
        rows.append(torch.log(p6.clamp_min(1e-12) ** (1 / 6) + 1e-3))
        rows.append(weighted_quantiles(comp.flatten(2), (w > 0.5).to(comp.dtype).flatten(2), QUANTILES).flatten(1))
    return torch.cat(rows, 1)


# G's inputs by name (ModelConfig.statistics): how many values, and the function of (comp, mask) that makes them.
STATISTICS = {
    "colour": (STATS, colour_statistics),
    "constancy": (STATS + 42, lambda comp, mask: torch.cat([colour_statistics(comp, mask),
                                                            constancy_statistics(comp, mask)], 1)),
}


class ColourStats(nn.Module):
    """A global branch in the spirit of Harmonizer: `colour_statistics` -> MLP -> one output per image.

    Input as for the other backbones, (B, 4, H, W) = (composite in [-1, 1], mask). It sees no pixels, only the
    statistics named by `statistics` (`STATISTICS`: the 28 `colour_statistics`, or those and the 42
    `constancy_statistics`), which is what lets it be fitted from a few thousand source images without learning them.
    `widths` are the hidden layers; `norm` is unused (the statistics are standardised by a BatchNorm without
    affine parameters, whose running means are part of the weights).

    With `confidence`, a second small MLP sees the standardised statistics and the change the first predicts and
    says how much of it to apply (a sigmoid, initialised near 1): `vharm fit` trains it after the change, with a
    loss that weighs nearly harmonious composites more (`vharm.train.fit`).
    """

    def __init__(self, in_ch: int, out_ch: int, widths: tuple[int, ...], norm: str = "group",
                 confidence: bool = False, statistics: str = "colour"):
        super().__init__()
        self.multiple = 1
        n, self.statistics = STATISTICS[statistics]
        layers: list[nn.Module] = [nn.BatchNorm1d(n, affine=False)]  # body[0]: the standardisation
        cin = n
        for w in widths:
            layers += [nn.Linear(cin, w), nn.LeakyReLU(0.2, inplace=True)]
            cin = w
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(cin, out_ch)
        self.confidence = None
        if confidence:
            self.confidence = nn.Sequential(nn.Linear(n + out_ch, 32), nn.LeakyReLU(0.2, inplace=True),
                                            nn.Linear(32, 1))
            # Until it is trained the head says sigmoid(4) = 0.98 whatever it sees: apply the change.
            nn.init.zeros_(self.confidence[-1].weight)
            nn.init.constant_(self.confidence[-1].bias, 4.0)

    def change(self, stats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, n) statistics -> (the change (B, out_ch), the confidence in it (B, 1), ones without a head)."""
        z = self.body[0](stats)
        delta = self.out(self.body[1:](z))
        if self.confidence is None:
            return delta, torch.ones_like(delta[:, :1])
        return delta, torch.sigmoid(self.confidence(torch.cat([z, delta], 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delta, conf = self.change(self.statistics((x[:, :3] + 1) / 2, x[:, 3:4]))
        return (conf * delta)[..., None, None]


class TopDown(nn.Module):
    """D's decoder over an encoder's feature maps (coarsest last): a logit per pixel at the input's resolution.

    1x1 laterals bring every map to `width` channels; from the coarsest, each is upsampled and added to the next
    finer one (a feature pyramid's top-down path); the finest sum, beside the image's Lab colours pooled to its
    size (disharmony is a matter of colour as much as of content), goes through two 3x3 convolutions to one logit,
    upsampled bilinearly to the input. `dropout` drops whole feature channels while training.

    Example:
        >>> maps = [torch.zeros(1, c, 32 // 2 ** i, 32 // 2 ** i) for i, c in enumerate((24, 40))]
        >>> TopDown((24, 40))(maps, torch.zeros(1, 3, 128, 128)).shape
        torch.Size([1, 1, 128, 128])
    """

    def __init__(self, channels: tuple[int, ...], width: int = 32, dropout: float = 0.2):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.drop = nn.Dropout2d(dropout)
        self.head = nn.Sequential(nn.Conv2d(width + 3, width, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(width, 1, 3, padding=1))

    def forward(self, maps: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        """maps: (B, C_i, h_i, w_i), finest first; image: (B, 3, H, W) in [0, 1] -> (B, 1, H, W) logits."""
        x = self.lateral[-1](self.drop(maps[-1]))
        for fmap, lateral in zip(maps[-2::-1], list(self.lateral)[-2::-1]):
            x = F.interpolate(x, size=fmap.shape[-2:], mode="bilinear", align_corners=False) + lateral(self.drop(fmap))
        lab = F.adaptive_avg_pool2d(kornia.color.rgb_to_lab(image.clamp(0, 1)) / 100, x.shape[-2:])
        x = self.head(torch.cat([x, lab], 1))
        return F.interpolate(x, size=image.shape[-2:], mode="bilinear", align_corners=False)


BACKBONES = {"unet": UNet, "resnet": ResNetED, "dih": DIH, "stats": ColourStats}
