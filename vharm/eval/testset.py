"""`vharm make-testset`: held-out evaluation sets on disk, deterministic from a seed (see docs/testset.md).

One output directory holds four sets and a `manifest.json` listing every clip:
- `real/`: HYouTube-style clips. Real DAVIS frames whose foreground is recoloured by ONE transform per clip
  (colour transfer from another video's foreground, tone curve, exposure, saturation, or the LUT family that
  training never sees); the ground truth is the real frames. Clearly off: foreground fMSE >= MIN_COMP_FMSE.
- `mild/`: the same recipe with the recolouring scaled down to a foreground fMSE in MILD_COMP_FMSE: composites
  that are nearly right, where the only good answer is a small change (the do-no-harm measurement).
- `synthetic/`: two-frame Dancing-MSCOCO pairs with exact flow (`vharm.data.synth`), for the paper's L_T1.
- `composites/`: DAVIS foregrounds pasted onto other videos: real composites with no ground truth, for the
  temporal metrics and pictures only (the paper's user-study protocol, scaled down).

Every set is built from the DAVIS sequences of `TEST_SEQUENCES` only; training uses the other eight.

Clip layout: `<set>/<clip>/{comp,target,mask}/%05d.png` (no `target/` in `composites/`), `clip.json`, and
`flow.npy` ((2, H, W) float32, frame 1 -> frame 0, pixels) in `synthetic/`.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import cv2
import numpy as np

from vharm.config import DataConfig, read_json
from vharm.data.recolor import FAMILIES, TEST_FAMILIES
from vharm.data.sources import Item, find_items
from vharm.data.synth import make_pair
from vharm.errors import VharmError
from vharm.io.images import read_image
from vharm.io.masks import read_mask
from vharm.io.video import FrameSource

# The dev test split of ../shared/data/davis2016: never in a training run's sources (docs/testset.md).
TEST_SEQUENCES = ("breakdance", "kite-surf", "paragliding-launch", "dog", "libby", "cows")
# reinhard = colour transfer from another video's foreground, curve = tone curve; lut is held out of training.
REAL_FAMILIES = ("reinhard", "curve", "exposure", "saturation", "lut")
# Background videos under DATA/videos and the frame range that holds no scene cut (bikes.mp4 cuts near 76 and
# 137; tree.avi decodes only 68 of the 444 frames its container claims).
BACKGROUNDS = {"vtest.avi": (0, 795), "street-1080p.mp4": (0, 62), "bikes.mp4": (78, 136), "tree.avi": (0, 68)}
# A recolouring whose foreground error is below this (fMSE on 0-255, RMS < 10 levels) is redrawn: a test
# composite that is barely off cannot show whether a method harmonizes.
MIN_COMP_FMSE = 100.0
# A mild clip's recolouring is scaled to a foreground error drawn log-uniformly in this range (fMSE on 0-255):
# composites that need almost no correction, where a harmonizer can only do harm.
MILD_COMP_FMSE = (20.0, 100.0)
# The order the sets are built in; each draws from its own generator ([seed, index]), so a set added at the end
# leaves the clips of the others as they were.
SETS = ("real", "synthetic", "composites", "mild")


def _resize_long(arr: np.ndarray, max_side: int) -> np.ndarray:
    h, w = arr.shape[:2]
    k = max_side / max(h, w)
    if k >= 1:
        return arr
    return cv2.resize(arr, (round(w * k), round(h * k)), interpolation=cv2.INTER_AREA)


def _write_rgb(path: Path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise VharmError(f"{path}: could not write image")


def _write_mask(path: Path, mask: np.ndarray) -> None:
    if not cv2.imwrite(str(path), np.round(np.clip(mask, 0, 1) * 255).astype(np.uint8)):
        raise VharmError(f"{path}: could not write image")


def _to_u8(img: np.ndarray) -> np.ndarray:
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


def _write_clip(folder: Path, comp, mask, target=None, info: dict | None = None) -> None:
    """Writes comp/, mask/ (and target/) PNG frames and clip.json."""
    subdirs = ("comp", "mask") + (("target",) if target is not None else ())
    for sub in subdirs:
        (folder / sub).mkdir(parents=True)
    for t in range(len(comp)):
        name = f"{t:05d}.png"
        _write_rgb(folder / "comp" / name, comp[t])
        _write_mask(folder / "mask" / name, mask[t])
        if target is not None:
            _write_rgb(folder / "target" / name, target[t])
    (folder / "clip.json").write_text(json.dumps(info or {}, indent=2) + "\n")


def _source(name: str) -> str:
    """A sequence's name as the manifest records it: its path under the data folder."""
    return name if "/" in name else f"davis2016/{name}"


