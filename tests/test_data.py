"""Synthetic two-frame data: recolouring, exact flow, determinism, sources, splits, the dataset on disk."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import imread, imwrite, make_source_dir, scene

from vharm.config import DataConfig
from vharm.data.dataset import DiskPairs, SyntheticPairs, collate, make_dataset, open_pairs
from vharm.data.flow import flow_valid, warp
from vharm.data.recolor import FAMILIES, random_recolor
from vharm.data.sources import Item, find_items, item_weights, load_sources, split_items
from vharm.data.synth import make_pair, synthetic_pair
from vharm.errors import VharmError

ALL_FAMILIES = tuple(FAMILIES)


def _colourful(size=48, seed=0) -> tuple[np.ndarray, np.ndarray]:
    rgb, mask = scene(size, size, 0, rng_seed=seed)
    return rgb.astype(np.float32) / 255, mask.astype(np.float32) / 255


def _square(source_dir: Path, name: str = "img01", size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    img = imread(source_dir / "images" / f"{name}.png")[:72, 4:76]
    mask = cv2.imread(str(source_dir / "masks" / f"{name}.png"), cv2.IMREAD_GRAYSCALE)[:72, 4:76]
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    mask = np.clip(cv2.resize(mask, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255, 0, 1)
    return img, mask


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None]


# -------------------------------------------------------------------------------------------- recolour


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_recolour_family_changes_image_and_stays_in_range(family):
    img, mask = _colourful()
    fg = img[mask > 0.5]
    ref = np.random.default_rng(9).uniform(0, 1, (256, 3)).astype(np.float32)
    changes = []
    for seed in range(3):
        out, name = random_recolor(img, np.random.default_rng(seed), (family,), fg, ref, mild_prob=0.0)
        assert out.shape == img.shape and out.dtype == np.float32
        assert np.isfinite(out).all()
        assert out.min() >= 0 and out.max() <= 1
        assert set(name.split("+")) == {family}
        changes.append(np.abs(out - img).mean())
    assert max(changes) > 0.01, changes
    # the raw family function keeps the shape and stays finite (callers clip)
    raw = FAMILIES[family](img, np.random.default_rng(0), ref, fg)
    assert raw.shape == img.shape and np.isfinite(raw).all()


def test_recolour_mild_is_milder_and_deterministic():
    img, mask = _colourful()
    fg = img[mask > 0.5]
    strong, _ = random_recolor(img, np.random.default_rng(4), ("exposure",), fg, mild_prob=0.0)
    mild, _ = random_recolor(img, np.random.default_rng(4), ("exposure",), fg, mild_prob=1.0)
    assert np.abs(mild - img).mean() < np.abs(strong - img).mean()
    again, _ = random_recolor(img, np.random.default_rng(4), ("exposure",), fg, mild_prob=0.0)
    assert np.array_equal(strong, again)


def test_recolour_unknown_family_is_an_error():
    img, mask = _colourful()
    with pytest.raises(ValueError, match="sepia"):
        random_recolor(img, np.random.default_rng(0), ("sepia",), img[mask > 0.5])
    with pytest.raises(ValueError):
        random_recolor(img, np.random.default_rng(0), (), img[mask > 0.5])


# ------------------------------------------------------------------------------------- synthetic pairs


@pytest.mark.parametrize("seed", range(4))
def test_synthetic_pair_flow_is_exact(source_dir, seed):
    img, mask = _square(source_dir, f"img{seed:02d}")
    pair = synthetic_pair(img, mask, np.random.default_rng(seed), ALL_FAMILIES, max_motion=0.08)
    assert pair["comp"].shape == pair["target"].shape == (2, 64, 64, 3)
    assert pair["mask"].shape == (2, 64, 64) and pair["flow"].shape == (2, 64, 64)
    assert pair["exact"] is True and pair["flow"].dtype == np.float32
    assert np.abs(pair["flow"]).max() > 0.5  # there is motion
    flow = torch.from_numpy(pair["flow"])[None]
    inner = cv2.erode((pair["mask"][1] > 0.999).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    sel = inner & (flow_valid(flow)[0, 0].numpy() > 0)
    assert sel.sum() > 200
    for key in ("target", "comp"):  # the recolouring moves with the foreground: one adjustment for both frames
        warped = warp(_t(pair[key][0]), flow)[0].permute(1, 2, 0).numpy()
        err = np.abs(warped - pair[key][1])[sel]
        assert err.max() < 0.02 and err.mean() < 2e-3, (key, err.max(), err.mean())
    # background: the camera motion's flow, away from the inpainted hole
    hole = cv2.dilate((mask > 0.05).astype(np.uint8), np.ones((9, 9), np.uint8)).astype(np.float32)
    hole2 = warp(torch.from_numpy(hole)[None, None], flow)[0, 0].numpy()
    bg = (pair["mask"][1] == 0) & (hole2 == 0) & (flow_valid(flow)[0, 0].numpy() > 0)
    assert bg.sum() > 200
    err = np.abs(warp(_t(pair["target"][0]), flow)[0].permute(1, 2, 0).numpy() - pair["target"][1])[bg]
    assert err.max() < 0.02
    # composite and target agree outside the foreground, and the composite differs inside
    for t in range(2):
        outside = pair["mask"][t] == 0
        assert np.array_equal(pair["comp"][t][outside], pair["target"][t][outside])
    assert np.abs(pair["comp"][1] - pair["target"][1])[pair["mask"][1] > 0.99].mean() > 1e-3


def test_synthetic_pair_is_deterministic(source_dir):
    img, mask = _square(source_dir)
    a = synthetic_pair(img, mask, np.random.default_rng(7), ALL_FAMILIES)
    b = synthetic_pair(img, mask, np.random.default_rng(7), ALL_FAMILIES)
    c = synthetic_pair(img, mask, np.random.default_rng(8), ALL_FAMILIES)
    for key in ("comp", "target", "mask", "flow"):
        assert np.array_equal(a[key], b[key]), key
    assert a["family"] == b["family"]
    assert not np.array_equal(a["flow"], c["flow"])


def test_make_pair_and_synthetic_pairs_are_deterministic(source_dir):
    items = load_sources((str(source_dir),))
    a = make_pair(items, np.random.default_rng(3), 48, ALL_FAMILIES)
    b = make_pair(items, np.random.default_rng(3), 48, ALL_FAMILIES)
    assert a["source"] == b["source"] and np.array_equal(a["comp"], b["comp"])
    assert a["comp"].shape == (2, 48, 48, 3)
    assert a["mask"][0].mean() >= 0.1 * 0.9  # the paper's foreground filter (crop, then resize)
    cfg = DataConfig(sources=(str(source_dir),))
    s1, s2 = SyntheticPairs(cfg, 32, seed=1, split="train"), SyntheticPairs(cfg, 32, seed=1, split="train")
    for i in (0, 5):
        p, q = s1[i], s2[i]
        assert all(np.array_equal(p[k], q[k]) for k in ("comp", "target", "mask", "flow"))
    assert not np.array_equal(s1[0]["comp"], s1[1]["comp"])
    assert not np.array_equal(s1[0]["comp"], SyntheticPairs(cfg, 32, seed=2, split="train")[0]["comp"])


def test_random_regions_on_backdrop_photos(source_dir, tmp_path):
    """A backdrop photo (no mask) is the canvas of the random region: the target is a crop of it, not of a source."""
    folder = tmp_path / "backdrops"
    folder.mkdir()
    flat = np.zeros((80, 80, 3), np.uint8)
    flat[..., 2] = 200  # a blue photo: no source image is this colour
    imwrite(folder / "blue.png", flat)
    cfg = DataConfig(sources=(str(source_dir),), backdrops=(str(folder),), backdrop_prob=1.0, random_mask_prob=1.0)
    pair = SyntheticPairs(cfg, 32, seed=0, split="train")[0]
    assert pair["source"] == "backdrop (random region)"
    assert np.allclose(pair["target"][0], flat[:32, :32] / 255, atol=1 / 255)
    assert pair["mask"][0].mean() > 0.05 and not np.allclose(pair["comp"][0], pair["target"][0])
    # the default draws none, and the validation split never lays regions
    plain = SyntheticPairs(DataConfig(sources=(str(source_dir),), random_mask_prob=1.0), 32, 0, "train")[0]
    assert not plain["source"].startswith("backdrop")
    assert SyntheticPairs(cfg, 32, 0, "val").backdrops == ()
    (folder / "blue.png").unlink()
    with pytest.raises(VharmError, match="no images in this backdrop folder"):
        SyntheticPairs(cfg, 32, 0, "train")


def test_make_pair_refuses_small_foregrounds(source_dir):
    items = load_sources((str(source_dir),))
    with pytest.raises(VharmError, match="foreground"):
        make_pair(items, np.random.default_rng(0), 32, ALL_FAMILIES, min_fg=0.99)


def test_random_region_pairs(source_dir):
    items = load_sources((str(source_dir),))
    # random_mask_prob 0 draws nothing extra: the pairs (and so the built test sets) are the ones made without it
    a = make_pair(items, np.random.default_rng(5), 48, ALL_FAMILIES)
    b = make_pair(items, np.random.default_rng(5), 48, ALL_FAMILIES, random_mask_prob=0.0)
    assert a["source"] == b["source"] and np.array_equal(a["comp"], b["comp"])
    pairs = [make_pair(items, np.random.default_rng(i), 48, ("exposure",), random_mask_prob=1.0) for i in range(4)]
    for pair in pairs:
        assert pair["source"].endswith("(random region)") and pair["exact"] is True
        assert pair["mask"][0].mean() >= 0.1 * 0.9
        outside = pair["mask"][1] == 0
        assert np.array_equal(pair["comp"][1][outside], pair["target"][1][outside])
        inside = pair["mask"][0] > 0.99
        assert np.abs(pair["comp"][0][inside] - pair["target"][0][inside]).mean() > 1e-3
    # the region is not the image's own foreground: the masks differ from those of ordinary pairs of the same item
    own = make_pair(items, np.random.default_rng(0), 48, ("exposure",))
    assert not any(np.array_equal(own["mask"][0], p["mask"][0]) for p in pairs)


def test_real_pairs_from_a_sequence(tmp_path):
    seq = tmp_path / "clips" / "walk"
    (seq / "frames").mkdir(parents=True)
    (seq / "masks").mkdir()
    for t in range(3):
        rgb, mask = scene(64, 64, t)
        imwrite(seq / "frames" / f"{t:05d}.jpg", rgb)
        imwrite(seq / "masks" / f"{t:05d}.png", mask)
    items = find_items(tmp_path / "clips")  # a folder of sequences
    assert len(items) == 1 and items[0].is_sequence and len(items[0].frames) == 3
    pair = make_pair(items, np.random.default_rng(0), 48, ("exposure",), real_pair_prob=1.0)
    assert pair["exact"] is False
    assert pair["flow"].shape == (2, 48, 48) and np.isfinite(pair["flow"]).all()
    outside = pair["mask"][1] == 0
    assert np.array_equal(pair["comp"][1][outside], pair["target"][1][outside])


# ---------------------------------------------------------------------------------------------- sources


def test_find_items_pairs_images_with_masks(source_dir):
    items = find_items(source_dir)
    assert [it.name for it in items] == [f"photos/img{i:02d}" for i in range(6)]
    assert all(it.masks[0].parent.name == "masks" and it.masks[0].stem == it.frames[0].stem for it in items)
    # a parent folder is searched
    assert len(find_items(source_dir.parent)) == 6


def test_missing_mask_is_vharm_error(tmp_path):
    root = make_source_dir(tmp_path / "src", n=3)
    (root / "masks" / "img01.png").unlink()
    with pytest.raises(VharmError, match="img01.*no mask"):
        load_sources((str(root),))


def test_empty_or_missing_sources_are_vharm_errors(tmp_path):
    with pytest.raises(VharmError, match="no training data"):
        load_sources(())
    with pytest.raises(VharmError, match="not found"):
        load_sources((str(tmp_path / "nope"),))
    (tmp_path / "empty").mkdir()
    with pytest.raises(VharmError, match="no images with masks"):
        load_sources((str(tmp_path / "empty"),))


def test_split_is_deterministic_and_stable():
    items = [Item(f"set/{i:03d}", (Path(f"{i}.png"),), (Path(f"m{i}.png"),)) for i in range(60)]
    train, val = split_items(items)
    assert split_items(items) == (train, val)
    assert not set(train) & set(val) and set(train) | set(val) == set(items)
    assert 1 <= len(val) <= 15
    # the order of the sources does not matter, and an item keeps its split as sources grow
    rtrain, rval = split_items(items[::-1])
    assert set(rtrain) == set(train) and set(rval) == set(val)
    more = items + [Item(f"other/{i}", (Path("x.png"),), (Path("y.png"),)) for i in range(30)]
    mtrain, mval = split_items(more)
    assert set(val) <= set(mval) and set(train) <= set(mtrain)
    # tiny sources still get a validation item
    t2, v2 = split_items(items[:2])
    assert len(v2) == 1 and len(t2) == 1


def test_item_weights_balance_roots():
    items = [Item(f"a{i}", (), (), root="A") for i in range(9)] + [Item("b0", (), (), root="B")]
    w = item_weights(items)
    assert w.sum() == pytest.approx(1)
    assert w[:9].sum() == pytest.approx(0.5) and w[9] == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------- the dataset


def test_make_dataset_writes_pairs_manifest_and_sheet(dataset_dir):
    train = sorted((dataset_dir / "train").glob("*.npz"))
    val = sorted((dataset_dir / "val").glob("*.npz"))
    assert [p.name for p in train] == [f"{i:06d}.npz" for i in range(4)]
    assert len(val) == 2
    with np.load(train[0]) as z:
        assert set(z.files) == {"comp", "target", "mask", "flow", "exact", "family"}
        assert z["comp"].dtype == np.uint8 and z["comp"].shape == (2, 64, 64, 3)
        assert z["mask"].dtype == np.uint8 and z["mask"].shape == (2, 64, 64)
        assert z["flow"].dtype == np.float32 and z["flow"].shape == (2, 64, 64)
    manifest = json.loads((dataset_dir / "manifest.json").read_text())
    assert manifest["size"] == 64 and manifest["seed"] == 0
    assert [p["file"] for p in manifest["pairs"]] == [f"train/{i:06d}.npz" for i in range(4)] + \
        [f"val/{i:06d}.npz" for i in range(2)]
    assert all(p["exact_flow"] is True and p["family"] and p["source"] for p in manifest["pairs"])
    sheet = imread(dataset_dir / "contact-sheet.png")
    assert sheet.shape == (4 * 64, 6 * 64, 3)
    assert sheet.std() > 10  # not blank


def test_make_dataset_is_deterministic(tmp_path, source_dir, dataset_dir):
    make_dataset(DataConfig(sources=(str(source_dir),)), tmp_path / "again", size=64, n_train=4, n_val=2, seed=0)
    for f in sorted(dataset_dir.glob("*/*.npz")):
        with np.load(f) as a, np.load(tmp_path / "again" / f.parent.name / f.name) as b:
            for k in ("comp", "target", "mask", "flow"):
                assert np.array_equal(a[k], b[k]), (f, k)


def test_disk_pairs_read_and_resize(dataset_dir):
    full = DiskPairs(dataset_dir, 64, "train")
    assert len(full) == 4
    p = full[1]
    assert p["comp"].dtype == np.float32 and 0 <= p["comp"].min() and p["comp"].max() <= 1
    assert p["exact"] is True
    assert np.array_equal(full[5]["comp"], full[1]["comp"])  # indices wrap around
    half = DiskPairs(dataset_dir, 32, "train")[1]
    assert half["comp"].shape == (2, 32, 32, 3) and half["flow"].shape == (2, 32, 32)
    # displacements are rescaled with the image
    assert np.abs(half["flow"]).mean() == pytest.approx(np.abs(p["flow"]).mean() / 2, rel=0.1)
    batch = collate([full[0], full[1], full[2]])
    assert batch["comp"].shape == (3, 2, 3, 64, 64) and batch["target"].shape == (3, 2, 3, 64, 64)
    assert batch["mask"].shape == (3, 2, 1, 64, 64) and batch["flow"].shape == (3, 2, 64, 64)
    assert batch["exact"].tolist() == [True, True, True]


def test_open_pairs_errors(tmp_path, dataset_dir):
    with pytest.raises(VharmError, match="not found"):
        open_pairs(DataConfig(dataset=str(tmp_path / "nope")), 64, 0, "train")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(VharmError, match="empty split"):
        open_pairs(DataConfig(dataset=str(tmp_path / "empty")), 64, 0, "train")
    assert isinstance(open_pairs(DataConfig(dataset=str(dataset_dir)), 64, 0, "val"), DiskPairs)
