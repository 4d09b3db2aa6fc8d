"""Training sources without masks (`--auto-mask`): masks made once and cached, unsure and tiny masks left out,
sequences split at cuts, videos decoded into the cache, and the CLI plumbing. The segmenter is a colour detector
passed through `load_sources(segmenter=...)`, so that the right mask is known and no test depends on the network."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from conftest import blob_mask, imwrite, scene, write_video

from vharm.data.automask import MIN_CONFIDENCE, AutoMasks
from vharm.data.sources import item_weights, load_sources, split_items
from vharm.data.synth import make_pair
from vharm.errors import VharmError
from vharm.io.masks import read_mask
from vharm.segment import SegmentState


class ColourSegmenter:
    """Finds conftest's warm foreground (red high, blue low) at `level`; a frame unlike the last is a scene cut."""

    def __init__(self, level: float = 1.0):
        self.level, self.calls = level, 0

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        return self.step(rgb)[0]

    def step(self, rgb: np.ndarray, state: SegmentState | None = None) -> tuple[np.ndarray, SegmentState]:
        self.calls += 1
        mask = ((rgb[..., 0].astype(int) > 170) & (rgb[..., 2] < 100)).astype(np.float32) * self.level
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        cut = state is not None and float(np.median(cv2.absdiff(gray, state.gray))) > 40  # gray levels
        return mask, SegmentState(gray, mask, cut)


class Refuse(ColourSegmenter):
    def step(self, rgb, state=None):
        raise AssertionError("the cache should have answered")


def photos(root, n: int = 5, size: tuple[int, int] = (72, 80)):
    """ROOT/*.png: n images of conftest's scene (a warm blob on a cool background), without masks."""
    root.mkdir(parents=True)
    for i in range(n):
        imwrite(root / f"p{i}.png", scene(*size, t=i, rng_seed=i)[0])
    return root


def test_photo_folder_gets_cached_masks_made_once(tmp_path):
    src, cache = photos(tmp_path / "photos"), tmp_path / "cache"
    seg = ColourSegmenter()
    items = load_sources((str(src),), auto_mask=True, mask_cache=str(cache), segmenter=seg)
    assert [it.name for it in items] == [f"photos/p{i}" for i in range(5)] and seg.calls == 5
    for i, it in enumerate(items):
        assert it.frames == (src / f"p{i}.png",) and it.masks[0].is_relative_to(cache)
        truth = scene(72, 80, t=i, rng_seed=i)[1] / 255
        assert np.abs(read_mask(it.masks[0]) - truth).mean() < 0.02
    assert not any(p.name != f"p{i}.png" for i, p in enumerate(sorted(src.iterdir())))  # nothing beside the sources
    # a second load reads the cache; a changed image alone is segmented again
    assert load_sources((str(src),), auto_mask=True, mask_cache=str(cache), segmenter=Refuse()) == items
    imwrite(src / "p2.png", scene(72, 80, t=9, rng_seed=2)[0])
    seg = ColourSegmenter()
    assert len(load_sources((str(src),), auto_mask=True, mask_cache=str(cache), segmenter=seg)) == 5
    assert seg.calls == 1
    # pairs are made from them as from true masks
    pair = make_pair(items, np.random.default_rng(0), 32, ("exposure",))
    assert pair["mask"].shape == (2, 32, 32) and pair["mask"].max() > 0.5


def test_sources_without_masks_need_auto_mask(tmp_path):
    src = photos(tmp_path / "photos", n=2)
    with pytest.raises(VharmError, match="no images with masks found .*--auto-mask"):
        load_sources((str(src),))
    clip = write_video(tmp_path / "clip.mp4", [scene(48, 64, t)[0] for t in range(3)])
    with pytest.raises(VharmError, match="clip.mp4: a video without masks .*--auto-mask"):
        load_sources((str(clip),))
    (tmp_path / "empty").mkdir()
    with pytest.raises(VharmError, match="empty: no images, frames or videos found"):
        load_sources((str(tmp_path / "empty"),), auto_mask=True, mask_cache=str(tmp_path / "c"),
                     segmenter=Refuse())
    # a folder with masks/ keeps its masks and its error for an image without one
    (src.parent / "masked" / "images").mkdir(parents=True)
    (src.parent / "masked" / "masks").mkdir()
    imwrite(src.parent / "masked" / "images" / "a.png", scene(48, 64, 0)[0])
    with pytest.raises(VharmError, match="a.png: no mask for this image"):
        load_sources((str(src.parent / "masked"),), auto_mask=True, mask_cache=str(tmp_path / "c"),
                     segmenter=Refuse())


def test_unsure_and_tiny_masks_are_left_out(tmp_path):
    src = photos(tmp_path / "photos", n=3)
    small = np.full((72, 80, 3), (60, 90, 160), np.uint8)
    small[blob_mask(72, 80, 40, 36, 3, 3) > 0] = (230, 120, 40)  # a warm dot: 0.8 % of the smallest crop
    imwrite(src / "small.png", small)
    imwrite(src / "nobody.png", np.full((72, 80, 3), (60, 90, 160), np.uint8))
    found = load_sources((str(src),), auto_mask=True, mask_cache=str(tmp_path / "a"), min_fg=0.1,
                         segmenter=ColourSegmenter())
    assert [it.name for it in found] == ["photos/p0", "photos/p1", "photos/p2"]
    assert len(load_sources((str(src),), auto_mask=True, mask_cache=str(tmp_path / "a"), min_fg=0.0,
                            segmenter=Refuse())) == 4  # the dot counts without min_fg; the empty frame never
    with pytest.raises(VharmError, match="none of its 5 frames has a person covering 10%"):
        load_sources((str(src),), auto_mask=True, mask_cache=str(tmp_path / "b"), min_fg=0.1,
                     segmenter=ColourSegmenter(level=MIN_CONFIDENCE - 0.1))


