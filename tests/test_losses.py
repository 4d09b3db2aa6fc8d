"""The paper's losses on hand-made cases, the flow warp S, the colour-transform maths and the metrics."""

from __future__ import annotations

import math

import pytest
import torch

from vharm.data.flow import flow_valid, warp
from vharm.eval import metrics
from vharm.models import colortransform
from vharm.train.losses import GeneratorLoss, adversarial_loss, discriminator_loss, temporal_loss


def _image(b=1, c=3, h=16, w=20, seed=0):
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(seed))


def _shift(img: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Content moved right by dx and down by dy; the uncovered border is filled with 0.5."""
    out = torch.full_like(img, 0.5)
    h, w = img.shape[-2:]
    out[..., dy:, dx:] = img[..., :h - dy, :w - dx]
    return out


def _const_flow(dx: float, dy: float, b=1, h=16, w=20) -> torch.Tensor:
    flow = torch.zeros(b, 2, h, w)
    flow[:, 0], flow[:, 1] = dx, dy
    return flow


# ------------------------------------------------------------------------------------------------ warp


def test_warp_docstring_example():
    img = torch.arange(16.).view(1, 1, 4, 4)
    flow = torch.zeros(1, 2, 4, 4)
    flow[:, 0] = -1
    assert warp(img, flow)[0, 0, 0].tolist() == [0.0, 0.0, 1.0, 2.0]


def test_warp_zero_flow_is_identity():
    img = _image()
    torch.testing.assert_close(warp(img, torch.zeros(1, 2, 16, 20)), img, atol=1e-6, rtol=0)


@pytest.mark.parametrize("dx,dy", [(2, 1), (0, 3), (5, 0)])
def test_warp_of_shifted_image_reproduces_shift(dx, dy):
    prev = _image()
    shifted = _shift(prev, dx, dy)
    # frame_t(x, y) = frame_{t-1}(x - dx, y - dy): the flow from t back into t-1 is (-dx, -dy)
    warped = warp(prev, _const_flow(-dx, -dy))
    torch.testing.assert_close(warped[..., dy:, dx:], shifted[..., dy:, dx:], atol=1e-5, rtol=0)
    # outside: zeros (the flow points out of the frame)
    if dx:
        assert warped[..., :, :dx].abs().max() < 1e-5
    valid = flow_valid(_const_flow(-dx, -dy))
    assert valid.shape == (1, 1, 16, 20)
    assert valid[..., dy:, dx:].min() == 1
    assert valid.sum() == (16 - dy) * (20 - dx)


def test_warp_half_pixel_is_bilinear():
    img = _image(c=1)
    warped = warp(img, _const_flow(0.5, 0))
    torch.testing.assert_close(warped[..., :-1], (img[..., :-1] + img[..., 1:]) / 2, atol=1e-5, rtol=0)


def test_warp_is_differentiable_in_image_and_flow():
    img = _image().requires_grad_(True)
    flow = _const_flow(0.3, -0.7).requires_grad_(True)
    warp(img, flow).sum().backward()
    assert img.grad.abs().sum() > 0 and flow.grad.abs().sum() > 0


def test_warp_rejects_bad_shapes():
    with pytest.raises(ValueError, match="same size"):
        warp(_image(), torch.zeros(1, 2, 8, 8))
    with pytest.raises(ValueError):
        warp(_image(), torch.zeros(1, 3, 16, 20))


# ------------------------------------------------------------------------------------------- temporal


def _region(h=16, w=20):
    mask = torch.zeros(1, 1, h, w)
    mask[..., 4:12, 6:16] = 1
    return mask


def test_temporal_loss_zero_for_exact_warp_by_integer_flow():
    prev = _image()
    pred = _shift(prev, 3, 2)
    flow = _const_flow(-3, -2)
    mask = _region()
    assert temporal_loss(pred, prev, flow, mask) < 1e-10
    # global: zero where the flow is valid; the uncovered border would count without `valid`
    assert temporal_loss(pred, prev, flow, None, flow_valid(flow)) < 1e-10
    assert temporal_loss(pred, prev, flow, None) > 1e-3
    # a wrong flow is not free
    assert temporal_loss(pred, prev, _const_flow(-2, -2), mask) > 1e-3


@pytest.mark.parametrize("delta", [0.05, 0.1, 0.2])
def test_temporal_loss_grows_with_colour_change(delta):
    prev = _image() * 0.5
    flow = _const_flow(-3, -2)
    mask = _region()
    pred = _shift(prev, 3, 2) + delta * mask  # a colour change on the foreground only
    loss = temporal_loss(pred, prev, flow, mask)
    assert loss.item() == pytest.approx(delta ** 2, rel=1e-4)
    # channels change alike or not: a change of one channel is a third of the squared error
    one = _shift(prev, 3, 2).clone()
    one[:, :1] += delta * mask[:, 0]
    assert temporal_loss(one, prev, flow, mask).item() == pytest.approx(delta ** 2 / 3, rel=1e-4)


def test_temporal_loss_regional_ignores_background_global_does_not():
    prev = _image()
    flow = _const_flow(-1, 0)
    mask = _region()
    pred = _shift(prev, 1, 0) + 0.3 * (1 - mask)  # change only outside the mask
    valid = flow_valid(flow)
    assert temporal_loss(pred, prev, flow, mask, valid) < 1e-10
    outside = ((1 - mask) * valid).sum() / valid.sum()  # the share of valid pixels that changed
    assert temporal_loss(pred, prev, flow, None, valid).item() == pytest.approx(0.09 * outside.item(), rel=1e-4)


def test_temporal_loss_soft_mask_weights_pixels():
    prev = torch.zeros(1, 3, 4, 4)
    pred = torch.zeros(1, 3, 4, 4)
    pred[..., 0, 0] = 1.0  # one pixel differs by 1
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 0, 0], mask[..., 0, 1] = 0.5, 1.0
    # sum(m * d^2) / (sum(m) * C) = (0.5 * 3) / (1.5 * 3)
    assert temporal_loss(pred, prev, torch.zeros(1, 2, 4, 4), mask).item() == pytest.approx(1 / 3)


# --------------------------------------------------------------------------------------- adversarial


def test_discriminator_loss_on_constants():
    ones, half, zeros = torch.ones(2, 1, 8, 8), torch.full((2, 1, 8, 8), 0.5), torch.zeros(2, 1, 8, 8)
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., :4, :] = 1
    # D says 0.5 everywhere, mask all ones: 0.5 * 0.25 + 0.5 * 0.25 + 0.25
    assert discriminator_loss(half, half, half, ones).item() == pytest.approx(0.5)
    # the perfect D: D(O) = D(I) = M, D(X) = 0
    assert discriminator_loss(mask, mask, zeros, mask).item() == 0
    # D(O) = D(I) = 0 and D(X) = 1 with a half-covering mask: 0.5 * 0.5 + 0.5 * 0.5 + 1
    assert discriminator_loss(zeros, zeros, ones, mask).item() == pytest.approx(1.5)
    # the real frame's term has weight 1, the others 1/2
    assert discriminator_loss(ones, ones, zeros, zeros).item() == pytest.approx(1.0)


def test_adversarial_loss_on_constants():
    assert adversarial_loss(torch.full((1, 1, 4, 4), 0.5)).item() == pytest.approx(0.25)
    assert adversarial_loss(torch.zeros(3, 1, 4, 4)).item() == 0
    assert adversarial_loss(torch.ones(1, 1, 4, 4)).item() == 1


# ----------------------------------------------------------------------------------------- G's loss


def _g_case():
    target = _image(b=2, seed=1) * 2 - 1
    prev = _image(b=2, seed=2) * 2 - 1
    flow = _const_flow(-2, -1, b=2)
    pred = _shift(prev, 2, 1) + 0.1  # MSE to target: something; temporal: 0.01 everywhere valid
    mask = _region().expand(2, -1, -1, -1)
    d_pred = torch.full((2, 1, 16, 20), 0.5)
    return pred, target, prev, flow, mask, d_pred


def test_generator_loss_terms_and_total():
    pred, target, prev, flow, mask, d_pred = _g_case()
    loss = GeneratorLoss(lambda_temporal=0.02, lambda_adv=0.01)
    terms = loss(pred, target, prev, flow, mask, d_pred)
    assert set(terms) == {"rec", "temporal", "adv", "total"}
    assert terms["rec"].item() == pytest.approx(((pred - target) ** 2).mean().item(), rel=1e-6)
    assert terms["temporal"].item() == pytest.approx(0.01, rel=1e-4)
    assert terms["adv"].item() == pytest.approx(0.25)
    expected = terms["rec"] + 0.02 * terms["temporal"] + 0.01 * terms["adv"]
    assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_generator_loss_options():
    pred, target, prev, flow, mask, d_pred = _g_case()
    none = GeneratorLoss(temporal="none")(pred, target, prev, flow, mask, d_pred)
    assert "temporal" not in none
    assert none["total"].item() == pytest.approx((none["rec"] + 0.01 * none["adv"]).item(), rel=1e-6)
    # no D: no adversarial term
    no_d = GeneratorLoss()(pred, target, prev, flow, mask)
    assert "adv" not in no_d
    # no previous frame: no temporal term
    single = GeneratorLoss()(pred, target)
    assert set(single) == {"rec", "total"} and single["total"] == single["rec"]
    # regional vs global on a change outside the mask only
    outside = _shift(prev, 2, 1) + 0.2 * (1 - mask)
    reg = GeneratorLoss(temporal="regional")(outside, target, prev, flow, mask)["temporal"]
    glob = GeneratorLoss(temporal="global")(outside, target, prev, flow, mask)["temporal"]
    assert reg.item() < 1e-10 and glob.item() > 1e-3
    with pytest.raises(ValueError, match="regional"):
        GeneratorLoss(temporal="sometimes")


def test_generator_loss_relative_reconstruction():
    target = torch.zeros(2, 3, 4, 4)
    comp = target.clone()
    comp[0] += 0.5  # badly off: base error 0.25
    comp[1] += 0.1  # mildly off: base error 0.01
    pred = (comp + target) / 2  # halfway for both: errors 0.0625 and 0.0025
    eps = 1e-3
    rel = GeneratorLoss(relative=True, relative_eps=eps).reconstruction(pred, target, comp)
    expected = (0.0625 / (0.25 + eps) + 0.0025 / (0.01 + eps)) / 2 * (0.13 + eps)
    assert rel.item() == pytest.approx(expected, rel=1e-5)
    plain = GeneratorLoss().reconstruction(pred, target, comp)
    assert plain.item() == pytest.approx(0.0325, rel=1e-6)
    # both pairs weigh alike: the mild pair's share of the gradient is much larger than in plain MSE
    def share(loss):
        p = pred.clone().requires_grad_(True)
        loss.reconstruction(p, target, comp).backward()
        g = p.grad.abs().flatten(1).sum(1)
        return (g[1] / g[0]).item()
    assert share(GeneratorLoss(relative=True)) > 3 * share(GeneratorLoss())
    # perfect prediction: zero; a single pair: the same as plain MSE
    assert GeneratorLoss(relative=True).reconstruction(target, target, comp).item() == 0
    one = GeneratorLoss(relative=True)(pred[:1], target[:1], comp=comp[:1])["rec"]
    assert one.item() == pytest.approx(0.0625, rel=1e-5)


# --------------------------------------------------------------------------------------- colour maths


def test_apply_affine_identity_is_exact():
    img = _image(b=2)
    assert torch.equal(colortransform.apply_affine(img, colortransform.identity(2, 16, 20)), img)
    # a coarse identity is upsampled
    torch.testing.assert_close(colortransform.apply_affine(img, colortransform.identity(2, 2, 3)), img)


def test_apply_affine_known_matrix():
    img = _image()
    a = torch.tensor([[0.8, 0.1, 0.0, 0.05], [0.0, 0.9, 0.05, -0.02], [0.1, 0.0, 0.7, 0.1]])
    coeffs = a.reshape(1, 12, 1, 1).expand(1, 12, 16, 20)
    expected = torch.einsum("ck,bkhw->bchw", a[:, :3], img) + a[:, 3].view(1, 3, 1, 1)
    torch.testing.assert_close(colortransform.apply_affine(img, coeffs), expected, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="12"):
        colortransform.apply_affine(img, coeffs[:, :9])


def test_fit_local_affine_recovers_global_map():
    src = _image(h=32, w=32, seed=3)
    a = torch.tensor([[0.8, 0.1, 0.0], [0.0, 0.9, 0.05], [0.1, 0.0, 0.7]])
    b = torch.tensor([0.05, -0.02, 0.1])
    dst = torch.einsum("ck,bkhw->bchw", a, src) + b.view(1, 3, 1, 1)
    coeffs = colortransform.fit_local_affine(src, dst, radius=3, eps=1e-6)
    assert coeffs.shape == (1, 12, 32, 32)
    fitted = coeffs[0, :, 8:-8, 8:-8].reshape(3, 4, -1).mean(-1)
    torch.testing.assert_close(fitted[:, :3], a, atol=2e-3, rtol=0)
    torch.testing.assert_close(fitted[:, 3], b, atol=2e-3, rtol=0)
    torch.testing.assert_close(colortransform.apply_affine(src, coeffs), dst, atol=2e-3, rtol=0)


def test_pool_masked_grid1_is_mask_weighted_mean():
    coeffs = _image(c=12, h=8, w=8, seed=4)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 1:4] = 1
    mask[..., 6, 1:4] = 0.5  # the top-right 4x4 cell holds no foreground
    pooled = colortransform.pool_masked(coeffs, mask, 1)
    assert pooled.shape == (1, 12, 1, 1)
    fg_mean = (coeffs * mask).sum((2, 3)) / mask.sum()
    torch.testing.assert_close(pooled[:, :, 0, 0], fg_mean, atol=1e-4, rtol=0)
    # differs from the plain mean (the background does not count)
    assert (pooled[:, :, 0, 0] - coeffs.mean((2, 3))).abs().max() > 1e-2
    # grid 2: each cell its own foreground mean; a cell without foreground gets its plain mean
    pooled2 = colortransform.pool_masked(coeffs, mask, 2)
    tl = (coeffs[..., :4, :4] * mask[..., :4, :4]).sum((2, 3)) / mask[..., :4, :4].sum()
    torch.testing.assert_close(pooled2[:, :, 0, 0], tl, atol=1e-4, rtol=0)
    torch.testing.assert_close(pooled2[:, :, 0, 1], coeffs[..., :4, 4:].mean((2, 3)), atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------- metrics


def test_metrics_on_hand_cases():
    target = torch.zeros(1, 3, 4, 4)
    pred = target.clone()
    pred[..., :2, :] = 10 / 255  # half of the pixels off by 10 levels
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1
    assert metrics.mse(pred, target).item() == pytest.approx(50.0, rel=1e-4)
    assert metrics.fmse(pred, target, mask).item() == pytest.approx(100.0, rel=1e-4)
    assert metrics.psnr(torch.tensor([100.0])).item() == pytest.approx(10 * math.log10(255 ** 2 / 100))
    assert metrics.psnr(torch.tensor([0.0])).item() == 100.0
    flow = torch.zeros(1, 2, 4, 4)
    assert metrics.temporal_lt(target, target, flow, mask).item() == 0
    assert metrics.temporal_lt(pred, target, flow, mask).item() == pytest.approx((10 / 255) ** 2, rel=1e-4)
