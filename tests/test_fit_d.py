"""vharm.train.fit_d and the efficientnet D: cached images and maps, the decoder's fit, `vharm fit-d`."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from test_fit import _cast_testset

from vharm.config import DataConfig, FitDConfig, ModelConfig, preset
from vharm.errors import VharmError
from vharm.inference.harmonizer import Harmonizer
from vharm.models import Discriminator, Generator
from vharm.models.efficientnet import EfficientNetLite0
from vharm.train import fit_d as fitting
from vharm.train.loop import train

MODEL = ModelConfig(widths=(16,), resolution=32, disc_backbone="efficientnet")


@pytest.fixture(scope="module")
def generator_dir(tmp_path_factory):
    """A statistics G at 32^2 (the identity) with the shipped gate, the weights `fit-d` fits a D for."""
    path = tmp_path_factory.mktemp("g") / "stats"
    Generator(dataclasses.replace(MODEL, disc_backbone="unet")).save_pretrained(
        path, inference={"temporal_smoothing": 0.0, "min_change": 5.0, "full_change": 7.5, "strength": 1.0})
    return path


def _config(source_dir, testset, generator_dir, **changes) -> FitDConfig:
    cfg = FitDConfig(data=DataConfig(sources=(str(source_dir),), families=("temperature", "exposure"),
                                     val_testset=str(testset), random_mask_prob=0.5),
                     generator=str(generator_dir), pairs=24, epochs=3, batch_size=8, lr=3e-3, workers=1)
    return dataclasses.replace(cfg, **changes)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, source_dir, generator_dir):
    root = tmp_path_factory.mktemp("fit-d")
    cfg = _config(source_dir, _cast_testset(root / "testset", source_dir), generator_dir)
    torch.manual_seed(0)
    state = EfficientNetLite0().state_dict()  # a random encoder: the tests do not have ImageNet's
    return fitting.fit_d(cfg, root / "runs", root / "cache", progress=False, encoder_state=state), cfg, root, state


def test_fit_d_writes_a_run_whose_best_loads_and_runs_mask_free(fitted):
    run, cfg, _, state = fitted
    rows = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(cfg.epochs))
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert {"real_ratio", "real_harmed", "score"} <= rows[0].keys()
    saved = json.loads((run / "best" / "config.json").read_text())
    assert saved["model"]["disc_backbone"] == "efficientnet" and saved["inference"]["min_change"] == 5.0
    with safe_open(str(run / "best" / "discriminator.safetensors"), "pt") as f:  # stored in half precision
        assert all(f.get_tensor(k).dtype in (torch.float16, torch.int64) for k in f.keys())
    h = Harmonizer.from_pretrained(run)
    assert h.discriminator.cfg.disc_backbone == "efficientnet" and h.min_change == 5.0
    # the encoder is the one it started from (frozen), up to float16 storage
    enc = h.discriminator.net.encoder.state_dict()
    key = next(k for k in state if state[k].is_floating_point() and state[k].ndim == 4)
    torch.testing.assert_close(enc[key], state[key], atol=1e-3, rtol=1e-3)
    img = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    pred, used, _ = h.step(img, None)  # mask-free: D's map
    assert pred.shape == img.shape and used.shape == img.shape[:2] and 0 <= used.min() <= used.max() <= 1


def test_a_second_fit_d_reuses_the_cached_images_and_maps(fitted):
    run, cfg, root, state = fitted
    cached = sorted(p.name for p in (root / "cache").glob("*/*"))
    assert cached == ["images-0000000-0000024.npz", "maps-comp-24.safetensors", "maps-target-24.safetensors"]
    again = fitting.fit_d(dataclasses.replace(cfg, epochs=1), root / "runs", root / "cache", progress=False,
                          encoder_state=state)
    assert again != run and "synthesising" not in (again / "log.txt").read_text()


def test_the_decoder_learns_the_region_from_its_colours(fitted):
    """The random encoder knows nothing, but the decoder also sees Lab colours: on the cached training frames a
    few dozen epochs put the region of the composites above their background. (It tells the region, not its
    disharmony: the real frames' regions come out as high, as with ImageNet features on real clips.)"""
    run, cfg, root, _ = fitted
    torch.manual_seed(0)
    d = Discriminator.from_pretrained(run)
    folder = next((root / "cache").glob("*"))
    imgs = fitting.training_images(cfg, 32, folder)
    images = {k: torch.from_numpy(imgs[k]).permute(0, 3, 1, 2) for k in ("comp", "target")}
    mask = torch.from_numpy(imgs["mask"])[:, None]
    maps = {k: fitting.encoder_maps(d.net.encoder, imgs[k], folder / f"maps-{k}-{cfg.pairs}.safetensors")
            for k in ("comp", "target")}
    opt = torch.optim.AdamW(d.net.decoder.parameters(), lr=3e-3)
    d.train()
    losses = [fitting.decoder_epoch(d.net.decoder, opt, maps, images, mask, 8) for _ in range(40)]
    d.eval()
    with torch.no_grad():
        comp, target = (d(images[k].float() / 255) for k in ("comp", "target"))
    inside = mask > 127
    assert losses[-1] < 0.9 * losses[0], losses
    assert comp[inside].mean() > comp[~inside].mean() + 0.1


def test_efficientnet_d_round_trips_in_half_precision(tmp_path):
    torch.manual_seed(1)
    cfg = dataclasses.replace(preset("tiny").model, disc_backbone="efficientnet")
    g, d = Generator(cfg), Discriminator(cfg)
    g.save_pretrained(tmp_path)
    d.save_pretrained(tmp_path)
    size = (tmp_path / "discriminator.safetensors").stat().st_size
    n = sum(p.numel() for p in d.state_dict().values() if p.is_floating_point())
    assert size < 2.2 * n  # two bytes a value
    back = Discriminator.from_pretrained(tmp_path)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(back(x), d.eval()(x), atol=2e-3, rtol=0)


def test_fit_d_and_train_refuse_what_they_cannot_run(tmp_path, source_dir, generator_dir):
    testset = _cast_testset(tmp_path / "testset", source_dir)
    with pytest.raises(VharmError, match="--val-testset is required"):
        fitting.fit_d(_config(source_dir, testset, generator_dir, data=DataConfig(sources=(str(source_dir),))),
                      tmp_path, tmp_path)
    odd = tmp_path / "odd"
    Generator(dataclasses.replace(MODEL, resolution=40, disc_backbone="unet", disc_widths=(4, 8, 16, 32))
              ).save_pretrained(odd)
    with pytest.raises(VharmError, match="not a multiple of 32"):
        fitting.fit_d(_config(source_dir, testset, odd), tmp_path, tmp_path)
    assert not list(tmp_path.glob("0000*"))
    cfg = preset("tiny")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, disc_backbone="efficientnet"),
                              data=dataclasses.replace(cfg.data, sources=(str(source_dir),)))
    with pytest.raises(VharmError, match="fitted by `vharm fit-d`"):
        train(cfg, tmp_path / "runs", None, progress=False, validate_real=None)


def test_cli_fit_d_dry_run_and_bad_input(run_cli, tmp_path, source_dir):
    code, out, _ = run_cli("fit-d", source_dir, "--val-testset", tmp_path / "nowhere", "--dry-run")
    assert code == 0 and json.loads(out)["pairs"] == FitDConfig().pairs
    code, _, err = run_cli("fit-d", source_dir, "--outdir", tmp_path / "runs", "--pairs", "4")
    assert code == 2 and err.count("\n") == 1 and "--val-testset is required" in err
    assert not (tmp_path / "runs").exists()


def test_resolution_must_suit_the_encoder():
    from vharm.config import validate

    with pytest.raises(VharmError, match="multiple of 32 for model.disc_backbone efficientnet"):
        validate(dataclasses.replace(MODEL, resolution=48))
