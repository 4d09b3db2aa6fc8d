"""`vharm make-testset` and `vharm evaluate` (vharm.eval: metrics, clips, methods, scoring, report, testset):
metric definitions on hand-made cases, one-clip scoring and its size and mask rules, a tiny test set end to end
(report files, resume from the cache), model methods through `Harmonizer.step`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import blob_mask, imread, imwrite, scene, tiny_model_cfg

from vharm.data.flow import estimate_flow
from vharm.errors import VharmError
from vharm.eval import clips, methods, metrics, scoring, testset
from vharm.inference.harmonizer import Harmonizer
from vharm.models import Discriminator, Generator
from vharm.models.networks import WEIGHTS_DIR
from vharm.segment import VERSION as SEGMENTER_VERSION

H, W, T = 32, 48, 4


def write_clip(folder: Path, comps, masks, targets=None, info=None) -> Path:
    """A test-set clip folder: comp/, mask/, target/ PNG frames and clip.json."""
    for sub, frames in (("comp", comps), ("mask", masks), ("target", targets)):
        if frames is None:
            continue
        (folder / sub).mkdir(parents=True)
        for t, f in enumerate(frames):
            imwrite(folder / sub / f"{t:05d}.png", f)
    (folder / "clip.json").write_text(json.dumps(info or {"family": "exposure"}))
    return folder


def moving_clip(frames: int = T, gain: float = 1.3):
    """Ground truth of a moving blob, and a composite whose foreground is brightened by `gain`."""
    targets, masks, comps = [], [], []
    for t in range(frames):
        rgb, mask = scene(H, W, t)
        m = mask[..., None] / 255.0
        comp = np.clip(np.round(m * rgb * gain + (1 - m) * rgb), 0, 255).astype(np.uint8)
        targets.append(rgb)
        masks.append(mask)
        comps.append(comp)
    return comps, masks, targets


@pytest.fixture()
def tiny_testset(tmp_path) -> Path:
    """Two real clips, one synthetic pair with exact (zero) flow, one composite without ground truth."""
    root = tmp_path / "testset"
    clips = []
    for i, gain in enumerate((1.3, 0.7)):
        comps, masks, targets = moving_clip(gain=gain)
        family = ("exposure", "lut")[i]
        write_clip(root / f"real/clip{i}", comps, masks, targets, {"family": family})
        clips.append({"clip": f"real/clip{i}", "kind": "real", "family": family, "frames": T})
    comps, masks, targets = moving_clip(frames=1)
    write_clip(root / "synthetic/000", comps * 2, masks * 2, targets * 2, {"family": "exposure"})
    np.save(root / "synthetic/000/flow.npy", np.zeros((2, H, W), np.float32))
    clips.append({"clip": "synthetic/000", "kind": "synthetic", "family": "exposure", "frames": 2})
    comps, masks, _ = moving_clip()
    write_clip(root / "composites/paste", comps, masks, None, {"family": "none"})
    clips.append({"clip": "composites/paste", "kind": "composites", "family": "none", "frames": T})
    (root / "manifest.json").write_text(json.dumps({"seed": 0, "clips": clips}))
    return root


@pytest.fixture()
def identity_weights(tmp_path) -> Path:
    """Untrained tiny weights: the affine head starts at the identity, so G returns the composite."""
    torch.manual_seed(0)
    cfg = tiny_model_cfg()
    Generator(cfg).save_pretrained(tmp_path / "identity")
    Discriminator(cfg).save_pretrained(tmp_path / "identity")
    return tmp_path / "identity"


# ---------------------------------------------------------------------------------------------- metrics


def test_mse_fmse_psnr_of_a_known_difference():
    target = torch.full((1, 3, 10, 10), 0.5)
    mask = torch.zeros(1, 1, 10, 10)
    mask[..., :5, :] = 1  # half the frame
    pred = target + mask * (10 / 255)  # +10 levels on every foreground channel
    assert float(metrics.fmse(pred, target, mask)) == pytest.approx(100, rel=1e-4)
    assert float(metrics.mse(pred, target)) == pytest.approx(50, rel=1e-4)
    assert float(metrics.psnr(torch.tensor([100.0]))) == pytest.approx(10 * np.log10(255 ** 2 / 100))
    assert float(metrics.psnr(torch.tensor([0.0]))) == 100.0  # capped for a perfect frame


def test_co2net_tl_of_a_flickering_foreground_and_its_floor():
    target = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 1, 12, 12)
    mask[..., 3:9, 3:9] = 1
    flow = torch.zeros(1, 2, 12, 12)  # a static scene
    pred0, pred1 = target - mask * (10 / 255), target + mask * (10 / 255)
    tl = metrics.co2net_tl(pred1, pred0, target, target, mask, mask, flow)
    assert float(tl) == pytest.approx(3 * 20 ** 2, rel=1e-4)  # sum over channels of the 20-level jump
    floor = metrics.co2net_tl(target, target, target, target, mask, mask, flow)
    assert float(floor) == pytest.approx(0, abs=1e-6)


def test_scorer_on_identical_static_clip_is_perfect():
    rgb, mask = scene(H, W, 0)
    m = mask.astype(np.float32) / 255
    scorer = scoring.ClipScorer(has_target=True)
    for t in range(3):
        scorer.add(rgb, rgb, m, estimate_flow(rgb, rgb) if t else None, np.zeros((2, H, W), np.float32))
    r = scorer.result()
    assert r["mse"] == 0 and r["fmse"] == 0 and r["psnr"] == 100 and r["fpsnr"] == 100
    assert r["tl"] == pytest.approx(0, abs=1e-4) and r["tl_floor"] == pytest.approx(0, abs=1e-4)
    assert r["lt1"] == pytest.approx(0, abs=1e-8) and r["lt2"] == pytest.approx(0, abs=1e-8)


def test_reinhard_moves_foreground_statistics_to_the_background():
    comps, masks, _ = moving_clip(frames=2)
    fmasks = [m.astype(np.float32) / 255 for m in masks]
    for pooled in (False, True):
        out = list(methods.Reinhard(pooled).predict(comps, fmasks))
        lab, m = methods._lab(out[0]), fmasks[0] > 0.5
        bg = methods._lab(comps[0])[~m]
        assert np.abs(lab[m].mean(0) - bg.mean(0)).max() < 2  # Lab units (L in 0-100)
        assert (out[0][~m] == comps[0][~m]).all()  # the background is untouched


# ---------------------------------------------------------------------------------------------- one clip


def test_evaluate_one_clip_json(run_cli, tmp_path):
    comps, masks, targets = moving_clip()
    write_clip(tmp_path / "c", comps, masks, targets)
    out = tmp_path / "scores.json"
    code, stdout, err = run_cli("evaluate", "--pred", tmp_path / "c/comp", "--target", tmp_path / "c/target",
                                "--mask", tmp_path / "c/mask", "--json", out)
    assert code == 0, err
    scores = json.loads(out.read_text())
    assert json.loads(stdout) == scores
    assert {"mse", "fmse", "psnr", "fpsnr", "tl", "tl_floor", "lt2"} <= set(scores) and scores["frames"] == T
    assert scores["fmse"] > scores["mse"] > 0 and scores["tl"] > 0 and scores["tl_floor"] > 0
    # The ground truth scored against itself: perfect, and its TL is the floor.
    code, stdout, err = run_cli("evaluate", "--pred", tmp_path / "c/target", "--target", tmp_path / "c/target",
                                "--mask", tmp_path / "c/mask")
    gt = json.loads(stdout)
    assert gt["fmse"] == 0 and gt["tl"] == pytest.approx(gt["tl_floor"]) == pytest.approx(scores["tl_floor"])


def test_evaluate_one_clip_bad_input(run_cli, tmp_path):
    comps, masks, targets = moving_clip()
    write_clip(tmp_path / "c", comps[:3], masks, targets)
    code, _, err = run_cli("evaluate", "--pred", tmp_path / "c/comp", "--target", tmp_path / "c/target",
                           "--mask", tmp_path / "c/mask")
    assert code == 2 and "c/comp" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("evaluate", "--pred", tmp_path / "c/comp", "--testset", tmp_path)
    assert code == 2 and "--testset" in err


def one_clip_argv(root: Path, pred: str = "comp", mask: str = "mask") -> list:
    return ["evaluate", "--pred", root / pred, "--target", root / "target", "--mask", root / mask]


@pytest.mark.parametrize("other", ["comp", "mask"])
def test_evaluate_one_clip_refuses_another_size_unless_resize(run_cli, tmp_path, other):
    """A metric of a resized picture is not the metric of the picture given: exit 2 naming the file and both
    sizes; `--resize` scores it resized, with a warning."""
    comps, masks, targets = moving_clip()
    write_clip(tmp_path / "c", comps, masks, targets)
    small = tmp_path / "small"
    small.mkdir()
    for t, frame in enumerate({"comp": comps, "mask": masks}[other]):
        imwrite(small / f"{t:05d}.png", cv2.resize(frame, (W // 2, H // 2), interpolation=cv2.INTER_AREA))
    argv = one_clip_argv(tmp_path / "c", **{"pred" if other == "comp" else "mask": "../small"})
    code, stdout, err = run_cli(*argv)
    (line,) = err.strip().splitlines()
    assert code == 2 and stdout == "" and line.startswith("vharm: error: ")
    assert str(tmp_path / "c/../small") in line and f"{W // 2}x{H // 2}" in line and f"{W}x{H}" in line
    assert "--resize" in line
    code, stdout, err = run_cli(*argv, "--resize")
    assert code == 0, err
    (line,) = err.strip().splitlines()
    what = "frames" if other == "comp" else "masks"
    assert line.startswith("vharm: warning: ") and f"{W // 2}x{H // 2} {what} resized to the ground truth's {W}x{H}" \
        in line
    scores = json.loads(stdout)
    assert scores["frames"] == T and scores["fmse"] > 0
    code, _, err = run_cli("evaluate", "--testset", tmp_path, "--method", "composite", "--resize")
    assert code == 2 and "--resize is for one clip" in err


def test_evaluate_one_clip_reads_masks_by_the_one_mask_rule(run_cli, tmp_path):
    """An RGBA mask image whose alpha is constant (opaque) is a mask by its pixels, as everywhere in vharm."""
    comps, masks, targets = moving_clip()
    write_clip(tmp_path / "c", comps, masks, targets)
    for t, m in enumerate(masks):
        imwrite(tmp_path / "c/mask" / f"{t:05d}.png", np.dstack([m, m, m, np.full_like(m, 255)]))
    rgba = json.loads(run_cli(*one_clip_argv(tmp_path / "c"))[1])
    for t, m in enumerate(masks):
        imwrite(tmp_path / "c/mask" / f"{t:05d}.png", m)
    gray = json.loads(run_cli(*one_clip_argv(tmp_path / "c"))[1])
    assert rgba["fmse"] == gray["fmse"] and rgba["fmse"] > rgba["mse"]  # the foreground's error, not the frame's


# ---------------------------------------------------------------------------------------------- test sets


def test_testset_report_and_resume(run_cli, tiny_testset, tmp_path):
    report = tmp_path / "report"
    argv = ("evaluate", "--testset", tiny_testset, "--method", "composite", "reinhard-frame", "-o", report, "--quiet")
    code, stdout, err = run_cli(*argv)
    assert code == 0, err
    assert "== real: 2 clip(s)" in stdout and "(8 scored, 0 from the cache)" in stdout
    results = json.loads((report / "results.json").read_text())
    real = results["summary"]["real"]["methods"]
    assert set(real) == {"composite", "reinhard-frame"}
    assert real["composite"]["fmse"] > 0 and real["composite"]["tl_floor"] == real["reinhard-frame"]["tl_floor"]
    assert results["summary"]["synthetic"]["methods"]["composite"]["lt1"] == pytest.approx(0, abs=1e-9)
    assert set(results["summary"]["composites"]["methods"]["composite"]) == {"tl", "tl_floor", "lt2"}
    rows = list(csv.DictReader((report / "results.csv").open()))
    assert {(r["clip"], r["method"]) for r in rows if r["scope"] == "clip"} == \
        {(c, m) for c in ("real/clip0", "real/clip1", "synthetic/000", "composites/paste")
         for m in ("composite", "reinhard-frame")}
    html = (report / "report.html").read_text()
    assert html.count("<svg") >= 5 and "foreground brightness per frame" in html
    for rec in results["records"]:
        assert (report / rec["images"]["pred"]).is_file() and (report / rec["images"]["heat"]).is_file()
    cached = report / "cache/composite/real/clip0.json"
    mtime = cached.stat().st_mtime_ns
    # Resume: a second run scores nothing again, and gives the same numbers.
    code, stdout, err = run_cli(*argv)
    assert code == 0, err
    assert "(0 scored, 8 from the cache)" in stdout
    assert cached.stat().st_mtime_ns == mtime
    again = json.loads((report / "results.json").read_text())
    assert again["summary"] == results["summary"]


def test_model_methods_use_step_with_a_fresh_state_per_clip(tiny_testset, identity_weights, tmp_path, monkeypatch):
    calls = []
    original = Harmonizer.step

    def spy(self, frame, mask, state=None, **kwargs):
        out = original(self, frame, mask, state, **kwargs)
        calls.append({"frame": frame.shape, "mask": mask, "state": state, "next": out[2]})
        return out

    monkeypatch.setattr(Harmonizer, "step", spy)
    w = str(identity_weights)
    specs = [w, f"{w}:nomask", f"{w}:smooth=0.5", f"{w}:ones"]
    results = scoring.evaluate_testset(tiny_testset, specs, tmp_path / "r", sets=["real"])
    assert len(calls) == len(specs) * 2 * T and all(c["frame"] == (H, W, 3) for c in calls)
    # Clip by clip, method by method: T frames each, the first from no state, each later one with the state its
    # predecessor returned.
    runs = {}
    for i in range(0, len(calls), T):
        frames = calls[i:i + T]
        runs.setdefault(specs[i // T % len(specs)], []).append(frames)
        assert frames[0]["state"] is None
        assert all(frames[j]["state"] is frames[j - 1]["next"] for j in range(1, T))
    masks = {spec: [f["mask"] for frames in clip_runs for f in frames] for spec, clip_runs in runs.items()}
    assert all(m is None for m in masks[f"{w}:nomask"])
    assert all(m.dtype == np.float32 and m.shape == (H, W) and (m == 1).all() for m in masks[f"{w}:ones"])
    assert all(m is not None and 0 < m.mean() < 1 for m in masks[w])  # the clip's true masks
    s = results["summary"]["real"]["methods"]
    # An untrained affine G is the identity: its output is the composite (8-bit rounding aside).
    assert s[w]["fmse"] == pytest.approx(s["composite"]["fmse"], abs=0.5)
    assert s[f"{w}:smooth=0.5"]["fmse"] == pytest.approx(s["composite"]["fmse"], abs=0.5)


def test_automask_methods_harmonize_with_the_segmenters_mask(tiny_testset, identity_weights, tmp_path, monkeypatch):
    """`:automask` runs the segmenter (`Segmenter.locate`, then `upsample`: its `step`) on the composite frames, one
    state per clip, and harmonizes with its mask (the metrics keep the true mask); `:automask-all` is the segmenter
    with every person."""
    from vharm.segment import Segmenter

    seen, made, original = [], [], Harmonizer.step

    def locate(self, rgb, state=None):
        made.append((self.subject, state))
        return len(made)

    def upsample(self, rgb, state):
        return np.full(rgb.shape[:2], 0.25, np.float32)

    def spy(self, frame, mask, state=None, **kwargs):
        seen.append(mask)
        return original(self, frame, mask, state, **kwargs)

    monkeypatch.setattr(Segmenter, "locate", locate)
    monkeypatch.setattr(Segmenter, "upsample", upsample)
    monkeypatch.setattr(Harmonizer, "step", spy)
    w = str(identity_weights)
    results = scoring.evaluate_testset(tiny_testset, [f"{w}:automask", f"{w}:automask-all"], tmp_path / "r",
                                       sets=["real"])
    assert len(made) == len(seen) == 2 * 2 * T and all((m == 0.25).all() for m in seen)
    assert [s for s, _ in made] == ([True] * T + [False] * T) * 2  # clip by clip, each method's segmenter
    assert [st for _, st in made][:T] == [None, *range(1, T)]  # a fresh state per clip, then the last one's
    assert results["summary"]["real"]["methods"][f"{w}:automask"]["fmse"] > 0
    fp = methods.parse_method(f"{w}:automask").fingerprint()
    assert fp["mask"] == "automask" and fp["segmenter"] == [SEGMENTER_VERSION, "selfie"]


def test_automask_seg_option_picks_the_segmenter_model(identity_weights):
    """`:seg=pose` makes the automatic mask with `Segmenter(model="pose")`, as `--seg-model pose`; its scores are
    cached apart from the selfie model's; it means nothing without an automatic mask."""
    w = str(identity_weights)
    pose = methods.parse_method(f"{w}:automask-all:seg=pose")
    assert pose.mask_mode == "automask-all" and pose.seg_model == "pose"
    seg = pose._mask_spec()
    assert seg.kind == "pose" and seg.pose is not None and seg.subject is False
    assert pose.fingerprint()["segmenter"] != methods.parse_method(f"{w}:automask-all").fingerprint()["segmenter"]
    for bad in (f"{w}:seg=pose", f"{w}:automask:seg=bodypix"):
        with pytest.raises(VharmError, match="needs :automask or :automask-all and one of selfie, pose"):
            methods.parse_method(bad)


