"""The inference layer: `Harmonizer.step` and the Python API on tensors, and harmonize_video on videos, frame dirs
and images."""

from __future__ import annotations

import dataclasses
import json
import os
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch
from conftest import (
    VIDEO_FPS,
    VIDEO_FRAMES,
    VIDEO_H,
    VIDEO_W,
    blob_mask,
    imread,
    imwrite,
    perturb_generator,
    read_frames_dir,
    read_video,
    tiny_model_cfg,
    write_vfr_video,
)

from vharm import Harmonizer
from vharm.config import InferenceConfig
from vharm.errors import VharmError
from vharm.inference.harmonizer import (
    brighten_change,
    core_of_map,
    cut_between,
    gate_change,
    luma_change,
    mask_from_map,
    scale_change,
    to_tensor,
    to_uint8,
)
from vharm.inference.stream import harmonize_video
from vharm.io.masks import mask_from_pixels as mask_from_array
from vharm.io.video import FrameSource
from vharm.models import Discriminator, Generator, colortransform


@pytest.fixture(scope="module")
def harmonizer(weights_dir) -> Harmonizer:
    return Harmonizer.from_pretrained(weights_dir)


@pytest.fixture(scope="module")
def rgb_weights(tmp_path_factory) -> Path:
    torch.manual_seed(2)
    cfg = tiny_model_cfg(head="rgb")
    path = tmp_path_factory.mktemp("weights") / "tiny-rgb"
    perturb_generator(Generator(cfg)).save_pretrained(path)
    Discriminator(cfg).save_pretrained(path)
    return path


