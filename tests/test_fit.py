"""vharm.train.fit: cached features, the per-frame loss, the two-stage fit and `vharm fit`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from vharm.config import DataConfig, FitConfig, ModelConfig
from vharm.errors import VharmError
from vharm.inference.harmonizer import Harmonizer
from vharm.models.backbones import colour_statistics, constancy_statistics
from vharm.models.colortransform import IDENTITY
from vharm.train import fit as fitting


def test_frame_features_match_the_statistics_and_sample_only_the_foreground():
    rng = np.random.default_rng(0)
    comp = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    target = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    mask = np.zeros((60, 80), np.float32)
    mask[10:40, 20:50] = 1
    stats, px = fitting.frame_features(comp, target, mask, 32, 100, rng)
    small_mask = torch.from_numpy(cv2.resize(mask, (32, 32), interpolation=cv2.INTER_AREA))[None, None]
    assert stats.shape == (2, 28)
    for row, image in zip(stats, (comp, target)):  # the composite's statistics, then the target's
        small = cv2.resize(image.astype(np.float32) / 255, (32, 32), interpolation=cv2.INTER_AREA)
        expected = colour_statistics(torch.from_numpy(small).permute(2, 0, 1)[None], small_mask)
        np.testing.assert_allclose(row, expected[0].numpy(), atol=1e-6)
    assert px.shape == (100, 7) and px.dtype == np.float16
    inside = comp[10:40, 20:50].reshape(-1, 3).astype(np.float32) / 255
    # every sampled composite colour is one of the foreground's (float16: within 1e-3)
    dist = np.abs(px[:, None, :3].astype(np.float32) - inside[None]).max(-1).min(1)
    assert dist.max() < 2e-3 and np.all(px[:, 6] == 1)
    _, empty = fitting.frame_features(comp, target, np.zeros_like(mask), 32, 10, rng)
    assert not empty.any()
    # G's other inputs: the same 28 first, then the 42 colour-constancy estimates of the same small frames
    more, _ = fitting.frame_features(comp, target, mask, 32, 100, np.random.default_rng(0), "constancy")
    assert more.shape == (2, 70)
    np.testing.assert_allclose(more[:, :28], stats, atol=1e-6)
    small = cv2.resize(comp.astype(np.float32) / 255, (32, 32), interpolation=cv2.INTER_AREA)
    expected = constancy_statistics(torch.from_numpy(small).permute(2, 0, 1)[None], small_mask)
    np.testing.assert_allclose(more[0, 28:], expected[0].numpy(), atol=1e-5)


def test_frame_fmse_is_the_composites_for_the_identity_and_zero_for_the_exact_inverse():
    rng = np.random.default_rng(1)
    target = rng.uniform(0.2, 0.7, (4, 50, 3)).astype(np.float32)
    comp = target * 1.25  # an exposure change; its inverse is a 0.8 gain
    px = torch.from_numpy(np.concatenate([comp, target, np.ones((4, 50, 1), np.float32)], -1))
    eye = torch.tensor(IDENTITY).expand(4, 12)
    ours, theirs = fitting.frame_fmse(eye, px)
    torch.testing.assert_close(ours, theirs)
    expected = ((comp - target) * 255) ** 2
    np.testing.assert_allclose(theirs.numpy(), expected.mean((1, 2)), rtol=1e-5)
    inverse = eye * 0.8
    assert fitting.frame_fmse(inverse, px)[0].max() < 1e-6
    assert float(fitting.relative_loss(eye, px, 25.0)) == pytest.approx(float((theirs / (theirs + 25)).mean()))


def _cast_testset(root: Path, source_dir: Path) -> Path:
    """A test set whose two real clips are source images with a strong warm cast on the foreground."""
    entries = []
    for k, name in enumerate(("img00", "img03")):
        img = cv2.imread(str(source_dir / "images" / f"{name}.png"))[..., ::-1]
        mask = cv2.imread(str(source_dir / "masks" / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
        m = (mask.astype(np.float32) / 255)[..., None]
        cast = np.clip(img * np.float32([1.35, 0.95, 0.7]) + 12, 0, 255)
        comp = np.round(m * cast + (1 - m) * img).astype(np.uint8)
        clip = root / "real" / f"clip{k}"
        for sub, frame in (("comp", comp), ("target", img), ("mask", mask)):
            (clip / sub).mkdir(parents=True)
            for t in range(2):
                cv2.imwrite(str(clip / sub / f"{t:05d}.png"), frame[..., ::-1] if frame.ndim == 3 else frame)
        (clip / "clip.json").write_text(json.dumps({"family": "cast"}))
        entries.append({"clip": f"real/clip{k}", "kind": "real", "frames": 2})
    (root / "manifest.json").write_text(json.dumps({"clips": entries}))
    return root


def _config(source_dir: Path, testset: Path, **changes) -> FitConfig:
    cfg = FitConfig(model=ModelConfig(widths=(16,), resolution=32, confidence=True),
                    data=DataConfig(sources=(str(source_dir),), families=("temperature", "exposure"),
                                    val_testset=str(testset), scene_prob=0.5, mild_prob=0.2),
                    pairs=48, pixels=64, epochs=12, confidence_epochs=3, batch_size=16, lr=1e-2, workers=1,
                    identity_share=0.2,
                    discriminator="")
    return dataclasses.replace(cfg, **changes)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, source_dir):
    root = tmp_path_factory.mktemp("fit")
    testset = _cast_testset(root / "testset", source_dir)
    cfg = _config(source_dir, testset)
    return fitting.fit(cfg, root / "runs", root / "cache", progress=False), cfg, root


def test_fit_learns_the_cast_and_writes_a_loadable_run(fitted):
    run, cfg, _ = fitted
    rows = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["change"] * cfg.epochs + ["confidence"] * cfg.confidence_epochs
    assert rows[-1]["loss"] < rows[0]["loss"]
    best = min(rows, key=lambda r: r["score"])
    assert best["real_ratio"] < 0.8, best  # warm casts of both kinds are in the training families
    saved = json.loads((run / "best" / "config.json").read_text())
    step = best["epoch"] + (cfg.epochs if best["stage"] == "confidence" else 0)  # epochs of both stages in a row
    assert saved["model"]["confidence"] is True and saved["step"] == step
    assert not (run / "best" / "discriminator.safetensors").exists()  # --discriminator "" asks for none
    assert json.loads((run / "config.json").read_text())["pairs"] == cfg.pairs
    h = Harmonizer.from_pretrained(run)
    img = cv2.imread(str(Path(cfg.data.sources[0]) / "images" / "img00.png"))[..., ::-1].copy()
    mask = cv2.imread(str(Path(cfg.data.sources[0]) / "masks" / "img00.png"), cv2.IMREAD_GRAYSCALE)
    pred, _, _ = h.step(img, mask.astype(np.float32) / 255)
    assert np.array_equal(pred[mask == 0], img[mask == 0])


def test_a_second_fit_reuses_the_cached_pairs(fitted, source_dir):
    run, cfg, root = fitted
    shards = sorted((root / "cache").glob("*/pairs-*.npz"))
    assert len(shards) == 1 and shards[0].name == "pairs-0000000-0000048.npz"
    stamp = shards[0].stat().st_mtime_ns
    again = fitting.fit(dataclasses.replace(cfg, epochs=1, confidence_epochs=1), root / "runs", root / "cache",
                        progress=False)
    assert again != run and shards[0].stat().st_mtime_ns == stamp
    assert "synthesising" not in (again / "log.txt").read_text()


def test_fit_refuses_configs_it_cannot_run(tmp_path, source_dir):
    testset = _cast_testset(tmp_path / "testset", source_dir)
    with pytest.raises(VharmError, match="--val-testset is required"):
        fitting.fit(_config(source_dir, testset, data=DataConfig(sources=(str(source_dir),))), tmp_path, tmp_path)
    with pytest.raises(VharmError, match="backbone stats with grid 1"):
        fitting.fit(_config(source_dir, testset, model=ModelConfig(backbone="unet", widths=(8, 16), grid=0,
                                                                   resolution=32)), tmp_path, tmp_path)
    with pytest.raises(VharmError, match="members 2 .*vharm ensemble"):
        fitting.fit(_config(source_dir, testset, model=ModelConfig(members=2)), tmp_path, tmp_path)
    assert not (tmp_path / "00000-fit").exists()


def test_cli_fit_without_a_testset_is_one_line(run_cli, tmp_path, source_dir):
    code, out, err = run_cli("fit", source_dir, "--outdir", tmp_path / "runs", "--pairs", "4")
    assert code == 2 and err.count("\n") == 1 and "--val-testset is required" in err
    assert not (tmp_path / "runs").exists()


def test_identity_frames_alone_teach_no_change(tmp_path, source_dir):
    """With every frame shown as its own target the best change is none: the fit stays at the composite."""
    testset = _cast_testset(tmp_path / "testset", source_dir)
    cfg = _config(source_dir, testset, identity_share=1.0, epochs=6, confidence_epochs=1)
    run = fitting.fit(cfg, tmp_path / "runs", tmp_path / "cache", progress=False)
    rows = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert all(abs(r["real_ratio"] - 1) < 0.05 for r in rows), [r["real_ratio"] for r in rows]
