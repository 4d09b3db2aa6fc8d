"""Two-frame training pairs with exact flow: the paper's "Dancing MSCOCO" recipe (Sec. III-A, Fig. 3) from any
masked image, plus real consecutive video frames (estimated flow) as an option.

Per synthetic pair: crop a square around the foreground; inpaint the foreground out to get the background;
frame 2's background is a crop-and-resize of it (camera motion); the foreground is recoloured once (the
composite) and moved by one small affine T for frame 2, applied alike to the original and the recoloured
foreground. Both motions are affine, so the backward flow of frame 2 is known exactly everywhere.

A pair is a dict of numpy arrays: `comp`, `target` (2, S, S, 3) float32 in [0, 1], `mask` (2, S, S) float32,
`flow` (2, S, S) float32 (frame 2 -> frame 1, pixels, see `vharm.train.losses`), `exact` (bool), `family` (str).
"""

from __future__ import annotations

import cv2
import numpy as np

from vharm.data.flow import estimate_flow
from vharm.data.recolor import random_recolor
from vharm.data.sources import Item, item_weights
from vharm.errors import VharmError
from vharm.io.images import read_image
from vharm.io.masks import read_mask

_WARP = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
MIN_CROP = 0.6  # the smallest square crop of a source, as a share of its short side (the largest is all of it)


def _load(item: Item, index: int) -> tuple[np.ndarray, np.ndarray]:
    img, _ = read_image(item.frames[index])
    mask = read_mask(item.masks[index])
    if mask.shape != img.shape[:2]:
        raise VharmError(f"{item.masks[index]}: mask size {mask.shape[1]}x{mask.shape[0]} differs from its image's "
                         f"{img.shape[1]}x{img.shape[0]} ({item.frames[index]})")
    return img, mask