def clip_frames(n: int = 12, cut: int = 6, empty: int = 9) -> list[np.ndarray]:
    """A moving blob, a scene cut before frame `cut` (another background), nobody in frame `empty`."""
    frames = []
    for t in range(n):
        rgb, mask = scene(48, 64, t)
        if t >= cut:
            rgb = np.where(mask[..., None] > 0, rgb, rgb // 3).astype(np.uint8)  # the background darkened
        if t == empty:
            rgb = np.full_like(rgb, 90)
        frames.append(rgb)
    return frames


def test_frame_sequence_and_video_split_at_cuts_and_empty_frames(tmp_path):
    seq = tmp_path / "clip" / "frames"
    seq.mkdir(parents=True)
    for t, rgb in enumerate(clip_frames()):
        imwrite(seq / f"{t:05d}.png", rgb)
    (tmp_path / "videos").mkdir()
    write_video(tmp_path / "videos" / "walk.mp4", clip_frames())
    cache = tmp_path / "cache"
    items = load_sources((str(tmp_path / "clip"), str(tmp_path / "videos")), auto_mask=True, mask_cache=str(cache),
                         segmenter=ColourSegmenter())
    names = [(it.name, len(it.frames)) for it in items]
    assert names == [("clip@00000", 6), ("clip@00006", 3), ("clip@00010", 2),
                     ("videos/walk@00000", 6), ("videos/walk@00006", 3), ("videos/walk@00010", 2)]
    video_item = items[3]
    assert all(f.is_relative_to(cache) and f.suffix == ".jpg" for f in video_item.frames)
    assert read_mask(video_item.masks[0]).shape == (48, 64)
    index = json.loads((video_item.frames[0].parents[1] / "index.json").read_text())
    assert [e["name"] for e in index["frames"] if e["cut"]] == ["00000", "00006", "00009", "00010"]
    # the runs of one sequence stay on one side of the split, and share one item's weight by their frames
    train, val = split_items(items, val_fraction=0.5)
    assert {it.name.split("@")[0] for it in train}.isdisjoint({it.name.split("@")[0] for it in val})
    w = item_weights(items)
    assert np.allclose(w, np.array([6, 3, 2, 6, 3, 2]) / 22)
    # a second load of both reads the cache only
    again = load_sources((str(tmp_path / "clip"), str(tmp_path / "videos")), auto_mask=True, mask_cache=str(cache),
                         segmenter=Refuse())
    assert [(it.name, it.frames) for it in again] == [(it.name, it.frames) for it in items]
    # real consecutive pairs come from within a run
    pair = make_pair(items[:1], np.random.default_rng(0), 32, ("exposure",), real_pair_prob=1.0)
    assert pair["exact"] is False


def test_video_frames_are_kept_small_in_the_cache(tmp_path, monkeypatch):
    import vharm.data.automask as automask

    monkeypatch.setattr(automask, "MAX_SHORT", 24)
    clip = write_video(tmp_path / "big.mp4", clip_frames(n=3, cut=99, empty=99))
    auto = AutoMasks(tmp_path / "cache", segmenter=ColourSegmenter(), progress=False)
    (item,) = auto.video(clip, "big")
    assert cv2.imread(str(item.frames[0])).shape == (24, 32, 3) and read_mask(item.masks[0]).shape == (24, 32)
    assert auto.frames == {"seen": 3, "segmented": 3, "kept": 3}


def test_cli_make_dataset_and_train_take_auto_mask(run_cli, tmp_path, capsys):
    src, cache = photos(tmp_path / "photos", n=6), tmp_path / "cache"
    load_sources((str(src),), auto_mask=True, mask_cache=str(cache), segmenter=ColourSegmenter())  # the cache
    assert "making automatic masks of photos (6 images)" in capsys.readouterr().err
    code, _, err = run_cli("make-dataset", src, "-o", tmp_path / "p0", "--quiet")
    assert code == 2 and "no images with masks" in err and "--auto-mask" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_cli("make-dataset", src, "--auto-mask", "--mask-cache", cache, "-o", tmp_path / "pairs",
                             "--train", "3", "--val", "1", "--size", "32", "--quiet")
    assert code == 0, err
    manifest = json.loads((tmp_path / "pairs" / "manifest.json").read_text())
    assert manifest["data"]["auto_mask"] is True and len(manifest["pairs"]) == 4
    assert all(p["source"].startswith("photos/p") for p in manifest["pairs"])
    code, out, _ = run_cli("train", src, "--auto-mask", "--mask-cache", cache, "--dry-run")
    assert code == 0 and json.loads(out)["data"]["auto_mask"] is True
    code, out, _ = run_cli("train", src, "--auto-mask", "--no-auto-mask", "--dry-run")
    assert code == 0 and json.loads(out)["data"]["auto_mask"] is False