def reference(h: Harmonizer, rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """What the tensor API gives for one uint8 frame and a float (H, W) mask, as uint8."""
    with torch.no_grad():
        return to_uint8(h(to_tensor(rgb), torch.from_numpy(mask.astype(np.float32))[None, None]))


def assert_like_api(out: np.ndarray, h: Harmonizer, rgb: np.ndarray, mask: np.ndarray, tol: int = 8) -> None:
    """`out` (from a file written by the pipeline) is the API's result for (rgb, mask): the background exactly,
    the foreground within `tol` levels (the file path computes in uint8, see test_api_and_cli_same_pixels)."""
    ref = reference(h, rgb, mask).astype(int)
    bg = mask == 0
    assert np.array_equal(out[bg], rgb[bg])
    diff = np.abs(out.astype(int) - ref)
    assert diff.max() <= tol and diff.mean() < 0.5, (diff.max(), diff.mean())
    assert np.abs(out.astype(int) - rgb)[mask > 0.99].mean() > 3  # the foreground did change


def _frames_and_masks(scenes):
    return [s[0] for s in scenes], [s[1].astype(np.float32) / 255 for s in scenes]


# ---------------------------------------------------------------------------------------------- the API


def _tensor_case(b=2, h=120, w=160, seed=0):
    gen = torch.Generator().manual_seed(seed)
    comp = torch.rand(b, 3, h, w, generator=gen)
    mask = torch.zeros(b, 1, h, w)
    mask[..., 30:90, 40:120] = 1
    return comp, mask


def test_api_on_tensors(harmonizer):
    comp, mask = _tensor_case()
    pred = harmonizer(comp, mask)
    assert pred.shape == comp.shape and pred.dtype == torch.float32
    bg = (mask == 0).expand_as(comp)
    assert torch.equal(pred[bg], comp[bg])
    assert (pred - comp).abs()[~bg].mean() > 0.02
    assert float(pred.min()) >= 0 and float(pred.max()) <= 1


def test_api_on_clips_matches_frames(harmonizer):
    comp, mask = _tensor_case(b=3, h=48, w=64)
    clip, clip_mask = comp.view(1, 3, 3, 48, 64), mask.view(1, 3, 1, 48, 64)
    out = harmonizer(clip, clip_mask)
    assert out.shape == (1, 3, 3, 48, 64)
    for t in range(3):
        assert torch.equal(out[0, t], harmonizer(comp[t:t + 1], mask[t:t + 1])[0])
    two = harmonizer(torch.cat([clip, clip]), torch.cat([clip_mask, clip_mask]))
    assert torch.equal(two[0], two[1])
    with pytest.raises(ValueError, match=r"\(B, T, 1, H, W\)"):
        harmonizer(clip, mask[:1])
    no_mask = harmonizer(clip)  # D's map
    assert no_mask.shape == clip.shape


def test_api_rejects_bad_tensors(harmonizer):
    comp, mask = _tensor_case()
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        harmonizer(comp[:, :2], mask)
    with pytest.raises(ValueError, match="mask"):
        harmonizer(comp, mask[..., :-1])
    with pytest.raises(ValueError, match="uint8"):
        harmonizer((comp * 255).to(torch.uint8), mask)


def _checker_case(h=240, w=320):
    yy, xx = np.mgrid[0:h, 0:w]
    checker = ((yy // 2 + xx // 2) % 2).astype(np.float32)  # 2-pixel checkerboard: gone at 64x64
    comp = torch.from_numpy(np.stack([0.3 + 0.4 * checker, 0.5 + 0.2 * checker, 0.2 + 0.3 * checker]))[None]
    mask = torch.zeros(1, 1, h, w)
    mask[..., 40:200, 60:260] = 1
    return comp, mask


INNER = (slice(None), slice(None), slice(60, 180), slice(80, 240))


def _detail(x: torch.Tensor) -> torch.Tensor:
    return (x - torch.nn.functional.avg_pool2d(x, 5, 1, 2))[INNER].abs().mean()


def test_full_resolution_keeps_detail(harmonizer):
    """The network works at 64x64; the result at 240x320 keeps the frame's own detail (not an upscaled blur)."""
    comp, mask = _checker_case()
    pred = harmonizer(comp, mask)
    assert pred.shape == comp.shape
    assert _detail(pred) > 0.5 * _detail(comp)
    assert (pred - comp)[INNER].abs().mean() > 0.01  # and it did change the colours
    bg = (mask == 0).expand_as(comp)
    assert torch.equal(pred[bg], comp[bg])


def test_rgb_head_identity_keeps_full_resolution(rgb_weights):
    h = Harmonizer.from_pretrained(rgb_weights)
    h.generator.raw = lambda comp, mask: comp  # an rgb G that changes nothing
    comp, mask = _checker_case()
    pred = h(comp, mask)
    assert (pred - comp)[INNER].abs().mean() < 0.01
    assert _detail(pred) > 0.5 * _detail(comp)


def test_rgb_head_full_resolution_runs(rgb_weights):
    h = Harmonizer.from_pretrained(rgb_weights)
    comp, mask = _tensor_case(b=1)
    pred = h(comp, mask)
    assert pred.shape == comp.shape
    bg = (mask == 0).expand_as(comp)
    assert torch.equal(pred[bg], comp[bg]) and (pred - comp)[~bg].abs().mean() > 0.01


def test_disharmony_map(harmonizer, weights_no_d):
    comp, _ = _tensor_case(b=1)
    d = harmonizer.disharmony_map(comp)
    assert d.shape == (1, 1, 120, 160) and 0 <= float(d.min()) and float(d.max()) <= 1
    no_d = Harmonizer.from_pretrained(weights_no_d)
    with pytest.raises(VharmError, match="discriminator"):
        no_d.disharmony_map(comp)
    with pytest.raises(VharmError, match="discriminator"):
        no_d(comp)


def test_temporal_smoothing(weights_dir):
    comp, mask = _tensor_case(b=4, h=48, w=64)
    clip, clip_mask = comp.view(1, 4, 3, 48, 64), mask.view(1, 4, 1, 48, 64)
    plain = Harmonizer.from_pretrained(weights_dir)(clip, clip_mask)
    smooth = Harmonizer.from_pretrained(weights_dir, temporal_smoothing=0.8)(clip, clip_mask)
    assert torch.equal(plain[:, 0], smooth[:, 0])  # nothing to smooth with on the first frame
    assert not torch.equal(plain[:, 1:], smooth[:, 1:])
    bg = (clip_mask == 0).expand_as(clip)
    assert torch.equal(smooth[bg], clip[bg])
    with pytest.raises(VharmError, match="smoothing"):
        Harmonizer.from_pretrained(weights_dir, temporal_smoothing=1.0)


# ------------------------------------------------------------------------------------------------- two passes


@pytest.fixture(scope="module")
def global_harmonizer(tmp_path_factory) -> Harmonizer:
    """A tiny G that predicts one colour transform per frame (grid 1), input-dependent, without a gate."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "global"
    perturb_generator(Generator(tiny_model_cfg(grid=1))).save_pretrained(path)
    return Harmonizer.from_pretrained(path)


def _two_shots(scenes):
    """The scene's frames 0-3, then frames 4-7 with the colours inverted: a cut between frames 3 and 4."""
    rgbs, masks = _frames_and_masks(scenes)
    return [r if t < 4 else 255 - r for t, r in enumerate(rgbs)], masks


def test_plan_shots_gives_each_shot_the_area_weighted_mean_of_its_frames(global_harmonizer, scenes):
    h = global_harmonizer
    rgbs, masks = _two_shots(scenes)
    masks[1] = masks[1] * 0.5  # half the foreground weight
    estimates = [h.estimate(r, m) for r, m in zip(rgbs, masks)]
    assert [cut_between(a, b) for a, b in zip(estimates, estimates[1:])] == [False] * 3 + [True] + [False] * 3
    plan = h.plan_shots(estimates)
    for shot in (range(0, 4), range(4, 8)):
        w = torch.tensor([estimates[t].mass for t in shot]).view(-1, 1, 1, 1)
        mean = (w * torch.cat([estimates[t].coeffs for t in shot])).sum(0, keepdim=True) / w.sum()
        assert all(torch.allclose(plan[t], mean, atol=1e-6) for t in shot)
    assert not torch.allclose(plan[0], plan[4], atol=1e-3)  # G sees each shot differently
    # Frames within a shot differ, so the shot's transform is not any one frame's.
    assert not torch.allclose(estimates[0].coeffs, estimates[3].coeffs, atol=1e-4)
    # A frame that failed to decode (None) gets nothing and splits nothing.
    holed = h.plan_shots(estimates[:2] + [None] + estimates[3:4])
    assert holed[2] is None and torch.equal(holed[0], holed[3])


def test_plan_shots_gates_once_per_shot_as_the_frame_gate_would(global_harmonizer, scenes):
    """The shot's gate measures the change's RMS from the colour moments: on one frame whose transform clips
    nothing it is the per-frame gate exactly."""
    rgb, mask = [x[0] for x in _frames_and_masks(scenes)]
    e = dataclasses.replace(global_harmonizer.estimate(rgb, mask), floor=None)  # the gate as it is (next test)
    small = global_harmonizer._small(rgb)
    mask_small = global_harmonizer._mask_small(mask)
    change = colortransform.apply_affine(small, e.coeffs) - small
    inside = (small + change)[(mask_small > 0).expand_as(small)]
    assert 0 < float(inside.min()) and float(inside.max()) < 1  # nothing clips in the mask
    rms = float((change.square() * mask_small).sum() / (3 * mask_small.sum())) ** 0.5 * 255
    for lo, hi, strength in ((rms / 2, rms * 2, 1.0), (0.0, 0.0, 2.0), (rms * 2, rms * 3, 1.0)):
        h = global_harmonizer.with_options(min_change=lo, full_change=hi, strength=strength)
        expected = scale_change(gate_change(e.coeffs, small, mask_small, lo, hi), strength)
        torch.testing.assert_close(h.plan_shots([e])[0], expected, atol=1e-5, rtol=0)
    assert torch.equal(h.plan_shots([e])[0], colortransform.identity(1, 1, 1))  # the last: dropped whole


def test_brighten_scales_the_luminance_of_brightening_changes_only():
    """`brighten_change`: a brightening change's luma, added to R, G and B alike, times the gain; its colour cast,
    and a darkening change, untouched; the gain 1 gives the transform back."""
    small = torch.full((2, 3, 8, 8), 0.4)
    mask = torch.ones(2, 1, 8, 8)
    coeffs = colortransform.identity(2, 1, 1)
    coeffs[0, 3::4] = torch.tensor([0.10, 0.02, 0.0]).view(3, 1, 1)   # brighter, and warmer
    coeffs[1, 3::4] = torch.tensor([-0.10, -0.02, 0.0]).view(3, 1, 1)  # darker
    brighter = luma_change(coeffs, small, mask)
    assert brighter[0] > 0 > brighter[1]
    out = brighten_change(coeffs, brighter, 3.0)
    change, new = (x - colortransform.identity(1, 1, 1) for x in (coeffs, out))
    luma = 0.299 * 0.10 + 0.587 * 0.02
    torch.testing.assert_close(new[0, 3::4, 0, 0] - change[0, 3::4, 0, 0], torch.full((3,), 2 * luma))
    torch.testing.assert_close(luma_change(out, small, mask)[0], 3 * brighter[0])
    assert torch.equal(out[1], coeffs[1]) and torch.equal(brighten_change(coeffs, brighter, 1.0), coeffs)


def test_brighten_is_applied_after_the_gate_in_step_and_plan_shots_alike(global_harmonizer, scenes):
    """One frame, the gate off: `step` and `plan_shots` scale the same change the same way, and the frame's
    foreground comes out brighter than without the gain when G brightens it (darker, or unchanged, otherwise)."""
    rgb, mask = [x[0] for x in _frames_and_masks(scenes)]
    e = dataclasses.replace(global_harmonizer.estimate(rgb, mask), floor=None)
    plain, boosted = (global_harmonizer.with_options(min_change=0, full_change=0, brighten=g) for g in (1.0, 4.0))
    small, mask_small = plain._small(rgb), plain._mask_small(mask)
    expected = brighten_change(e.coeffs, luma_change(e.coeffs, small, mask_small), 4.0)
    torch.testing.assert_close(boosted.plan_shots([e])[0], expected, atol=1e-5, rtol=0)
    with torch.no_grad():  # as `step` runs it
        step = boosted._predict(small, mask_small, None, None)[0]
    torch.testing.assert_close(step, expected, atol=1e-5, rtol=0)
    inside = mask > 0.5
    up = float(luma_change(e.coeffs, small, mask_small)[0]) > 0
    a, b = (h.step(rgb, mask)[0][inside].astype(float).mean() for h in (plain, boosted))
    assert up and b > a + 0.5, (up, a, b)


@pytest.mark.parametrize("offset", [0.1, -0.1])
def test_darken_gate_raises_the_gate_for_darkening_changes_only(global_harmonizer, scenes, monkeypatch, offset):
    """A change of about 25 levels passes the gate (10, 15); with `darken_gate` 3 the gate is (30, 45) for a change
    that darkens the foreground, which is dropped, in the streaming step and in `plan_shots` alike, while a change
    that brightens it passes as before."""
    rgb, mask = [x[0] for x in _frames_and_masks(scenes)]
    coeffs = colortransform.identity(1, 1, 1)
    coeffs[:, 3::4] = offset  # the same offset on R, G and B: brighter or darker, no cast
    e = dataclasses.replace(global_harmonizer.estimate(rgb, mask), coeffs=coeffs, floor=None)
    one, three = (global_harmonizer.with_options(min_change=10, full_change=15, temporal_smoothing=0, darken_gate=k)
                  for k in (1.0, 3.0))
    eye = colortransform.identity(1, 1, 1)
    small, mask_small = one._small(rgb), one._mask_small(mask)
    for h in (one, three):
        monkeypatch.setattr(h, "_raw_transform", lambda *args: (coeffs, mask_small))
        monkeypatch.setattr(h, "_scene_floor", lambda *args: None)
    for h in (one, three):
        expected = eye if offset < 0 and h is three else coeffs
        torch.testing.assert_close(h.plan_shots([e])[0], expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(h._predict(small, mask_small, None, None)[0], expected, atol=1e-6, rtol=0)


def test_g_steps_compose_g_on_its_own_result_in_step_and_plan_shots(global_harmonizer, scenes):
    """`g_steps` 3, the gate off: the transform is G's on the frame, then G's on the frame as that left it, then again,
    each composed after the one before; `step` and `plan_shots` (one frame) agree; 1 step is G's estimate."""
    rgb, mask = [x[0] for x in _frames_and_masks(scenes)]
    h = global_harmonizer.with_options(min_change=0, full_change=0, temporal_smoothing=0, g_steps=3)
    small, mask_small = h._small(rgb), h._mask_small(mask)
    with torch.no_grad():
        expected = h.generator.transform(small, mask_small)
        for _ in range(2):
            shown = small + mask_small * (colortransform.apply_affine(small, expected).clamp(0, 1) - small)
            expected = colortransform.compose(h.generator.transform(shown, mask_small), expected)
        first = h.generator.transform(small, mask_small)
        step = h._predict(small, mask_small, None, None)[0]
    torch.testing.assert_close(step, expected, atol=1e-6, rtol=0)
    assert (step - first).abs().max() > 1e-3  # the steps after the first move the transform
    e = dataclasses.replace(h.estimate(rgb, mask), floor=None)
    torch.testing.assert_close(e.coeffs, first, atol=1e-6, rtol=0)
    torch.testing.assert_close(h.plan_shots([e])[0], expected, atol=1e-5, rtol=0)
    one = h.with_options(g_steps=1)
    torch.testing.assert_close(one.plan_shots([dataclasses.replace(one.estimate(rgb, mask), floor=None)])[0], first,
                               atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="3 step"):  # estimates of 3 steps planned with 1
        one.plan_shots([e])


def test_g_steps_leave_the_gates_decision_to_the_first_step(global_harmonizer, scenes, monkeypatch):
    """A first step under the gate is dropped whatever the steps after it would add; one over it passes with the
    steps' transform, in `step` and `plan_shots` alike."""
    rgb, mask = [x[0] for x in _frames_and_masks(scenes)]
    small, mask_small = global_harmonizer._small(rgb), global_harmonizer._mask_small(mask)
    eye = colortransform.identity(1, 1, 1)
    for offset, passes in ((0.02, False), (0.2, True)):  # about 5 and 51 levels against the gate (10, 15)
        coeffs = eye.clone()
        coeffs[:, 3::4] = offset
        h = global_harmonizer.with_options(min_change=10, full_change=15, temporal_smoothing=0, g_steps=4)
        monkeypatch.setattr(h, "_raw_transform", lambda *args, c=coeffs: (c, mask_small))
        monkeypatch.setattr(h, "_scene_floor", lambda *args: None)
        further = h._more_steps(small, mask_small, mask_small, coeffs)
        assert (further - coeffs).abs().max() > 1e-3
        e = dataclasses.replace(global_harmonizer.estimate(rgb, mask), coeffs=coeffs, further=further, floor=None,
                                steps=4)
        with torch.no_grad():
            step = h._predict(small, mask_small, None, None)[0]
        for got in (step, h.plan_shots([e])[0]):
            torch.testing.assert_close(got, further if passes else eye, atol=1e-6, rtol=0)


def test_automatic_masks_run_with_one_step_and_no_brightening_gain(global_harmonizer):
    h = global_harmonizer.with_options(g_steps=3, brighten=2.0)
    auto = h.for_mask("auto")
    assert (auto.g_steps, auto.brighten, h.for_mask("file").g_steps) == (1, 1.0, 3)
    assert global_harmonizer.for_mask("auto") is global_harmonizer


def test_plan_shots_raises_the_gate_to_the_change_g_makes_to_the_scenes_background(global_harmonizer, scenes):
    """`Estimate.floor`: G's change to the frame's mask moved onto the background. A shot's change no larger than
    its frames' median floor is dropped; with the gate off the floor does nothing."""
    rgbs, masks = _frames_and_masks(scenes)
    estimates = [global_harmonizer.estimate(r, m) for r, m in zip(rgbs, masks)]
    assert all(e.floor is not None and e.floor > 0 for e in estimates)
    assert global_harmonizer.estimate(rgbs[0], np.ones_like(masks[0])).floor is None  # no background to move onto
    h = global_harmonizer.with_options(min_change=0.5, full_change=0.75)
    eye = colortransform.identity(1, 1, 1)
    kept = h.plan_shots([dataclasses.replace(e, floor=None) for e in estimates])[0]
    assert not torch.equal(kept, eye)  # G's change is above 0.75 levels
    high = h.plan_shots([dataclasses.replace(e, floor=255.0) for e in estimates])[0]
    assert torch.equal(high, eye)
    off = global_harmonizer.with_options(min_change=0, full_change=0)
    assert torch.equal(off.plan_shots([dataclasses.replace(e, floor=255.0) for e in estimates])[0],
                       off.plan_shots([dataclasses.replace(e, floor=None) for e in estimates])[0])


def test_streaming_gate_rises_to_the_smoothed_scene_floor(global_harmonizer, scenes, monkeypatch):
    """`step` carries the EMA of each frame's floor (`StepState.floor`) and raises the gate to it, as `plan_shots`
    does with a shot's median; with the gate off it computes none."""
    rgbs, masks = _frames_and_masks(scenes)
    h = global_harmonizer.with_options(min_change=0.5, full_change=0.75, temporal_smoothing=0.5)
    pred, _, state = h.step(rgbs[0], masks[0])
    first = h._scene_floor(h._small(rgbs[0]), h._mask_small(masks[0]))
    assert state.floor == pytest.approx(first) and 0 < first < 255
    assert not np.array_equal(pred, rgbs[0])  # G's change is above the floor here
    _, _, second = h.step(rgbs[1], masks[1], state)
    now = h._scene_floor(h._small(rgbs[1]), h._mask_small(masks[1]))
    assert second.floor == pytest.approx(0.5 * first + 0.5 * now) and now != pytest.approx(first)
    # A frame without background to move onto keeps the last floor.
    assert h.step(rgbs[2], np.ones_like(masks[2]), second)[2].floor == second.floor
    monkeypatch.setattr(h, "_scene_floor", lambda *a: 255.0)  # a scene G changes more than it changes the foreground
    assert np.array_equal(h.step(rgbs[0], masks[0])[0], rgbs[0])
    off = global_harmonizer.with_options(min_change=0, full_change=0)
    assert off.step(rgbs[0], masks[0])[2].floor is None


def test_two_pass_video_applies_each_frames_planned_transform(global_harmonizer, media, tmp_path, scenes):
    h = global_harmonizer
    out = tmp_path / "two-pass"
    timing = harmonize_video(h, media["frames"], media["mask_frames"], out, two_pass=True)
    assert timing.frames == len(scenes) and timing.wall > 0
    written = read_frames_dir(out)
    rgbs, masks = _frames_and_masks(scenes)
    plan = h.plan_shots([h.estimate(r, m) for r, m in zip(rgbs, masks)])
    assert all(torch.equal(p, plan[0]) for p in plan)  # one shot
    one_pass = _run_png(h, media["frames"], media["mask_frames"], tmp_path / "one-pass")
    for t, name in enumerate(sorted(written)):
        assert np.array_equal(written[name], colortransform.apply_to_frame(rgbs[t], plan[t], masks[t]))
        assert np.array_equal(written[name][masks[t] == 0], rgbs[t][masks[t] == 0])
    assert any(not np.array_equal(written[n], one_pass[n]) for n in written)


def test_two_pass_from_the_command_line_and_its_errors(run_cli, global_harmonizer, harmonizer, media, tmp_path):
    weights = tmp_path / "w"
    global_harmonizer.save_pretrained(weights)
    out = tmp_path / "out.mp4"
    code, stdout, _ = run_cli("harmonize", str(media["video"]), "-m", str(media["mask_video"]), "-o", str(out),
                              "--weights", str(weights), "--two-pass", "--quiet")
    assert code == 0 and f"{VIDEO_FRAMES} frame(s)" in stdout
    assert len(read_video(out)[0]) == VIDEO_FRAMES
    # Weights with a per-pixel transform cannot average it over a shot: said before any output exists.
    with pytest.raises(VharmError, match="one colour transform per frame"):
        harmonize_video(harmonizer, media["frames"], media["mask_frames"], tmp_path / "grid", two_pass=True)
    assert not (tmp_path / "grid").exists()


def _offset(levels: list[float]) -> torch.Tensor:
    """A (B, 12, 1, 1) transform adding `levels[b]` (0-255) to every channel of image b."""
    coeffs = colortransform.identity(len(levels), 1, 1).clone()
    coeffs[:, 3::4] = torch.tensor(levels).view(-1, 1, 1, 1) / 255
    return coeffs


def test_gate_change_drops_small_changes_ramps_middle_ones_keeps_large_ones():
    small = torch.full((4, 3, 8, 8), 0.5)
    mask = torch.zeros(4, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    coeffs = _offset([2.0, 6.0, 9.0, 20.0])
    gated = gate_change(coeffs, small, mask, min_change=3.0, full_change=12.0)
    # The RMS change after the gate: 0 below 3 levels, ramped linearly to 12 between 3 and 12, whole above 12.
    after = (colortransform.apply_affine(small, gated) - small)[:, 0, 4, 4] * 255
    torch.testing.assert_close(after, torch.tensor([0.0, 12 * 3 / 9, 12 * 6 / 9, 20.0]), atol=1e-4, rtol=0)
    assert torch.equal(gate_change(coeffs, small, mask, 0.0, 0.0), coeffs)
    # Equal thresholds: a hard gate.
    hard = gate_change(coeffs, small, mask, 7.0, 7.0)
    assert torch.equal(hard[:2], colortransform.identity(2, 1, 1)) and torch.equal(hard[2:], coeffs[2:])


def test_gate_change_measures_the_change_inside_the_mask_only():
    small = torch.full((1, 3, 8, 8), 0.5)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :2, :2] = 1
    coeffs = colortransform.identity(1, 8, 8).clone()
    coeffs[:, 3::4, 4:, 4:] = 50 / 255  # a large change, but only outside the mask
    assert torch.equal(gate_change(coeffs, small, mask, 3.0, 6.0), colortransform.identity(1, 8, 8))


def test_harmonizer_gate(weights_dir):
    comp, mask = _tensor_case(b=2, h=48, w=64)
    off = Harmonizer.from_pretrained(weights_dir, min_change=0, full_change=0)(comp, mask)
    assert not torch.equal(off, comp)
    assert torch.equal(Harmonizer.from_pretrained(weights_dir, min_change=255, full_change=255)(comp, mask), comp)
    with pytest.raises(VharmError, match="min_change <= full_change"):
        Harmonizer.from_pretrained(weights_dir, min_change=4, full_change=2)
    with pytest.raises(VharmError, match="min_change <= full_change"):
        Harmonizer.from_pretrained(weights_dir, min_change=4)  # the test weights have no gate: full_change 0


def test_strength_scales_the_change_of_the_transform(weights_dir, scenes):
    """0 returns the input exactly, 2 twice the change of 1 (the transform is scaled, so unclipped pixels change by
    twice as much, up to rounding); the gate comes first: a change it drops stays dropped at any strength."""
    rgb, mask_u8 = scenes[0]
    mask = (mask_u8 / 255).astype(np.float32)
    preds = {s: Harmonizer.from_pretrained(weights_dir, strength=s).step(rgb, mask)[0].astype(int) for s in (0, 1, 2)}
    assert np.array_equal(preds[0], rgb)
    inside = (mask == 1) & (preds[2] > 0).all(-1) & (preds[2] < 255).all(-1)  # full-weight, unclipped pixels
    change1, change2 = (preds[1] - rgb)[inside], (preds[2] - rgb)[inside]
    assert np.abs(change1).mean() > 3
    assert np.abs(change2 - 2 * change1).max() <= 1  # each output rounds to 8 bits
    comp, m = _tensor_case(b=2, h=48, w=64)
    gated = Harmonizer.from_pretrained(weights_dir, min_change=255, full_change=255, strength=2)
    assert torch.equal(gated(comp, m), comp)


def test_scale_change_is_identity_plus_strength_times_the_change():
    coeffs = colortransform.identity(1, 2, 2).clone()
    coeffs[:, 0] = 1.2  # R' = 1.2 R
    coeffs[:, 3::4] = 0.1
    eye = colortransform.identity(1, 2, 2)
    assert torch.equal(scale_change(coeffs, 0.0), eye)
    assert scale_change(coeffs, 1.0) is coeffs
    torch.testing.assert_close(scale_change(coeffs, 2.0) - eye, 2 * (coeffs - eye))


def test_strength_goes_through_the_weights_and_with_options(weights_dir, tmp_path):
    h = Harmonizer.from_pretrained(weights_dir, strength=0.5)
    assert h.strength == 0.5 and h.inference_config.strength == 0.5
    assert Harmonizer.from_pretrained(weights_dir).strength == 1.0  # weights without the setting: 1
    h.save_pretrained(tmp_path / "w")
    assert json.loads((tmp_path / "w" / "config.json").read_text())["inference"]["strength"] == 0.5
    assert Harmonizer.from_pretrained(tmp_path / "w").strength == 0.5
    assert Harmonizer.from_pretrained(tmp_path / "w", strength=1.5).strength == 1.5
    other = h.with_options(strength=2.0, temporal_smoothing=0.5)
    assert other.generator is h.generator and (other.strength, other.temporal_smoothing, h.strength) == (2, 0.5, 0.5)
    for bad in (-0.1, 2.5):
        with pytest.raises(VharmError, match=r"strength .*\(--strength\): must be in \[0, 2\]"):
            Harmonizer.from_pretrained(weights_dir, strength=bad)
        with pytest.raises(VharmError, match="--strength"):
            h.with_options(strength=bad)


def test_every_inference_setting_keeps_its_own_value_through_with_options_and_save(weights_dir, tmp_path):
    """Each `InferenceConfig` field with a value no other field has: none may land in another's place (the
    darkening factor and the brightening gain once swapped in `with_options` and the page's defaults)."""
    values = {"temporal_smoothing": 0.3, "min_change": 2.0, "full_change": 3.0, "strength": 0.7,
              "mask_free_gate": 1.5, "brighten": 1.75, "darken_gate": 1.25, "g_steps": 3}
    assert set(values) == {f.name for f in dataclasses.fields(InferenceConfig)}
    h = Harmonizer.from_pretrained(weights_dir, **values)
    assert dataclasses.asdict(h.inference_config) == values
    assert dataclasses.asdict(h.with_options().inference_config) == values
    assert dataclasses.asdict(h.with_options(strength=1.0).inference_config) == {**values, "strength": 1.0}
    h.save_pretrained(tmp_path / "w")
    assert json.loads((tmp_path / "w" / "config.json").read_text())["inference"] == values


def test_unknown_weights_name_is_vharm_error(tmp_path):
    with pytest.raises(VharmError, match="not found|config.json"):
        Harmonizer.from_pretrained(tmp_path / "no-such-weights")
    with pytest.raises(VharmError):
        Harmonizer.from_pretrained("no-such-shipped-name")


# -------------------------------------------------------------------------------------- video and files


def test_video_to_video_keeps_count_size_fps_and_timestamps(harmonizer, media, tmp_path):
    out = tmp_path / "out.mp4"
    timing = harmonizer.harmonize_video(media["video"], mask=media["mask_video"], output=out)
    assert timing.frames == VIDEO_FRAMES and timing.fps > 0
    frames, fps = read_video(out)
    assert len(frames) == VIDEO_FRAMES and frames[0].shape == (VIDEO_H, VIDEO_W, 3)
    assert fps == VIDEO_FPS
    with av.open(str(media["video"])) as a, av.open(str(out)) as b:
        pts_in = [f.pts * a.streams.video[0].time_base for f in a.decode(video=0)]
        pts_out = [f.pts * b.streams.video[0].time_base for f in b.decode(video=0)]
    assert pts_in == pts_out
    inputs, _ = read_video(media["video"])
    assert np.mean([np.abs(o.astype(int) - i).mean() for o, i in zip(frames, inputs)]) > 2  # changed


def test_video_to_frame_dir_background_exact(harmonizer, media, tmp_path):
    out = tmp_path / "frames"
    harmonize_video(harmonizer, media["video"], media["mask_video"], out)
    written = read_frames_dir(out)
    assert sorted(written) == [f"{i:05d}.png" for i in range(VIDEO_FRAMES)]
    inputs, _ = read_video(media["video"])
    masks, _ = read_video(media["mask_video"])
    for i, (name, frame) in enumerate(sorted(written.items())):
        m = mask_from_array(masks[i])
        bg = m == 0
        assert bg.mean() > 0.5
        assert np.array_equal(frame[bg], inputs[i][bg]), name
        assert np.abs(frame.astype(int) - inputs[i])[m > 0.99].mean() > 5  # the foreground changed
        # and it is the API's result for the decoded frame and mask
        assert_like_api(frame, harmonizer, inputs[i], m)


def test_frame_dir_to_dir_keeps_names(harmonizer, media, tmp_path, scenes):
    out = tmp_path / "out"
    harmonize_video(harmonizer, media["frames"], media["mask_frames"], out)
    written = read_frames_dir(out)
    assert sorted(written) == sorted(p.name for p in media["frames"].iterdir())
    rgbs, masks = _frames_and_masks(scenes)
    for t, name in enumerate(sorted(written)):
        assert_like_api(written[name], harmonizer, rgbs[t], masks[t])


def test_frame_dir_to_video_has_default_rate(harmonizer, media, tmp_path):
    out = tmp_path / "out.mkv"
    harmonize_video(harmonizer, media["frames"], media["mask_frames"], out)
    frames, fps = read_video(out)
    assert len(frames) == VIDEO_FRAMES and frames[0].shape == (VIDEO_H, VIDEO_W, 3) and fps == 25


def test_image_to_image(harmonizer, media, tmp_path, scenes):
    out = tmp_path / "out.png"
    timing = harmonize_video(harmonizer, media["image"], media["image_mask"], out)
    assert timing.frames == 1
    rgb, mask = scenes[3]
    assert_like_api(imread(out), harmonizer, rgb, mask / 255)
    jpg = tmp_path / "out.jpg"
    harmonize_video(harmonizer, media["image"], media["image_mask"], jpg)
    assert imread(jpg).shape == (VIDEO_H, VIDEO_W, 3)
    assert np.abs(imread(jpg).astype(int) - imread(out)).mean() < 10  # a JPEG of the same result


def test_start_and_frames_slice(harmonizer, media, tmp_path, scenes):
    out = tmp_path / "slice"
    timing = harmonize_video(harmonizer, media["frames"], media["mask_frames"], out, start=2, frames=3)
    assert timing.frames == 3
    written = read_frames_dir(out)
    assert sorted(written) == ["frame_002.png", "frame_003.png", "frame_004.png"]
    rgbs, masks = _frames_and_masks(scenes)
    assert_like_api(written["frame_003.png"], harmonizer, rgbs[3], masks[3])


def test_video_into_one_image_is_refused_and_leaves_nothing(harmonizer, media, tmp_path):
    with pytest.raises(VharmError, match="one frame"):
        harmonize_video(harmonizer, media["video"], media["mask_video"], tmp_path / "out.png")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_refused_unless_overwrite(harmonizer, media, tmp_path):
    out = tmp_path / "out.png"
    out.write_bytes(b"keep me")
    with pytest.raises(VharmError, match="already exists"):
        harmonize_video(harmonizer, media["image"], media["image_mask"], out)
    assert out.read_bytes() == b"keep me"
    harmonize_video(harmonizer, media["image"], media["image_mask"], out, overwrite=True)
    assert imread(out).shape == (VIDEO_H, VIDEO_W, 3)
    with pytest.raises(VharmError, match="same file as an input"):
        harmonize_video(harmonizer, media["image"], media["image_mask"], media["image"], overwrite=True)


# ------------------------------------------------------------------------------------------- mask kinds


def _run_png(h, inp, mask, out_dir: Path) -> dict[str, np.ndarray]:
    harmonize_video(h, inp, mask, out_dir)
    return read_frames_dir(out_dir)


def test_static_mask_image_for_every_frame(harmonizer, media, tmp_path):
    written = _run_png(harmonizer, media["video"], media["static_mask"], tmp_path / "o")
    assert len(written) == VIDEO_FRAMES
    inputs, _ = read_video(media["video"])
    static = cv2.imread(str(media["static_mask"]), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255
    for i, name in enumerate(sorted(written)):
        assert_like_api(written[name], harmonizer, inputs[i], static)


def test_mask_video_for_frame_dir(harmonizer, media, tmp_path, scenes):
    written = _run_png(harmonizer, media["frames"], media["mask_video"], tmp_path / "o")
    masks, _ = read_video(media["mask_video"])
    rgbs, _ = _frames_and_masks(scenes)
    for t, name in enumerate(sorted(written)):
        assert_like_api(written[name], harmonizer, rgbs[t], mask_from_array(masks[t]))


def test_rgba_alpha_is_the_mask_without_m(harmonizer, media, tmp_path):
    rgba = _run_png(harmonizer, media["rgba_frames"], None, tmp_path / "rgba")
    plain = _run_png(harmonizer, media["frames"], media["mask_frames"], tmp_path / "plain")
    assert sorted(rgba) == sorted(plain)
    assert all(np.array_equal(rgba[k], plain[k]) for k in plain)


def test_frames_without_any_mask_are_refused(harmonizer, media, tmp_path):
    with pytest.raises(VharmError, match="no mask"):
        harmonize_video(harmonizer, media["frames"], None, tmp_path / "o")


def test_opaque_rgba_without_a_mask_is_refused(harmonizer, tmp_path, scenes):
    """An RGBA image whose alpha is opaque everywhere carries no mask: it is not harmonized over the whole frame."""
    rgb = scenes[0][0]
    cv2.imwrite(str(tmp_path / "opaque.png"), np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 255, np.uint8)]))
    with pytest.raises(VharmError, match="opaque.png: no mask .its alpha is opaque"):
        harmonize_video(harmonizer, tmp_path / "opaque.png", None, tmp_path / "out.png")
    assert not (tmp_path / "out.png").exists()


def test_the_stream_keeps_the_thread_count_its_process_chose(harmonizer, media, tmp_path, monkeypatch):
    """Whoever starts the process owns torch's thread count; the video path never resets it."""
    chosen = (os.cpu_count() or 2) // 2 + 1  # never the "half the cores" the stream used to impose
    seen = []
    real = Harmonizer.step
    monkeypatch.setattr(Harmonizer, "step", lambda *a, **k: (seen.append(torch.get_num_threads()), real(*a, **k))[1])
    before = torch.get_num_threads()
    torch.set_num_threads(chosen)
    try:
        harmonize_video(harmonizer, media["video"], media["mask_video"], tmp_path / "o.mp4")
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {chosen}


def _one_frame_case(tmp_path, scenes, mask_array, name="mask.png"):
    rgb, mask = scenes[0]
    imwrite(tmp_path / "comp.png", rgb)
    imwrite(tmp_path / name, mask_array(mask))
    return tmp_path / "comp.png", tmp_path / name, rgb, mask.astype(np.float32) / 255


@pytest.mark.parametrize("kind,make", [
    ("16-bit", lambda m: m.astype(np.uint16) * 257),
    ("0/1", lambda m: (m > 127).astype(np.uint8)),
    ("rgb", lambda m: np.dstack([m, m, m])),
    ("gray+alpha-varying", lambda m: np.dstack([m, m, m, m])),
])
def test_mask_encodings_equal_the_8bit_mask(harmonizer, tmp_path, scenes, kind, make):
    comp, mask_path, rgb, mask = _one_frame_case(tmp_path, scenes, make)
    harmonize_video(harmonizer, comp, mask_path, tmp_path / "out.png")
    imwrite(tmp_path / "plain.png", scenes[0][1])
    harmonize_video(harmonizer, comp, tmp_path / "plain.png", tmp_path / "expected.png")
    assert np.array_equal(imread(tmp_path / "out.png"), imread(tmp_path / "expected.png")), kind
    assert_like_api(imread(tmp_path / "out.png"), harmonizer, rgb, mask)


def test_soft_16bit_mask(harmonizer, tmp_path, scenes):
    rgb, _ = scenes[0]
    ramp = np.tile(np.linspace(0, 65535, VIDEO_W), (VIDEO_H, 1)).astype(np.uint16)
    imwrite(tmp_path / "comp.png", rgb)
    imwrite(tmp_path / "ramp.png", ramp)
    harmonize_video(harmonizer, tmp_path / "comp.png", tmp_path / "ramp.png", tmp_path / "out.png")
    out = imread(tmp_path / "out.png").astype(int)
    change = np.abs(out - rgb).mean(axis=(0, 2))  # per column
    # the output moves from the input (mask 0, left) toward the full change (mask 1, right)
    assert np.array_equal(out[:, 0], rgb[:, 0])
    quarter = VIDEO_W // 4
    assert change[-quarter:].mean() > 2 * change[:quarter].mean() > 0


def test_jpeg_mask_works(harmonizer, tmp_path, scenes):
    rgb, mask = scenes[0]
    imwrite(tmp_path / "comp.png", rgb)
    cv2.imwrite(str(tmp_path / "mask.jpg"), mask, [cv2.IMWRITE_JPEG_QUALITY, 70])
    harmonize_video(harmonizer, tmp_path / "comp.png", tmp_path / "mask.jpg", tmp_path / "out.png")
    out = imread(tmp_path / "out.png").astype(int)
    # JPEG leaves values of mostly 1/255 (up to ~16/255 in ringing) in the black background: a faint change
    far = cv2.dilate(mask, np.ones((9, 9), np.uint8)) == 0
    assert np.abs(out - rgb)[far].mean() < 0.5
    assert np.abs(out - rgb)[mask == 255].mean() > 5


def test_opaque_rgba_mask_uses_its_rgb(harmonizer, tmp_path, scenes):
    comp, mask_path, rgb, mask = _one_frame_case(
        tmp_path, scenes, lambda m: np.dstack([m, m, m, np.full_like(m, 255)]))
    harmonize_video(harmonizer, comp, mask_path, tmp_path / "out.png")
    out = imread(tmp_path / "out.png")
    assert np.array_equal(out[mask == 0], rgb[mask == 0])


def test_empty_mask_copies_the_frame_with_a_warning(harmonizer, tmp_path, scenes):
    comp, mask_path, rgb, _ = _one_frame_case(tmp_path, scenes, lambda m: np.zeros_like(m))
    warnings = []
    harmonize_video(harmonizer, comp, mask_path, tmp_path / "out.png", warn=warnings.append)
    assert np.array_equal(imread(tmp_path / "out.png"), rgb)
    assert len(warnings) == 1 and "empty" in warnings[0]


def test_mask_errors(harmonizer, media, tmp_path, scenes):
    small = tmp_path / "small.png"
    imwrite(small, blob_mask(24, 32, 16, 12, 5, 5))
    with pytest.raises(VharmError, match="mask size 32x24 differs"):
        harmonize_video(harmonizer, media["video"], small, tmp_path / "o.mp4")
    few = tmp_path / "few"
    few.mkdir()
    for t in range(3):
        imwrite(few / f"{t}.png", scenes[t][1])
    with pytest.raises(VharmError, match="3 mask frames for 8 input frames"):
        harmonize_video(harmonizer, media["frames"], few, tmp_path / "o2")
    with pytest.raises(VharmError, match="exclude"):
        harmonize_video(harmonizer, media["frames"], media["mask_frames"], tmp_path / "o3", no_mask=True)
    assert not any(p.name.startswith("o") for p in tmp_path.iterdir())


def test_frame_dir_with_mixed_sizes_is_refused(harmonizer, tmp_path, scenes):
    (tmp_path / "in").mkdir()
    imwrite(tmp_path / "in" / "a.png", scenes[0][0])
    imwrite(tmp_path / "in" / "b.png", scenes[1][0][:40])
    imwrite(tmp_path / "m.png", scenes[0][1])
    with pytest.raises(VharmError, match="b.png: frame size"):
        harmonize_video(harmonizer, tmp_path / "in", tmp_path / "m.png", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------- mask-free and save-mask


def test_no_mask_uses_d_and_saves_the_map(harmonizer, media, tmp_path):
    out, saved = tmp_path / "out.mp4", tmp_path / "map"
    timing = harmonize_video(harmonizer, media["video"], None, out, no_mask=True, save_mask=saved)
    assert timing.frames == VIDEO_FRAMES
    frames, _ = read_video(out)
    assert len(frames) == VIDEO_FRAMES
    maps = read_frames_dir(saved)
    assert sorted(maps) == [f"{i:05d}.png" for i in range(VIDEO_FRAMES)]
    inputs, _ = read_video(media["video"])
    with torch.no_grad():
        raw = harmonizer.disharmony_map(to_tensor(inputs[0]))
    d = mask_from_map(raw)[0, 0].numpy()
    first = maps["00000.png"][..., 0].astype(np.float32) / 255
    # the mask actually used is D's map, stretched (up to the resampling of D's input and of its map)
    assert np.abs(first - d).mean() < 0.02
    assert first.std() > 0.01 and first.min() == 0 and first.max() > 0.9


def test_mask_from_map_stretches_each_frame():
    gen = torch.Generator().manual_seed(0)
    dmap = 0.2 + 0.05 * torch.rand(2, 1, 16, 16, generator=gen)  # a low-contrast background ...
    dmap[:, :, 4:8, 4:8] = 0.4  # ... and a foreground D finds only a little more disharmonious
    dmap[1] *= 0.5  # another frame, another level
    m = mask_from_map(dmap)
    assert m.shape == dmap.shape and float(m.min()) == 0 and float(m.max()) == 1
    for b in range(2):
        assert float(m[b, 0, 4:8, 4:8].min()) == 1  # the foreground becomes a full mask
        assert float((m[b, 0] > 0).float().mean()) < 0.6  # at least the lower half (median) becomes background
    flat = torch.full((1, 1, 8, 8), 0.3)
    assert float(mask_from_map(flat).max()) == 0  # a flat map finds nothing
    ramp = torch.linspace(0, 1, 101).view(1, 1, 1, 101)  # median 0.5, 99th percentile 0.99
    assert float(mask_from_map(ramp)[0, 0, 0, 75]) == pytest.approx(((0.75 - 0.5) / (0.99 - 0.5)) ** 2, abs=1e-4)


def test_core_of_map_keeps_the_most_disharmonious_pixels():
    gen = torch.Generator().manual_seed(0)
    dmap = 0.2 + 0.05 * torch.rand(2, 1, 20, 20, generator=gen)
    dmap[:, :, 2:10, 2:10] += 0.2 + 0.01 * torch.rand(2, 1, 8, 8, generator=gen)  # 64 of 400 pixels
    core = core_of_map(dmap, top=0.05)
    assert set(core.unique().tolist()) == {0.0, 1.0}
    for b in range(2):
        assert int(core[b].sum()) == 20  # 5 % of 400: the top, all of them inside the foreground
        assert float(core[b, 0, 2:10, 2:10].sum()) == 20


def test_no_mask_statistics_come_from_the_core(harmonizer):
    small = torch.rand(1, 3, harmonizer.resolution, harmonizer.resolution, generator=torch.Generator().manual_seed(1))
    coeffs, used, *_ = harmonizer._predict(small, None, None, None)
    dmap = harmonizer.discriminator(small)
    torch.testing.assert_close(coeffs, harmonizer.generator.transform(small, core_of_map(dmap)))
    assert not torch.allclose(coeffs, harmonizer.generator.transform(small, mask_from_map(dmap)))
    torch.testing.assert_close(used, mask_from_map(dmap))


def test_mask_free_smoothing_averages_d_maps_over_frames(harmonizer):
    """With temporal smoothing, mask-free mode carries an EMA of D's map (the blend and the core come from it)."""
    rng = np.random.default_rng(4)
    frames = [rng.integers(0, 256, (64, 80, 3), dtype=np.uint8) for _ in range(2)]
    h = harmonizer.with_options(temporal_smoothing=0.75)
    _, _, first = h.step(frames[0], None)
    _, used, second = h.step(frames[1], None, first)
    alone = h.discriminator(h._small(frames[1]))
    torch.testing.assert_close(second.dmap, 0.75 * first.dmap + 0.25 * alone)
    expected = cv2.resize(mask_from_map(second.dmap)[0, 0].numpy(), (80, 64), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(used, expected, atol=1e-6)
    _, _, fresh = harmonizer.step(frames[1], None, first)  # no smoothing: each frame's own map
    torch.testing.assert_close(fresh.dmap, alone)
    _, _, masked = h.step(frames[1], np.ones((64, 80), np.float32), first)
    assert masked.dmap is None


def test_mask_free_gate_raises_the_thresholds_without_a_mask_only(harmonizer, global_harmonizer):
    rng = np.random.default_rng(5)
    frame = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    mask = np.zeros((64, 80), np.float32)
    mask[16:48, 20:60] = 1
    strict = harmonizer.with_options(min_change=1.0, full_change=2.0, mask_free_gate=3.0)
    same = harmonizer.with_options(min_change=3.0, full_change=6.0, mask_free_gate=1.0)
    loose = harmonizer.with_options(min_change=1.0, full_change=2.0, mask_free_gate=1.0)
    assert np.array_equal(strict.step(frame, None)[0], same.step(frame, None)[0])
    assert np.array_equal(strict.step(frame, mask)[0], loose.step(frame, mask)[0])
    strict, same = (Harmonizer(global_harmonizer.generator, harmonizer.discriminator, min_change=a, full_change=b,
                               mask_free_gate=k) for a, b, k in ((1.0, 2.0, 3.0), (3.0, 6.0, 1.0)))
    plan = strict.plan_shots([strict.estimate(frame, None)])[0]  # two passes: the shot's gate too
    torch.testing.assert_close(plan, same.plan_shots([same.estimate(frame, None)])[0])


def test_save_mask_writes_the_input_mask(harmonizer, media, tmp_path, scenes):
    harmonize_video(harmonizer, media["rgba_frames"], None, tmp_path / "out", save_mask=tmp_path / "mask.mp4")
    masks, fps = read_video(tmp_path / "mask.mp4")
    assert len(masks) == VIDEO_FRAMES and fps == 25
    for t in (0, 5):
        assert np.abs(masks[t][..., 0].astype(int) - scenes[t][1]).mean() < 3


def test_save_mask_cannot_be_the_output(harmonizer, media, tmp_path):
    out = tmp_path / "out.png"
    with pytest.raises(VharmError):
        harmonize_video(harmonizer, media["image"], media["image_mask"], out, save_mask=media["image"])


# ------------------------------------------------------------------------------------- streams and audio


def _pts_seconds(path: Path) -> list[Fraction]:
    with av.open(str(path)) as c:
        tb = c.streams.video[0].time_base
        return [f.pts * tb for f in c.decode(video=0)]


def test_audio_stream_is_kept(harmonizer, media, tmp_path):
    src = write_vfr_video(tmp_path / "in.mp4", [0, 100, 200, 300, 400], audio=True)
    harmonize_video(harmonizer, src, media["static_mask"], tmp_path / "out.mp4")
    with av.open(str(src)) as a, av.open(str(tmp_path / "out.mp4")) as b:
        assert [s.type for s in b.streams] == ["video", "audio"]
        assert b.streams.audio[0].codec_context.name == "aac"
        n_in = sum(1 for p in a.demux(a.streams.audio[0]) if p.size)
        n_out = sum(1 for p in b.demux(b.streams.audio[0]) if p.size)
    assert n_in == n_out > 0
    assert len(read_video(tmp_path / "out.mp4")[0]) == 5


def test_variable_frame_rate_timestamps_are_kept(harmonizer, media, tmp_path):
    src = write_vfr_video(tmp_path / "vfr.mp4", [0, 100, 250, 300, 500, 600], audio=False)
    harmonize_video(harmonizer, src, media["static_mask"], tmp_path / "out.mp4")
    assert _pts_seconds(tmp_path / "out.mp4") == _pts_seconds(src)


@pytest.mark.parametrize("grid", [1, 0])
def test_video_path_api_and_step_are_one_computation(tmp_path, media, grid):
    """A written clip, the tensor API on the clip and `step` called frame by frame with the state carried give the
    same pixels, with temporal smoothing on: there is one inference step."""
    import dataclasses

    cfg = dataclasses.replace(tiny_model_cfg(), grid=grid)
    h = Harmonizer(perturb_generator(Generator(cfg)), Discriminator(cfg), temporal_smoothing=0.5)
    out = tmp_path / "frames"
    harmonize_video(h, media["frames"], media["mask_frames"], out)
    frames = list(read_frames_dir(media["frames"]).values())
    masks = [(m[..., 0] if m.ndim == 3 else m).astype(np.float32) / 255
             for m in read_frames_dir(media["mask_frames"]).values()]
    state, stepped = None, []
    for f, m in zip(frames, masks):
        pred, _, state = h.step(f, m, state)
        stepped.append(pred)
    written = np.stack(list(read_frames_dir(out).values()))
    assert np.array_equal(written, np.stack(stepped))
    comp = torch.stack([to_tensor(f)[0] for f in frames])[None]
    api = h(comp, torch.stack([torch.from_numpy(m)[None] for m in masks])[None])[0]
    assert np.array_equal(np.stack([to_uint8(x[None]) for x in api]), written)
    first, _, _ = h.step(frames[1], masks[1])  # no state: another result once the EMA has a past
    assert not np.array_equal(first, stepped[1])


def test_step_explains_bad_arguments(harmonizer):
    frame, mask = np.zeros((8, 8, 3), np.uint8), np.ones((8, 8), np.float32)
    with pytest.raises(ValueError, match="uint8"):
        harmonizer.step(frame.astype(np.float32), mask)
    with pytest.raises(ValueError, match="float32"):
        harmonizer.step(frame, np.ones((8, 9), np.float32))


def _colour_bars(h: int, w: int) -> np.ndarray:
    """Saturated colour bars along the longer side: where a BT.601 and a BT.709 reading of the same YUV differ by
    ~20 levels. Bars of 60+ pixels, so that the decoder's chroma interpolation touches only their edges."""
    bars = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255], [255, 0, 255],
                     [200, 40, 40], [40, 40, 200]], np.uint8)
    line = np.repeat(bars, -(-max(h, w) // len(bars)), 0)[:max(h, w)]
    return line[None].repeat(h, 0) if w >= h else line[:, None].repeat(w, 1)


def _write_tagged(path: Path, frames: list[np.ndarray], tags: tuple[int, int, int], matrix: str) -> Path:
    """An H.264 video encoded with `matrix` and tagged with `tags` ((2, 2, 2): untagged, as many tools write)."""
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=VIDEO_FPS)
        s.width, s.height, s.pix_fmt, s.options = w, h, "yuv420p", {"crf": "0", "preset": "ultrafast"}
        s.codec_context.colorspace, s.codec_context.color_primaries, s.codec_context.color_trc = tags
        s.codec_context.color_range = 1
        for f in frames:
            vf = av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format="yuv420p", dst_colorspace=matrix,
                                                                        dst_color_range="MPEG")
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


@pytest.mark.parametrize("size,tags,matrix,written", [
    ((32, 720), (1, 1, 1), "ITU709", (1, 1, 1)),
    ((32, 720), (2, 2, 2), "ITU709", (1, 1, 1)),  # untagged and over 576 lines: BT.709 to players
    ((1280, 32), (2, 2, 2), "ITU709", (1, 1, 1)),  # untagged and 1280 wide (a cropped widescreen HD rip)
    ((32, 480), (2, 2, 2), "ITU601", (6, 6, 6)),  # untagged SD: BT.601
    ((32, 720), (2, 6, 6), "ITU601", (6, 6, 6)),  # only primaries/transfer tagged: their matrix, tags kept
], ids=["bt709-tagged", "untagged-720-lines", "untagged-1280-wide", "untagged-sd", "primaries-only"])
def test_video_output_keeps_the_colour_matrix_and_says_so(harmonizer, tmp_path, size, tags, matrix, written):
    w, h = size
    frames = [_colour_bars(h, w)] * 3
    src = _write_tagged(tmp_path / "in.mp4", frames, tags, matrix)
    imwrite(tmp_path / "mask.png", np.zeros((h, w), np.uint8))
    out = tmp_path / "out.mp4"
    harmonizer.harmonize_video(src, mask=tmp_path / "mask.png", output=out)  # all-zero mask: a copy
    with av.open(str(out)) as c:
        cc = c.streams.video[0].codec_context
        assert (int(cc.colorspace), int(cc.color_primaries), int(cc.color_trc), int(cc.color_range)) == (*written, 1)
        decoded = list(c.decode(video=0))

    def error(reading_matrix):  # mean |error| per channel, decoded the way a player reads the tags
        got = [f.reformat(format="rgb24", src_colorspace=reading_matrix, src_color_range="MPEG").to_ndarray()
               for f in decoded]
        return np.abs(np.stack(got).astype(int) - np.stack(frames)).mean(axis=(0, 1, 2))

    # Two generations of 4:2:0 chroma at the bar edges cost a few levels; reading with the other matrix, as a
    # BT.601/709 mix-up would, costs far more.
    assert error(matrix).max() < 6, error(matrix)
    assert error({"ITU709": "ITU601", "ITU601": "ITU709"}[matrix]).max() > 12


def test_video_colours_come_back_without_a_bias(harmonizer, tmp_path):
    """Flat patches of random colours, lossless in: vharm reads them back unbiased, and a pass through vharm
    (all-zero mask) leaves them unbiased too. swscale's default YUV -> RGB conversion made them ~1 level darker
    at each generation."""
    rng = np.random.default_rng(0)
    rgb = np.repeat(np.repeat(rng.integers(0, 256, (4, 6, 3), dtype=np.uint8), 16, 0), 16, 1)  # 64 x 96
    src = _write_tagged(tmp_path / "in.mp4", [rgb] * 3, (1, 1, 1), "ITU709")
    imwrite(tmp_path / "mask.png", np.zeros(rgb.shape[:2], np.uint8))
    harmonizer.harmonize_video(src, mask=tmp_path / "mask.png", output=tmp_path / "out.mp4")
    interior = np.zeros(rgb.shape[:2], bool)  # away from the patch edges, where 4:2:0 chroma blurs
    interior[[y for y in range(64) if 3 <= y % 16 < 13]] = True
    interior[:, [x for x in range(96) if not 3 <= x % 16 < 13]] = False
    for path in (src, tmp_path / "out.mp4"):
        frames = [f.rgb for f in FrameSource(path)]
        bias = np.mean([(f.astype(int) - rgb)[interior].mean() for f in frames])
        assert abs(bias) < 0.4, (path.name, bias)


def test_fast_decoding_for_segmentation_keeps_the_matrix(tmp_path):
    """`FrameSource(precise=False)` (what `vharm segment` reads with) trades only rounding and chroma edges: inside
    flat patches it is about a level off the precise path (3 at most), and it keeps the stream's colour matrix (a
    BT.601/709 mix-up would be off by more than 12 on these colours)."""
    rng = np.random.default_rng(1)
    rgb = np.repeat(np.repeat(rng.integers(0, 256, (4, 6, 3), dtype=np.uint8), 16, 0), 16, 1)
    src = _write_tagged(tmp_path / "in.mp4", [rgb] * 2, (1, 1, 1), "ITU709")
    precise, fast = ([f.rgb.astype(int) for f in FrameSource(src, precise=p)] for p in (True, False))
    interior = np.zeros(rgb.shape[:2], bool)
    interior[[y for y in range(64) if 3 <= y % 16 < 13]] = True
    interior[:, [x for x in range(96) if not 3 <= x % 16 < 13]] = False
    for a, b in zip(precise, fast):
        assert np.abs(a - b)[interior].max() <= 3 and np.abs(a - b)[interior].mean() < 1.5


def test_unsupported_colour_matrix_is_refused(harmonizer, tmp_path):
    src = _write_tagged(tmp_path / "ycgco.mp4", [_colour_bars(48, 32)] * 2, (8, 1, 1), "ITU601")
    with pytest.raises(VharmError, match=r"ycgco\.mp4: colour matrix 8 .* not supported"):
        harmonizer.harmonize_video(src, mask=None, output=tmp_path / "out.mp4", no_mask=True)
    assert not (tmp_path / "out.mp4").exists()
