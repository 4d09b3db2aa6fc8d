"""Recolouring families that turn a real foreground into a disharmonious one (paper Sec. III-A, plus LUT-like).

Each family is a function `(image, rng, ref, fg) -> image` on float32 RGB (H, W, 3) in [0, 1]; `ref` is an
optional (pixels, 3) sample of another foreground's colours for colour transfer, `fg` a (pixels, 3) sample of
this foreground's colours, whose statistics the statistics-based families use (the background's must not
change a foreground's recolouring). `random_recolor` draws one
adjustment (a family, its parameters and a strength) and applies it; the same call gives the same change to
both frames of a pair because the caller recolours the whole source image once.
"""

from __future__ import annotations

import cv2
import numpy as np


def _lab(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(img, dtype=np.float32), cv2.COLOR_RGB2Lab)


def reinhard(img: np.ndarray, rng: np.random.Generator, ref: np.ndarray | None, fg: np.ndarray) -> np.ndarray:
    """Reinhard et al. 2001: match Lab mean/std to another foreground's (the Tsai et al. / paper recipe)."""
    if ref is None or len(ref) < 16:
        ref = rng.uniform(0, 1, size=(64, 3)).astype(np.float32) * rng.uniform(0.3, 1.0)
    fg_lab = _lab(fg.reshape(-1, 1, 3)).reshape(-1, 3)
    ref_lab = _lab(ref.reshape(-1, 1, 3)).reshape(-1, 3)
    # Partial transfer: a full match to one other object's colours is rarely what a compositor sees.
    t = rng.uniform(0.4, 1.0)
    scale = 1 + t * ((ref_lab.std(0) + 1e-3) / (fg_lab.std(0) + 1e-3) - 1)
    shift = t * (ref_lab.mean(0) - fg_lab.mean(0))
    out = (_lab(img) - fg_lab.mean(0)) * scale + fg_lab.mean(0) + shift
    return cv2.cvtColor(out.astype(np.float32), cv2.COLOR_Lab2RGB)


def exposure(img, rng, ref, fg):
    return img * 2.0 ** rng.uniform(-1.2, 1.2)


def gamma(img, rng, ref, fg):
    return np.clip(img, 0, 1) ** np.exp(rng.uniform(-0.6, 0.6))


def hue(img, rng, ref, fg):
    hsv = cv2.cvtColor(np.clip(img, 0, 1).astype(np.float32), cv2.COLOR_RGB2HSV)  # H in degrees
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-40, 40)) % 360
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def saturation(img, rng, ref, fg):
    gray = img @ np.float32([0.299, 0.587, 0.114])
    return gray[..., None] + (img - gray[..., None]) * rng.uniform(0.2, 1.8)


def temperature(img, rng, ref, fg):
    """White balance: warm/cool gains on R and B plus a green-magenta tint."""
    t, tint = rng.uniform(-0.3, 0.3), rng.uniform(-0.1, 0.1)
    return img * np.float32([1 + t, 1 + tint, 1 - t])


def contrast(img, rng, ref, fg):
    mean = fg.mean()
    return (img - mean) * rng.uniform(0.5, 1.6) + mean + rng.uniform(-0.1, 0.1)


def _smooth_curve(rng: np.random.Generator, knots: int = 5, spread: float = 0.18) -> np.ndarray:
    """A random monotone tone curve sampled at 256 points (a 1-D LUT)."""
    x = np.linspace(0, 1, knots)
    y = np.sort(np.clip(x + rng.uniform(-spread, spread, knots), 0, 1))
    y[0], y[-1] = rng.uniform(0, 0.12), rng.uniform(0.85, 1.0)
    y = np.maximum.accumulate(y)
    return np.interp(np.linspace(0, 1, 256), x, y).astype(np.float32)


def _apply_lut(img: np.ndarray, lut: np.ndarray) -> np.ndarray:
    idx = np.clip(img * 255, 0, 255)
    lo = idx.astype(np.int32)
    hi = np.minimum(lo + 1, 255)
    f = idx - lo
    return lut[lo] * (1 - f) + lut[hi] * f