def test_score_real_of_the_identity_is_the_composite(tiny_testset, identity_weights):
    real = clips.load_real_clips(tiny_testset)
    assert [c.id for c in real] == ["real/clip0", "real/clip1"]
    scores = scoring.score_real(Harmonizer.from_pretrained(identity_weights), real)
    assert scores["comp_fmse"] > 100  # the gains 1.3 and 0.7 are far off
    assert scores["fmse"] == pytest.approx(scores["comp_fmse"]) and scores["ratio"] == pytest.approx(1)
    assert scores["harmed"] == 0
    # Training passes the composite's scores once; the result is the same.
    assert scoring.score_real(Harmonizer.from_pretrained(identity_weights), real,
                              scoring.composite_fmse(real)) == scores


def test_load_real_clips_needs_real_clips(tiny_testset):
    manifest = json.loads((tiny_testset / "manifest.json").read_text())
    manifest["clips"] = [c for c in manifest["clips"] if c["kind"] != "real"]
    (tiny_testset / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(VharmError, match="manifest.json: no real clips"):
        clips.load_real_clips(tiny_testset)


def test_method_options_default_to_the_weights_settings(identity_weights):
    cfg_file = identity_weights / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["inference"] = {"temporal_smoothing": 0.5, "min_change": 3, "full_change": 6}
    cfg_file.write_text(json.dumps(cfg))
    h = methods.parse_method(str(identity_weights)).harmonizer
    assert (h.temporal_smoothing, h.min_change, h.full_change) == (0.5, 3, 6)
    h = methods.parse_method(f"{identity_weights}:gate=0,0:smooth=0").harmonizer
    assert (h.temporal_smoothing, h.min_change, h.full_change) == (0, 0, 0)
    h = methods.parse_method(f"{identity_weights}:mfgate=2.5:brighten=3").harmonizer
    assert (h.mask_free_gate, h.brighten, h.min_change) == (2.5, 3, 3)
    h = methods.parse_method(f"{identity_weights}:gsteps=3").harmonizer
    assert h.g_steps == 3 and isinstance(h.g_steps, int)


def test_method_errors(identity_weights, tmp_path):
    with pytest.raises(VharmError, match="smooth"):
        methods.parse_method(f"{identity_weights}:smooth=2")
    with pytest.raises(VharmError, match="gate=MIN,FULL"):
        methods.parse_method(f"{identity_weights}:gate=3")
    with pytest.raises(VharmError, match="mfgate=K with a number"):
        methods.parse_method(f"{identity_weights}:mfgate=strict")
    with pytest.raises(VharmError, match="mask_free_gate"):
        methods.parse_method(f"{identity_weights}:mfgate=0.5")  # below the range: the field's own check
    with pytest.raises(VharmError, match="gsteps=N with a whole number"):
        methods.parse_method(f"{identity_weights}:gsteps=2.5")
    with pytest.raises(VharmError, match="min_change <= full_change"):
        methods.parse_method(f"{identity_weights}:gate=6,3")
    with pytest.raises(VharmError, match="not a method"):
        methods.parse_method("reinhard-frmae")  # a typo, not a directory
    no_d = tmp_path / "no-d"
    cfg = tiny_model_cfg()
    Generator(cfg).save_pretrained(no_d)
    with pytest.raises(VharmError, match="nomask needs D"):
        methods.parse_method(f"{no_d}:nomask")
    if not (WEIGHTS_DIR / "default" / "config.json").is_file():
        with pytest.raises(VharmError, match="no shipped weights"):
            methods.parse_method("default")


# ---------------------------------------------------------------------------------------------- make-testset


def fake_data_root(root: Path, frames: int = 6) -> Path:
    """ROOT/davis2016/<test sequence>/{frames,masks} and one background clip under ROOT/videos."""
    for i, name in enumerate(testset.TEST_SEQUENCES):
        seq = root / "davis2016" / name
        (seq / "frames").mkdir(parents=True)
        (seq / "masks").mkdir()
        for t in range(frames):
            rgb, mask = scene(48, 64, t, rng_seed=i)
            imwrite(seq / "frames" / f"{t:05d}.png", rgb)
            imwrite(seq / "masks" / f"{t:05d}.png", mask)
    bg = root / "videos" / "bg"
    bg.mkdir(parents=True)
    for t in range(frames):
        imwrite(bg / f"{t:05d}.png", np.roll(scene(40, 56, 0, rng_seed=9)[0], t, axis=1))
    return root


def test_make_testset_is_deterministic_and_evaluable(run_cli, tmp_path, monkeypatch):
    monkeypatch.setattr(testset, "BACKGROUNDS", {"bg": (0, 6)})
    data = fake_data_root(tmp_path / "data")
    argv = ["make-testset", "--data", data, "--frames", "4", "--clips-per-sequence", "2", "--synthetic", "2",
            "--synthetic-size", "32", "--composites", "1", "--quiet"]
    code, stdout, err = run_cli(*argv, "-o", tmp_path / "a")
    assert code == 0, err
    assert "12 real, 2 synthetic, 1 composites, 12 mild" in stdout
    code, _, err = run_cli(*argv, "-o", tmp_path / "b")
    assert code == 0, err
    manifest = json.loads((tmp_path / "a/manifest.json").read_text())
    assert manifest == json.loads((tmp_path / "b/manifest.json").read_text())
    families = {c["family"] for c in manifest["clips"] if c["kind"] == "real"}
    assert families == set(testset.REAL_FAMILIES)  # 12 clips cycle through all five
    for clip in manifest["clips"]:
        folder = tmp_path / "a" / clip["clip"]
        assert (folder / "target").is_dir() == (clip["kind"] != "composites")
        for f in sorted((folder / "comp").iterdir()):
            assert f.read_bytes() == (tmp_path / "b" / clip["clip"] / "comp" / f.name).read_bytes()
    real = next(c for c in manifest["clips"] if c["kind"] == "real")
    info = json.loads((tmp_path / "a" / real["clip"] / "clip.json").read_text())
    assert info["family"] == real["family"] and info["comp_fmse_first_frame"] > 0
    assert np.load(tmp_path / "a/synthetic/000/flow.npy").shape == (2, 32, 32)
    code, stdout, err = run_cli("evaluate", "--testset", tmp_path / "a", "--method", "reinhard-clip",
                                "--max-clips", "1", "--quiet")
    assert code == 0, err
    assert (tmp_path / "a/report/report.html").is_file() and "composite" in stdout


def test_mild_clips_are_nearly_right_and_leave_the_other_sets_alone(run_cli, tmp_path, monkeypatch):
    """The mild set's composites have a foreground fMSE in MILD_COMP_FMSE (a weaker recolouring stays below it),
    its clips are the real set's recipe scaled down, and adding it (or changing its size) leaves the other sets'
    clips byte for byte as they were."""
    monkeypatch.setattr(testset, "BACKGROUNDS", {"bg": (0, 6)})
    data = fake_data_root(tmp_path / "data")
    argv = ["make-testset", "--data", data, "--frames", "3", "--clips-per-sequence", "1", "--synthetic", "1",
            "--synthetic-size", "32", "--composites", "1", "--quiet"]
    assert run_cli(*argv, "--mild-per-sequence", "3", "-o", tmp_path / "with")[0] == 0
    assert run_cli(*argv, "--mild-per-sequence", "0", "-o", tmp_path / "without")[0] == 0
    with_mild = json.loads((tmp_path / "with/manifest.json").read_text())["clips"]
    without = json.loads((tmp_path / "without/manifest.json").read_text())["clips"]
    assert [c for c in with_mild if c["kind"] != "mild"] == without
    for clip in without:
        for f in sorted((tmp_path / "without" / clip["clip"] / "comp").iterdir()):
            assert f.read_bytes() == (tmp_path / "with" / clip["clip"] / "comp" / f.name).read_bytes()
    mild = [c for c in with_mild if c["kind"] == "mild"]
    assert len(mild) == 3 * len(testset.TEST_SEQUENCES)
    lo, hi = testset.MILD_COMP_FMSE
    for clip in mild:
        folder = tmp_path / "with" / clip["clip"]
        info = json.loads((folder / "clip.json").read_text())
        comp, target = (imread(folder / sub / "00000.png").astype(np.float32) for sub in ("comp", "target"))
        mask = imread(folder / "mask" / "00000.png")
        mask = (mask if mask.ndim == 2 else mask[..., 0]).astype(np.float32)[..., None] / 255
        fmse = float((mask * (comp - target) ** 2).sum() / (3 * mask.sum()))
        assert fmse == pytest.approx(info["comp_fmse_first_frame"], abs=0.01)  # clip.json rounds to 0.01
        assert 0 < info["scale"] <= 1 and (fmse <= hi * 1.05) and (fmse >= lo * 0.95 or info["scale"] == 1)


def test_make_testset_from_other_sequences(run_cli, tmp_path, monkeypatch):
    """`--sequences` builds a validation set from sequences outside the dev split, and only from them."""
    monkeypatch.setattr(testset, "BACKGROUNDS", {"bg": (0, 6)})
    data = fake_data_root(tmp_path / "data")
    (data / "davis2016" / "dog").rename(data / "davis2016" / "camel")
    (data / "davis2016" / "cows").rename(data / "davis2016" / "goat")
    code, stdout, err = run_cli("make-testset", "--data", data, "--sequences", "camel", "goat", "--frames", "3",
                                "--synthetic", "1", "--synthetic-size", "32", "--composites", "1", "--quiet",
                                "-o", tmp_path / "val")
    assert code == 0, err
    assert "6 real, 1 synthetic, 1 composites, 4 mild" in stdout
    manifest = json.loads((tmp_path / "val/manifest.json").read_text())
    assert manifest["test_sequences"] == ["davis2016/camel", "davis2016/goat"]
    sources = {json.loads((tmp_path / "val" / c["clip"] / "clip.json").read_text()).get("source")
               for c in manifest["clips"] if c["kind"] == "real"}
    assert sources == {"davis2016/camel", "davis2016/goat"}
    code, _, err = run_cli("make-testset", "--data", data, "--sequences", "camel", "-o", tmp_path / "one")
    assert code == 2 and "at least 2" in err


def test_make_testset_takes_sequences_by_path(run_cli, tmp_path, monkeypatch):
    """A sequence outside davis2016/ is named by its path under --data; clip ids use its last part."""
    monkeypatch.setattr(testset, "BACKGROUNDS", {"bg": (0, 6)})
    data = fake_data_root(tmp_path / "data")
    (data / "more").mkdir()
    (data / "davis2016" / "dog").rename(data / "more" / "bear")
    code, stdout, err = run_cli("make-testset", "--data", data, "--sequences", "more/bear", "cows", "--frames", "3",
                                "--synthetic", "1", "--synthetic-size", "32", "--composites", "1", "--quiet",
                                "-o", tmp_path / "val")
    assert code == 0, err
    manifest = json.loads((tmp_path / "val/manifest.json").read_text())
    assert manifest["test_sequences"] == ["more/bear", "davis2016/cows"]
    real = [c["clip"] for c in manifest["clips"] if c["kind"] == "real"]
    assert any(c.startswith("real/bear-") for c in real) and all(c.count("/") == 1 for c in real)


def test_make_testset_needs_davis(run_cli, tmp_path):
    code, _, err = run_cli("make-testset", "--data", tmp_path, "-o", tmp_path / "out")
    assert code == 2 and "davis2016" in err and not (tmp_path / "out").exists()


def test_make_testset_output_in_a_missing_directory(run_cli, tmp_path):
    code, _, err = run_cli("make-testset", "--data", tmp_path, "-o", tmp_path / "no-dir" / "out")
    assert code == 2 and str(tmp_path / "no-dir") in err and "does not exist" in err
    assert "Traceback" not in err and not (tmp_path / "no-dir").exists()


def test_static_mask_image_for_one_clip(run_cli, tmp_path):
    comps, _, targets = moving_clip()
    write_clip(tmp_path / "c", comps, None, targets)
    imwrite(tmp_path / "mask.png", blob_mask(H, W, W / 2, H / 2, 14, 10))
    code, stdout, err = run_cli("evaluate", "--pred", tmp_path / "c/comp", "--target", tmp_path / "c/target",
                                "--mask", tmp_path / "mask.png")
    assert code == 0, err
    assert json.loads(stdout)["frames"] == T
