"""G and D: shapes, the mask blend, identity at init, gradients, input checks, save/load."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import perturb_generator, tiny_model_cfg

from vharm import Harmonizer
from vharm.errors import VharmError
from vharm.models import Discriminator, Generator, count_params
from vharm.models.backbones import colour_statistics, constancy_statistics, weighted_quantiles

BACKBONES = ("unet", "resnet", "dih")
HEADS = ("affine", "rgb")


def _inputs(b=2, h=64, w=64, seed=0, soft=False):
    gen = torch.Generator().manual_seed(seed)
    comp = torch.rand(b, 3, h, w, generator=gen)
    mask = torch.zeros(b, 1, h, w)
    mask[..., h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 1
    if soft:
        mask = mask * torch.rand(b, 1, h, w, generator=gen)
    return comp, mask


def _first_conv(g: Generator) -> torch.nn.Conv2d:
    return next(m for m in g.net.modules() if isinstance(m, torch.nn.Conv2d))


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("head", HEADS)
def test_generator_shapes_and_blend(backbone, head):
    torch.manual_seed(0)
    g = perturb_generator(Generator(tiny_model_cfg(backbone=backbone, head=head)))
    comp, mask = _inputs(b=2, h=32, w=48)
    with torch.no_grad():
        pred = g(comp, mask)
    assert pred.shape == comp.shape
    assert pred.dtype == comp.dtype
    assert float(pred.min()) >= 0 and float(pred.max()) <= 1
    # background is the composite, bit for bit
    bg = (mask == 0).expand_as(comp)
    assert torch.equal(pred[bg], comp[bg])
    # the (perturbed) G changes the foreground
    fg = (mask == 1).expand_as(comp)
    assert (pred[fg] - comp[fg]).abs().mean() > 1e-3
    with torch.no_grad():
        raw = g.raw(comp, mask)
    assert raw.shape == ((2, 12, 32, 48) if head == "affine" else (2, 3, 32, 48))
    assert g.transform(comp, mask).shape == (2, 12, 32, 48)


def test_background_exact_with_soft_mask():
    torch.manual_seed(0)
    g = perturb_generator(Generator(tiny_model_cfg()))
    comp, mask = _inputs(soft=True)
    mask[mask < 0.3] = 0
    pred = g(comp, mask)
    bg = (mask == 0).expand_as(comp)
    assert bg.any() and torch.equal(pred[bg], comp[bg])


@pytest.mark.parametrize("backbone", BACKBONES)
def test_untrained_affine_generator_is_identity(backbone):
    torch.manual_seed(0)
    g = Generator(tiny_model_cfg(backbone=backbone, head="affine"))
    comp, mask = _inputs()
    assert torch.equal(g(comp, mask), comp)  # binary mask: exactly the input
    comp, soft = _inputs(soft=True)
    torch.testing.assert_close(g(comp, soft), comp, atol=1e-6, rtol=0)
    # with grid pooling the transform is still the identity
    g = Generator(tiny_model_cfg(backbone=backbone, grid=4))
    torch.testing.assert_close(g(comp, soft), comp, atol=1e-5, rtol=0)
    assert g.raw(comp, soft).shape == (2, 12, 4, 4)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("head", HEADS)
def test_gradients_reach_first_conv(backbone, head):
    torch.manual_seed(0)
    g = Generator(tiny_model_cfg(backbone=backbone, head=head))
    comp, mask = _inputs(b=1, h=32, w=32)
    target = torch.rand_like(comp)
    if head == "affine":
        # zero-initialised output conv: the only gradient at init is the head's own
        ((g(comp, mask) - target) ** 2).mean().backward()
        assert g.net.out.weight.grad.abs().sum() > 0
        assert _first_conv(g).weight.grad.abs().sum() == 0
        g.zero_grad()
        perturb_generator(g)
    ((g(comp, mask) - target) ** 2).mean().backward()
    grad = _first_conv(g).weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_batch_items_are_independent():
    torch.manual_seed(0)
    g = perturb_generator(Generator(tiny_model_cfg())).eval()
    comp, mask = _inputs(b=3, soft=True)
    with torch.no_grad():
        torch.testing.assert_close(g(comp, mask)[1:2], g(comp[1:2], mask[1:2]), atol=1e-5, rtol=0)


def test_use_mask_false_ignores_mask():
    torch.manual_seed(0)
    g = perturb_generator(Generator(tiny_model_cfg(use_mask=False)))
    comp, mask = _inputs()
    _, other = _inputs(soft=True)
    other = (other > 0).float()
    assert torch.equal(g.raw(comp, mask), g.raw(comp, other))


def test_discriminator_output_in_unit_range():
    torch.manual_seed(0)
    d = Discriminator(tiny_model_cfg())
    comp, _ = _inputs(b=3, h=32, w=40)
    d.requires_grad_(False)
    out = d(comp)
    assert out.shape == (3, 1, 32, 40)
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    # extreme inputs still map into [0, 1]
    out = d(torch.ones(1, 3, 32, 32))
    assert float(out.min()) >= 0 and float(out.max()) <= 1


@pytest.mark.parametrize("bad", [
    lambda c, m: (c[:, :2], m),  # 2 colour channels
    lambda c, m: (c[0], m),  # no batch dimension
    lambda c, m: (c, m.expand(-1, 3, -1, -1)),  # 3-channel mask
    lambda c, m: (c, m[..., :-2]),  # mask size differs
    lambda c, m: (c, m[:1]),  # batch differs
    lambda c, m: ((c * 255).to(torch.uint8), m),  # uint8 frames
    lambda c, m: (c.numpy(), m),  # not a tensor
])
def test_generator_rejects_bad_shapes(bad):
    g = Generator(tiny_model_cfg())
    comp, mask = _inputs()
    with pytest.raises(ValueError, match=r"\(B, [13], H, W\)|float|match"):
        g(*bad(comp, mask))


def test_discriminator_rejects_bad_shapes():
    d = Discriminator(tiny_model_cfg())
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        d(torch.rand(1, 4, 32, 32))
    with pytest.raises(ValueError):
        d(torch.rand(3, 32, 32))


@pytest.mark.parametrize("backbone,head", [("dih", "affine"), ("dih", "rgb"), ("resnet", "rgb")])
def test_indivisible_size_is_a_teaching_error(backbone, head):
    g = Generator(tiny_model_cfg(backbone=backbone, head=head))
    comp, mask = _inputs(b=1, h=62, w=62)
    with pytest.raises(ValueError):
        g(comp, mask)


def test_invalid_model_config_is_vharm_error():
    with pytest.raises(VharmError, match="backbone"):
        Generator(tiny_model_cfg(backbone="vgg"))
    with pytest.raises(VharmError, match="resolution"):
        Generator(tiny_model_cfg(resolution=66))


@pytest.mark.parametrize("backbone,head", [("unet", "affine"), ("resnet", "rgb"), ("dih", "affine")])
def test_save_load_round_trip(tmp_path, backbone, head):
    torch.manual_seed(0)
    cfg = tiny_model_cfg(backbone=backbone, head=head, norm="batch" if backbone == "resnet" else "group")
    g, d = perturb_generator(Generator(cfg)), Discriminator(cfg)
    if cfg.norm == "batch":  # make the running statistics non-trivial: they must round-trip too
        g.train()
        g(*_inputs(b=2, h=32, w=32, seed=5))
    g.eval(), d.eval()
    g.save_pretrained(tmp_path / "w", step=7)
    d.save_pretrained(tmp_path / "w")
    assert {p.name for p in (tmp_path / "w").iterdir()} == {"config.json", "generator.safetensors",
                                                            "discriminator.safetensors"}
    assert json.loads((tmp_path / "w" / "config.json").read_text())["step"] == 7  # D's save keeps G's sections
    g2, d2 = Generator.from_pretrained(tmp_path / "w"), Discriminator.from_pretrained(tmp_path / "w")
    assert g2.cfg == d2.cfg == cfg
    assert not g2.training and not d2.training
    comp, mask = _inputs(h=32, w=32)
    with torch.no_grad():
        assert torch.equal(g2(comp, mask), g(comp, mask))
        assert torch.equal(d2(comp), d(comp))
    assert count_params(g2) == count_params(g)


def test_load_without_discriminator(tmp_path):
    cfg = tiny_model_cfg()
    Generator(cfg).save_pretrained(tmp_path)
    h = Harmonizer.from_pretrained(tmp_path)
    assert h.discriminator is None and isinstance(h.generator, Generator)
    with pytest.raises(VharmError, match="discriminator.safetensors: missing"):
        Discriminator.from_pretrained(tmp_path)


def test_harmonizer_save_pretrained_round_trips_the_inference_settings(tmp_path):
    cfg = tiny_model_cfg()
    h = Harmonizer(perturb_generator(Generator(cfg)), Discriminator(cfg), temporal_smoothing=0.25, min_change=1,
                   full_change=3)
    h.save_pretrained(tmp_path / "w")
    loaded = Harmonizer.from_pretrained(tmp_path / "w")
    assert loaded.inference_config == h.inference_config and loaded.discriminator is not None
    assert all(torch.equal(a, b) for a, b in zip(loaded.generator.state_dict().values(),
                                                 h.generator.state_dict().values()))


def test_load_with_other_architecture_is_vharm_error(tmp_path):
    cfg = tiny_model_cfg()
    Generator(cfg).save_pretrained(tmp_path)
    Discriminator(cfg).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data["model"]["backbone"] = "resnet"
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(VharmError, match="do not match"):
        Generator.from_pretrained(tmp_path)
    data["model"]["backbone"] = "unet"
    data["model"]["widths"] = [8, 16, 64]
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(VharmError, match="generator.safetensors"):
        Generator.from_pretrained(tmp_path)


def test_load_non_safetensors_is_vharm_error(tmp_path):
    cfg = tiny_model_cfg()
    Generator(cfg).save_pretrained(tmp_path)
    (tmp_path / "generator.safetensors").write_bytes(b"PK\x03\x04 this is a zip, not safetensors" * 10)
    with pytest.raises(VharmError, match="not a safetensors"):
        Generator.from_pretrained(tmp_path)
    (tmp_path / "generator.safetensors").write_bytes(b"")
    with pytest.raises(VharmError, match="generator.safetensors"):
        Generator.from_pretrained(tmp_path)


@pytest.mark.parametrize("content,match", [
    (None, "missing"),
    ("{not json", "not valid JSON"),
    ('{"model": {"backbone": "unet", "depth": 3}}', "unknown key"),
    ('{"model": {"widths": "8,16"}}', "expected a list"),
    ('[1, 2]', "model"),
])
def test_bad_config_json_is_vharm_error(tmp_path, content, match):
    cfg = tiny_model_cfg()
    Generator(cfg).save_pretrained(tmp_path)
    if content is None:
        (tmp_path / "config.json").unlink()
    else:
        (tmp_path / "config.json").write_text(content)
    with pytest.raises(VharmError, match=match):
        Generator.from_pretrained(tmp_path)


def test_missing_weights_dir_is_vharm_error(tmp_path):
    with pytest.raises(VharmError, match="nope: no such weights"):
        Generator.from_pretrained(tmp_path / "nope")


# ----------------------------------------------------------------------------------------- stats backbone


def _stats_cfg(**changes):
    return tiny_model_cfg(backbone="stats", widths=(16, 16), grid=1, **changes)


def test_colour_statistics_of_flat_regions():
    comp = torch.zeros(1, 3, 8, 8)
    comp[..., :4] = 1.0  # white foreground on the left, black background on the right
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1
    f = colour_statistics(comp, mask)
    assert f.shape == (1, 28)
    fg, bg = f[0, :14], f[0, 14:]
    torch.testing.assert_close(fg[0:3], torch.tensor([1.0, 0, 0]), atol=1e-3, rtol=0)  # Lab/100 of white
    torch.testing.assert_close(fg[6:9], torch.ones(3))  # RGB mean
    assert fg[3:6].max() < 1e-2 and fg[9:12].max() < 1e-2  # flat: no spread
    assert fg[12] == 1 and fg[13] == 0 and bg[12] == 0 and bg[13] == 1  # near-white / near-black fractions
    torch.testing.assert_close(bg[6:9], torch.zeros(3))


def test_constancy_statistics_of_flat_regions_and_a_gain():
    comp = torch.full((1, 3, 8, 8), 0.2)
    comp[..., :4] = torch.tensor([0.8, 0.4, 0.2]).view(1, 3, 1, 1)  # an orange foreground on the left
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1
    f = constancy_statistics(comp, mask)
    assert f.shape == (1, 42)
    fg, bg = f[0, :21], f[0, 21:]
    assert fg[:3].max() < math.log(2e-3)  # no edges inside either flat region (the seam is eroded away)...
    assert bg[:3].max() < math.log(2e-3)
    torch.testing.assert_close(fg[3:6], torch.log(torch.tensor([0.8, 0.4, 0.2]) + 1e-3))  # ...p = 6 means
    torch.testing.assert_close(fg[6:].view(3, 5), torch.tensor([0.8, 0.4, 0.2])[:, None].expand(3, 5))  # quantiles
    torch.testing.assert_close(bg[6:], torch.full((15,), 0.2))
    # a gain on the foreground moves its own estimates by the gain (logs by its log) and leaves the background's
    textured = comp * (0.75 + 0.25 * torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0)))
    darker = textured * (1 - 0.5 * mask)
    a, b = constancy_statistics(textured, mask)[0], constancy_statistics(darker, mask)[0]
    torch.testing.assert_close(b[3:6], a[3:6] + math.log(0.5), atol=1e-2, rtol=0)
    torch.testing.assert_close(b[6:21], a[6:21] * 0.5, atol=1 / 255, rtol=0)
    torch.testing.assert_close(b[21:], a[21:])


def test_weighted_quantiles_skip_zero_weights_and_check_shapes():
    x = torch.tensor([[[0.5, 0.1, 0.3, 1.0]]])
    w = torch.tensor([[[1.0, 1.0, 1.0, 0.0]]])  # the 1.0 does not count
    torch.testing.assert_close(weighted_quantiles(x, w, (0.0, 0.5, 1.0)), torch.tensor([[[0.1, 0.3, 0.5]]]),
                               atol=1 / 255, rtol=0)  # on a grid of 256 levels
    torch.testing.assert_close(weighted_quantiles(x, w, (0.5,), bins=3), torch.tensor([[[0.5]]]))  # 0.3 -> level 1
    with pytest.raises(ValueError, match=r"needs x \(B, C, N\) and w \(B, 1, N\)"):
        weighted_quantiles(x, w[..., :3], (0.5,))


def test_constancy_generator_reads_more_statistics_and_round_trips(tmp_path):
    torch.manual_seed(0)
    g = perturb_generator(Generator(_stats_cfg(statistics="constancy"))).eval()
    assert g.net.body[0].num_features == 70
    comp, mask = _inputs(b=2, h=16, w=16)
    g.save_pretrained(tmp_path / "w")
    loaded = Generator.from_pretrained(tmp_path / "w")
    assert loaded.cfg.statistics == "constancy"
    with torch.no_grad():
        assert torch.equal(loaded(comp, mask), g(comp, mask))
    with pytest.raises(VharmError, match="statistics .--statistics. are the inputs of backbone stats, not of unet"):
        Generator(tiny_model_cfg(statistics="constancy"))


def test_stats_generator_is_identity_at_init_and_global_after():
    torch.manual_seed(0)
    g = Generator(_stats_cfg()).eval()
    comp, mask = _inputs(b=2, h=32, w=48)
    torch.testing.assert_close(g(comp, mask), comp, atol=1e-6, rtol=0)
    assert g.raw(comp, mask).shape == (2, 12, 1, 1)  # one transform per frame
    perturb_generator(g)
    with torch.no_grad():
        pred = g(comp, mask)
        assert g.transform(comp, mask).shape == (2, 12, 1, 1)
    bg = (mask == 0).expand_as(comp)
    assert torch.equal(pred[bg], comp[bg])
    fg = (mask == 1).expand_as(comp)
    assert (pred[fg] - comp[fg]).abs().mean() > 1e-3
    # it reads the colours: a darker foreground gets another transform
    darker = comp * (1 - 0.5 * mask)
    with torch.no_grad():
        assert not torch.allclose(g.raw(darker, mask), g.raw(comp, mask))
    # any size works (no pooling levels), e.g. an odd one
    assert g(comp[..., :31, :45], mask[..., :31, :45]).shape == (2, 3, 31, 45)


def test_stats_generator_gradients_and_rgb_head_refused():
    torch.manual_seed(0)
    g = perturb_generator(Generator(_stats_cfg()))
    comp, mask = _inputs(b=4, h=16, w=16)
    ((g(comp, mask) - torch.rand_like(comp)) ** 2).mean().backward()
    first = next(m for m in g.net.modules() if isinstance(m, torch.nn.Linear))
    assert first.weight.grad is not None and first.weight.grad.abs().sum() > 0
    with pytest.raises(VharmError, match="head affine"):
        Generator(_stats_cfg(head="rgb"))


def test_stats_generator_round_trip_keeps_its_feature_standardisation(tmp_path):
    torch.manual_seed(0)
    cfg = _stats_cfg()
    g = perturb_generator(Generator(cfg))
    comp, mask = _inputs(b=4, h=16, w=16)
    g.train()
    for _ in range(3):  # moves the BatchNorm running means away from their initial 0 / 1
        g(comp, mask)
    g.eval()
    g.save_pretrained(tmp_path / "w")
    loaded = Generator.from_pretrained(tmp_path / "w")
    with torch.no_grad():
        assert torch.equal(loaded(comp, mask), g(comp, mask))
    running = loaded.net.body[0].running_mean
    assert running.abs().sum() > 0 and torch.equal(running, g.net.body[0].running_mean)


def test_ensemble_is_the_mean_of_its_members_and_round_trips(tmp_path):
    from vharm.models.networks import ensemble

    torch.manual_seed(0)
    members = [perturb_generator(Generator(_stats_cfg()), seed=s).eval() for s in (0, 1, 2)]
    g = ensemble(members[:2])
    g = ensemble([g, members[2]]).eval()  # an ensemble's members join another's
    comp, mask = _inputs(b=2, h=16, w=16)
    with torch.no_grad():
        mean = torch.stack([m.raw(comp, mask) for m in members]).mean(0)
        assert g.cfg.members == 3 and torch.allclose(g.raw(comp, mask), mean, atol=1e-6)
        assert not torch.allclose(members[0].raw(comp, mask), mean, atol=1e-3)  # the members do differ
        g.save_pretrained(tmp_path / "w")
        loaded = Generator.from_pretrained(tmp_path / "w")
        assert torch.equal(loaded(comp, mask), g(comp, mask))
    # one G keeps the state-dict keys of every weights file written before ensembles
    assert "net.out.bias" in Generator(_stats_cfg()).state_dict()
    assert "net.members.2.out.bias" in loaded.state_dict()


def test_ensemble_of_different_architectures_is_refused():
    from vharm.models.networks import ensemble

    with pytest.raises(VharmError, match="^b: its G differs from a's in widths; an ensemble's G's share one"):
        ensemble([Generator(_stats_cfg()), Generator(tiny_model_cfg(backbone="stats", widths=(8,), grid=1))],
                 names=["a", "b"])