def curve(img, rng, ref, fg):
    """One smooth tone curve for all channels (the Photoshop 'Curves' adjustment)."""
    return _apply_lut(np.clip(img, 0, 1), _smooth_curve(rng))


def lut(img, rng, ref, fg):
    """LUT-like map as in HYouTube: per-channel tone curves after a near-identity channel mix."""
    mix = np.eye(3, dtype=np.float32) + rng.uniform(-0.15, 0.15, (3, 3)).astype(np.float32)
    mix /= mix.sum(1, keepdims=True)
    out = np.clip(img @ mix.T, 0, 1)
    return np.stack([_apply_lut(out[..., c], _smooth_curve(rng, spread=0.15)) for c in range(3)], axis=-1)


def matrix(img, rng, ref, fg):
    """A random colour matrix near the identity plus offsets: the cross-channel casts of a different camera,
    display or grade, which no per-channel family makes."""
    mix = np.eye(3, dtype=np.float32) + rng.uniform(-0.2, 0.2, (3, 3)).astype(np.float32)
    return img @ mix.T + rng.uniform(-0.08, 0.08, 3).astype(np.float32)


def transfer(img, rng, ref, fg):
    """Mean/std colour transfer in RGB toward another foreground's (Reinhard's rule without the Lab space)."""
    if ref is None or len(ref) < 16:
        ref = rng.uniform(0, 1, size=(64, 3)).astype(np.float32)
    t = rng.uniform(0.4, 1.0)
    scale = 1 + t * ((ref.std(0) + 1e-3) / (fg.std(0) + 1e-3) - 1)
    return (img - fg.mean(0)) * scale + fg.mean(0) + t * (ref.mean(0) - fg.mean(0))


def split_tone(img, rng, ref, fg):
    """Shadows and highlights tinted apart (a colourist's split toning), with a tone-curve contrast change."""
    luma = np.clip(img @ np.float32([0.299, 0.587, 0.114]), 0, 1)[..., None]
    shadows, highlights = rng.uniform(-0.12, 0.12, (2, 3)).astype(np.float32)
    return _apply_lut(np.clip(img, 0, 1), _smooth_curve(rng, spread=0.12)) + (1 - luma) * shadows + luma * highlights


FAMILIES = {f.__name__: f for f in (reinhard, exposure, gamma, hue, saturation, temperature, contrast, curve, lut,
                                    matrix, transfer, split_tone)}
# The families the test sets were built with (`vharm make-testset`): a family added to FAMILIES later must not
# change a test set built from the same seed.
TEST_FAMILIES = ("reinhard", "exposure", "gamma", "hue", "saturation", "temperature", "contrast", "curve", "lut")


def random_recolor(img: np.ndarray, rng: np.random.Generator, families: tuple[str, ...], fg: np.ndarray,
                   ref: np.ndarray | None = None, mild_prob: float = 0.15) -> tuple[np.ndarray, str]:
    """Applies one or two random adjustments; with `mild_prob` the change is scaled toward none.

    Mild (nearly harmonious) composites teach G to leave a foreground that already fits mostly alone.

    Returns:
        (recoloured image in [0, 1], a name like "exposure+hue").
    """
    unknown = [f for f in families if f not in FAMILIES]
    if unknown or not families:
        raise ValueError(f"unknown recolouring families {unknown}: choose from {', '.join(FAMILIES)}")
    names = list(rng.choice(list(families), size=1 + int(rng.random() < 0.35), replace=len(families) < 2))
    out = img
    for name in names:
        out = FAMILIES[name](out, rng, ref, fg)
    strength = rng.uniform(0.0, 0.3) if rng.random() < mild_prob else rng.uniform(0.5, 1.0)
    out = img + strength * (np.clip(out, 0, 1) - img)
    return np.clip(out, 0, 1).astype(np.float32), "+".join(names)