def _sequence(data: Path, name: str) -> Item:
    """A DAVIS-2016 sequence by name, or any frames/+masks/ sequence by its path under `data`
    (e.g. davis2016-more/bear)."""
    folder = data / name if "/" in name else data / "davis2016" / name
    items = find_items(folder, depth=0)
    if not items:
        raise VharmError(f"{folder}: DAVIS sequence not found (expected frames/ and masks/)")
    return items[0]


def _load(item: Item, t: int, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame t as float32 RGB in [0, 1] and its mask, long side <= max_side."""
    img, _ = read_image(item.frames[t])
    mask = read_mask(item.masks[t])
    if mask.shape != img.shape[:2]:
        mask = cv2.resize(mask, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
    return _resize_long(img, max_side).astype(np.float32) / 255, np.clip(_resize_long(mask, max_side), 0, 1)


def _fg_sample(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator, n: int = 4096) -> np.ndarray:
    pix = img[mask > 0.5]
    if len(pix) == 0:
        pix = img.reshape(-1, 3)
    return pix[rng.integers(0, len(pix), min(n, len(pix)))]


def _fmse(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    err = (mask[..., None] * ((a - b) * 255) ** 2).sum()
    return float(err / max(3 * mask.sum(), 1e-8))


def _mild_scale(recoloured: np.ndarray, img: np.ndarray, mask: np.ndarray, target: float) -> float:
    """The factor s in (0, 1] that brings the 8-bit composite of img + s * (recoloured - img) to a foreground fMSE
    of about `target`: fMSE grows with s^2, but rounding to 8 bits and saturated channels bend that, so the
    estimate is refined a few times on the frame itself."""
    scale = 1.0
    for _ in range(4):
        comp = _to_u8(img + scale * (recoloured - img)).astype(np.float32) / 255
        scale = min(1.0, scale * float(np.sqrt(target / max(_fmse(comp, img, mask), 1e-8))))
    return scale


def real_clips(data: Path, out: Path, rng: np.random.Generator, clips_per_sequence: int, frames: int,
               max_side: int, progress=None, sequences: tuple[str, ...] = TEST_SEQUENCES, mild: bool = False
               ) -> list[dict]:
    """The HYouTube-style set: `clips_per_sequence` clips of each test sequence, one transform per clip.

    Clip starts are spread evenly over the sequence (they overlap in short ones); families cycle through
    REAL_FAMILIES in a seeded order so every family gets about the same number of clips. `mild`: the `mild/` set,
    each clip's change (recoloured - real) scaled by one factor so that its first frame's foreground fMSE is a
    target drawn log-uniformly in MILD_COMP_FMSE (fMSE grows with the square of that factor).
    """
    kind = "mild" if mild else "real"
    seqs = {name: _sequence(data, name) for name in sequences}
    order = [REAL_FAMILIES[i] for i in rng.permutation(len(REAL_FAMILIES))]
    families = itertools.cycle(order)
    entries = []
    for name, item in seqs.items():
        n = len(item.frames)
        length = min(frames, n)
        for k in range(clips_per_sequence):
            family = next(families)
            start = round(k * (n - length) / max(clips_per_sequence - 1, 1))
            loaded = [_load(item, t, max_side) for t in range(start, start + length)]
            imgs = [f for f, _ in loaded]
            masks = [m for _, m in loaded]
            fg = _fg_sample(imgs[0], masks[0], rng)
            ref, ref_name = None, None
            if family == "reinhard":  # colour transfer from another test video's foreground
                other = [s for s in sequences if s != name][int(rng.integers(len(sequences) - 1))]
                t_ref = int(rng.integers(len(seqs[other].frames)))
                ref = _fg_sample(*_load(seqs[other], t_ref, max_side), rng)
                ref_name = f"{_source(other)}:{t_ref:05d}"
            target = float(np.exp(rng.uniform(*np.log(MILD_COMP_FMSE)))) if mild else MIN_COMP_FMSE
            for _ in range(20):
                # One transform per clip: the same parameters for every frame, so each frame's call gets a
                # generator seeded alike (the families draw their parameters before touching the image).
                param_seed = int(rng.integers(2 ** 31))
                first = np.clip(FAMILIES[family](imgs[0], np.random.default_rng(param_seed), ref, fg), 0, 1)
                comp_fmse = _fmse(first, imgs[0], masks[0])
                if comp_fmse >= target:
                    break
            scale = _mild_scale(first, imgs[0], masks[0], target) if mild else 1.0
            comps = []
            for img, m in zip(imgs, masks):
                recoloured = np.clip(FAMILIES[family](img, np.random.default_rng(param_seed), ref, fg), 0, 1)
                changed = recoloured if scale == 1 else img + scale * (recoloured - img)
                comps.append(_to_u8(m[..., None] * changed + (1 - m[..., None]) * img))
            clip_id = f"{kind}/{Path(name).name}-{k}-{family}"
            comp_fmse = _fmse(comps[0].astype(np.float32) / 255, imgs[0], masks[0]) if mild else comp_fmse
            info = {"kind": kind, "family": family, "held_out_family": family not in DataConfig.families,
                    "source": _source(name), "frames": [start, start + length], "reference": ref_name,
                    "param_seed": param_seed, "comp_fmse_first_frame": round(comp_fmse, 2),
                    **({"scale": round(scale, 4)} if mild else {}),
                    "size": [imgs[0].shape[1], imgs[0].shape[0]]}
            _write_clip(out / clip_id, comps, masks, [_to_u8(f) for f in imgs], info)
            entries.append({"clip": clip_id, "kind": kind, "family": family, "frames": length})
            if progress:
                progress()
    return entries


def synthetic_clips(data: Path, out: Path, rng: np.random.Generator, count: int, size: int,
                    progress=None, sequences: tuple[str, ...] = TEST_SEQUENCES) -> list[dict]:
    """Two-frame synthetic pairs with exact flow from random frames of the test sequences (paper Table I).

    The recipe is training's (`make_pair`) with the test families, the held-out LUT one included.
    """
    items = [_sequence(data, name) for name in sequences]
    families = TEST_FAMILIES
    entries = []
    for i in range(count):
        pair = make_pair(items, rng, size, families, mild_prob=DataConfig.mild_prob)
        clip_id = f"synthetic/{i:03d}"
        info = {"kind": "synthetic", "family": pair["family"], "source": pair["source"], "exact_flow": True,
                "comp_fmse": [round(_fmse(pair["comp"][t], pair["target"][t], pair["mask"][t]), 2) for t in (0, 1)]}
        _write_clip(out / clip_id, [_to_u8(c) for c in pair["comp"]], list(pair["mask"]),
                    [_to_u8(c) for c in pair["target"]], info)
        np.save(out / clip_id / "flow.npy", pair["flow"].astype(np.float32))
        entries.append({"clip": clip_id, "kind": "synthetic", "family": pair["family"], "frames": 2})
        if progress:
            progress()
    return entries


def _read_background(path: Path, start: int, frames: int, max_side: int) -> list[np.ndarray]:
    out = []
    for frame in itertools.islice(FrameSource(path), start, start + frames):
        out.append(_resize_long(frame.rgb, max_side))
    if len(out) < 2:
        raise VharmError(f"{path}: fewer than 2 frames decoded from frame {start}")
    return out


def composite_clips(data: Path, out: Path, rng: np.random.Generator, count: int, frames: int, max_side: int,
                    progress=None, sequences: tuple[str, ...] = TEST_SEQUENCES) -> list[dict]:
    """Test-sequence foregrounds (cropped to their box over the clip) pasted onto background videos."""
    from vharm.inference.composite import paste  # imports the inference layer (torch): only this set needs it

    fgs = [sequences[i] for i in rng.permutation(len(sequences))]
    bgs = [list(BACKGROUNDS)[i] for i in rng.permutation(len(BACKGROUNDS))]
    entries = []
    for i in range(count):
        fg_name, bg_name = fgs[i % len(fgs)], bgs[i % len(bgs)]
        item = _sequence(data, fg_name)
        bg_path = data / "videos" / bg_name
        if not bg_path.exists():
            raise VharmError(f"{bg_path}: background video not found")
        lo, hi = BACKGROUNDS[bg_name]
        bg_start = int(rng.integers(lo, max(lo + 1, hi - frames)))
        bgs_rgb = _read_background(bg_path, bg_start, min(frames, hi - bg_start), max_side)
        length = min(len(bgs_rgb), len(item.frames))
        fg_start = int(rng.integers(0, len(item.frames) - length + 1))
        loaded = [_load(item, t, max_side) for t in range(fg_start, fg_start + length)]
        union = np.max([m for _, m in loaded], axis=0) > 0.5
        ys, xs = np.nonzero(union)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        bh, bw = bgs_rgb[0].shape[:2]
        # The foreground's box over the whole clip fills 70 % of the background's height (90 % of its width
        # at most), feet near the bottom, so its own motion inside the box is kept.
        scale = min(0.7 * bh / (y1 - y0), 0.9 * bw / (x1 - x0))
        pos_x = int((bw - scale * (x1 - x0)) * rng.uniform(0.2, 0.8))
        pos_y = int(bh * 0.95 - scale * (y1 - y0))
        comps, masks = [], []
        for (img, m), bg in zip(loaded, bgs_rgb[:length]):
            comp, mask = paste(_to_u8(img[y0:y1, x0:x1]), m[y0:y1, x0:x1], bg, (pos_x, pos_y), scale)
            comps.append(comp)
            masks.append(mask)
        clip_id = f"composites/{Path(fg_name).name}-on-{Path(bg_name).stem}"
        info = {"kind": "composites", "family": "none", "foreground": _source(fg_name),
                "foreground_frames": [fg_start, fg_start + length], "background": f"videos/{bg_name}",
                "background_frames": [bg_start, bg_start + length], "size": [bw, bh]}
        _write_clip(out / clip_id, comps, masks, None, info)
        entries.append({"clip": clip_id, "kind": "composites", "family": "none", "frames": length})
        if progress:
            progress()
    return entries


def make_testset(data: Path, out: Path, seed: int = 0, clips_per_sequence: int = 3, frames: int = 24,
                 max_side: int = 480, synthetic: int = 24, synthetic_size: int = 256, composites: int = 3,
                 progress=None, sequences: tuple[str, ...] = TEST_SEQUENCES, mild_per_sequence: int = 2) -> dict:
    """Builds the four sets into `out` (an empty directory) and returns the manifest written there.

    `sequences` are the DAVIS sequences to draw from: the dev split by default; other ones (kept out of training)
    give a real-video validation set for choosing a checkpoint without looking at the dev set.

    Each set draws from its own generator seeded from `seed`, so changing one set's size leaves the
    others' clips as they were.
    """
    data, out = Path(data), Path(out)
    if not (data / "davis2016").is_dir():
        raise VharmError(f"{data}: no davis2016/ folder here (give the data root, e.g. ../shared/data)")
    rngs = [np.random.default_rng([seed, k]) for k in range(len(SETS))]
    if len(sequences) < 2:
        raise VharmError(f"--sequences needs at least 2 DAVIS sequences (colour transfer takes another one's "
                         f"foreground), got {len(sequences)}")
    clips = real_clips(data, out, rngs[0], clips_per_sequence, frames, max_side, progress, sequences)
    clips += synthetic_clips(data, out, rngs[1], synthetic, synthetic_size, progress, sequences)
    clips += composite_clips(data, out, rngs[2], composites, frames, max_side, progress, sequences)
    clips += real_clips(data, out, rngs[3], mild_per_sequence, frames, max_side, progress, sequences, mild=True)
    manifest = {
        "version": 1,
        "seed": seed,
        "test_sequences": [_source(s) for s in sequences],
        "settings": {"clips_per_sequence": clips_per_sequence, "frames": frames, "max_side": max_side,
                     "synthetic": synthetic, "synthetic_size": synthetic_size, "composites": composites,
                     "mild_per_sequence": mild_per_sequence},
        "clips": clips,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def load_manifest(testset: Path) -> dict:
    """The manifest of a `vharm make-testset` directory, checked enough to name what is wrong."""
    path = Path(testset) / "manifest.json"
    manifest = read_json(path, "missing (build a test set with `vharm make-testset`)", 'with a "clips" list')
    if not isinstance(manifest.get("clips"), list):
        raise VharmError(f"{path}: expected an object with a \"clips\" list")
    for entry in manifest["clips"]:
        if not isinstance(entry, dict) or entry.get("kind") not in SETS or not isinstance(entry.get("clip"), str):
            raise VharmError(f"{path}: bad clip entry {entry!r} (needs \"clip\" and \"kind\" in {', '.join(SETS)})")
        if not (Path(testset) / entry["clip"] / "comp").is_dir():
            raise VharmError(f"{Path(testset) / entry['clip']}: clip listed in the manifest is missing")
    return manifest