def _crop_box(mask: np.ndarray, rng: np.random.Generator, min_fg: float) -> tuple[int, int, int] | None:
    """A square (x, y, side) that holds the foreground centre and at least `min_fg` foreground; None if none."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask > 0.5)
    if len(xs) == 0:
        return None
    cx, cy = xs.mean(), ys.mean()
    for _ in range(6):
        side = int(min(h, w) * rng.uniform(MIN_CROP, 1.0))
        x = int(np.clip(cx - side / 2 + rng.uniform(-0.2, 0.2) * side, 0, w - side))
        y = int(np.clip(cy - side / 2 + rng.uniform(-0.2, 0.2) * side, 0, h - side))
        if mask[y:y + side, x:x + side].mean() >= min_fg:
            return x, y, side
    return None


def _crop(arr: np.ndarray, box: tuple[int, int, int], size: int) -> np.ndarray:
    x, y, side = box
    return cv2.resize(arr[y:y + side, x:x + side], (size, size), interpolation=cv2.INTER_AREA)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    return np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32))


def _affine_flow(mat: np.ndarray, size: int) -> np.ndarray:
    """(2, S, S) displacement x' - x for x' = mat @ (x, y, 1) (mat maps frame-2 pixels into frame 1)."""
    xs, ys = _grid(size)
    return np.stack([mat[0, 0] * xs + mat[0, 1] * ys + mat[0, 2] - xs,
                     mat[1, 0] * xs + mat[1, 1] * ys + mat[1, 2] - ys])


def _fg_pixels(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator, n: int = 2048) -> np.ndarray:
    pix = img[mask > 0.5]
    return pix[rng.integers(0, len(pix), min(n, len(pix)))] if len(pix) else img.reshape(-1, 3)[:n]


def synthetic_pair(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator, families: tuple[str, ...],
                   ref: np.ndarray | None = None, max_motion: float = 0.04, mild_prob: float = 0.15) -> dict:
    """One Dancing-MSCOCO pair from a square float image (S, S, 3) in [0, 1] and its mask (S, S)."""
    size = img.shape[0]
    hole = cv2.dilate((mask > 0.05).astype(np.uint8), np.ones((7, 7), np.uint8))
    background = cv2.inpaint((img * 255).astype(np.uint8), hole, 3, cv2.INPAINT_TELEA).astype(np.float32) / 255
    comp1, family = random_recolor(img, rng, families, _fg_pixels(img, mask, rng), ref, mild_prob)

    # Camera motion: frame 2 shows a slightly zoomed, shifted crop of the background (frame 2 -> frame 1 map).
    k = 1 - rng.uniform(0, 0.06)
    cam = np.float32([[k, 0, rng.uniform(0, (1 - k) * size)], [0, k, rng.uniform(0, (1 - k) * size)]])
    # Foreground motion T (frame 1 -> frame 2): small rotation and scale about the foreground centre, a shift.
    ys, xs = np.nonzero(mask > 0.5)
    centre = (float(xs.mean()), float(ys.mean())) if len(xs) else (size / 2, size / 2)
    fwd = cv2.getRotationMatrix2D(centre, rng.uniform(-3, 3), rng.uniform(0.96, 1.04))
    fwd[:, 2] += rng.uniform(-max_motion, max_motion, 2) * size
    inv = cv2.invertAffineTransform(fwd)  # frame 2 -> frame 1

    def move(a: np.ndarray, mat: np.ndarray) -> np.ndarray:
        return cv2.warpAffine(a, mat, (size, size), flags=_WARP, borderMode=cv2.BORDER_REFLECT)

    mask2 = cv2.warpAffine(mask, inv, (size, size), flags=_WARP, borderMode=cv2.BORDER_CONSTANT)
    bg2 = move(background, cam)
    m2 = mask2[..., None]
    target2 = m2 * move(img, inv) + (1 - m2) * bg2
    comp2 = m2 * move(comp1, inv) + (1 - m2) * bg2
    m1 = mask[..., None]
    comp1 = m1 * comp1 + (1 - m1) * img
    flow = np.where(mask2 > 0.5, _affine_flow(inv, size), _affine_flow(cam, size))
    return {"comp": np.stack([comp1, comp2]), "target": np.stack([img, target2]), "mask": np.stack([mask, mask2]),
            "flow": flow.astype(np.float32), "exact": True, "family": family}





def real_pair(img1, mask1, img2, mask2, rng, families, ref=None, mild_prob: float = 0.15) -> dict:
    """Two real consecutive frames, recoloured by one shared adjustment; flow estimated (DIS), not exact."""
    both, family = random_recolor(np.concatenate([img1, img2]), rng, families,
                                  _fg_pixels(img1, mask1, rng), ref, mild_prob)
    adj1, adj2 = np.split(both, 2)
    m1, m2 = mask1[..., None], mask2[..., None]
    return {"comp": np.stack([m1 * adj1 + (1 - m1) * img1, m2 * adj2 + (1 - m2) * img2]),
            "target": np.stack([img1, img2]), "mask": np.stack([mask1, mask2]),
            "flow": estimate_flow(img2, img1), "exact": False, "family": family}


def _random_region(img: np.ndarray, items: list[Item], rng: np.random.Generator, size: int, min_fg: float
                   ) -> tuple[np.ndarray, np.ndarray] | None:
    """A random square crop of `img` and another item's foreground mask (its own crop, maybe mirrored) as the
    region to recolour; None if that mask has too little foreground."""
    h, w = img.shape[:2]
    side = int(min(h, w) * rng.uniform(MIN_CROP, 1.0))
    x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    other = items[rng.integers(len(items))]
    _, mask = _load(other, int(rng.integers(len(other.frames))))
    box = _crop_box(mask, rng, min_fg)
    if box is None:
        return None
    mask_s = np.clip(_crop(mask, box, size), 0, 1)
    if rng.random() < 0.5:
        mask_s = np.ascontiguousarray(mask_s[:, ::-1])
    return _crop(img, (x, y, side), size).astype(np.float32) / 255, mask_s


def _recolor_scene(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator, families: tuple[str, ...]
                   ) -> np.ndarray:
    """The whole source crop recoloured by one random adjustment: a new "real" scene, the target of the pair.

    Without it a G that sees background statistics recognises each of a few thousand source images by its
    background and learns its foreground's colours by heart, instead of how a foreground relates to a scene.
    `img` may hold several frames stacked along the rows; `mask` is the first frame's.
    """
    fg = _fg_pixels(img[:mask.shape[0]], mask, rng)
    return random_recolor(img, rng, families, fg, None, mild_prob=0.0)[0]


def make_pair(items: list[Item], rng: np.random.Generator, size: int, families: tuple[str, ...],
              min_fg: float = 0.1, max_motion: float = 0.04, real_pair_prob: float = 0.0,
              mild_prob: float = 0.15, random_mask_prob: float = 0.0, scene_prob: float = 0.0,
              backdrops: tuple = (), backdrop_prob: float = 0.5) -> dict:
    """Draws a source item (retrying ones whose foreground is too small) and builds one pair at size x size.

    With `random_mask_prob` the recoloured region is another item's mask on a random crop (`_random_region`), of
    a photo of `backdrops` (paths of images without masks) for a `backdrop_prob` share of them; with `scene_prob`
    the whole crop is recoloured first (`_recolor_scene`).
    """
    probs = item_weights(items)
    for _ in range(50):
        item = items[rng.choice(len(items), p=probs)]
        # Drawn only when asked for: random_mask_prob = 0 gives exactly the pairs (and test sets) it always did.
        region = random_mask_prob > 0 and rng.random() < random_mask_prob
        scene = scene_prob > 0 and rng.random() < scene_prob
        real = not region and item.is_sequence and rng.random() < real_pair_prob
        t = int(rng.integers(len(item.frames) - (1 if real else 0)))
        img, mask = _load(item, t)
        backdrop = region and len(backdrops) > 0 and rng.random() < backdrop_prob
        if backdrop:
            img = read_image(backdrops[rng.integers(len(backdrops))])[0]
        drawn = _random_region(img, items, rng, size, min_fg) if region else _crop_box(mask, rng, min_fg)
        if drawn is None:
            continue
        other = items[rng.integers(len(items))]
        ref_img, ref_mask = _load(other, int(rng.integers(len(other.frames))))
        ref = _fg_pixels(ref_img.astype(np.float32) / 255, ref_mask, rng)
        if region:
            img_s, mask_s = drawn
        else:
            img_s = _crop(img, drawn, size).astype(np.float32) / 255
            mask_s = np.clip(_crop(mask, drawn, size), 0, 1)
        if real:
            img2, mask2 = _load(item, t + 1)
            img2_s = _crop(img2, drawn, size).astype(np.float32) / 255
            if scene:
                img_s, img2_s = np.split(_recolor_scene(np.concatenate([img_s, img2_s]), mask_s, rng, families), 2)
            pair = real_pair(img_s, mask_s, img2_s, np.clip(_crop(mask2, drawn, size), 0, 1), rng, families, ref,
                             mild_prob)
        else:
            if scene:
                img_s = _recolor_scene(img_s, mask_s, rng, families)
            pair = synthetic_pair(img_s, mask_s, rng, families, ref, max_motion, mild_prob)
        pair["source"] = (("backdrop" if backdrop else f"{item.name}:{t}") + (" (random region)" if region else "")
                          + (" (new scene)" if scene else ""))
        return pair
    roots = sorted({it.root or it.name for it in items})
    raise VharmError(f"{', '.join(roots)}: no source image has a foreground of at least {min_fg:.0%} of a crop "
                     "(empty or tiny masks?); lower --min-fg or add data")
