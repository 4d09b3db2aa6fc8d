"""Reading still images the way users have them: any bit depth, grayscale, palette, RGBA, CMYK (masks: `masks`).

Frames are uint8 RGB (H, W, 3) arrays; masks are float32 (H, W) in [0, 1].
"""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from vharm.errors import VharmError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# Largest frame we accept: 8K UHD (7680x4320 = 33 MP) with headroom. Above it a 3-channel float frame alone
# needs > 0.5 GB; refuse instead of running out of memory.
MAX_PIXELS = 40_000_000


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = None  # we apply our own, documented limit below
            with Image.open(path) as im:
                return im.size
    except FileNotFoundError:
        raise VharmError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError) as e:
        raise VharmError(f"{path}: not a readable image ({e.__class__.__name__})") from None


def decode(path: Path) -> np.ndarray:
    """Decoded array as stored (uint8/uint16/float, 1-4 channels, RGB order)."""
    w, h = image_size(path)
    if w * h > MAX_PIXELS:
        raise VharmError(f"{path}: {w}x{h} is above vharm's limit of {MAX_PIXELS // 1_000_000} megapixels; "
                         "downscale it first")
    if w < 1 or h < 1:
        raise VharmError(f"{path}: empty image ({w}x{h})")
    if path.suffix.lower() in (".jpg", ".jpeg"):
        with open(path, "rb") as f:  # libjpeg fills a cut-off JPEG with grey and only prints a warning
            f.seek(max(path.stat().st_size - 64, 0))
            if b"\xff\xd9" not in f.read():
                raise VharmError(f"{path}: truncated JPEG (no end-of-image marker)")
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.ndim == 3 and arr.shape[2] not in (1, 3, 4):
        try:  # formats/modes OpenCV cannot read (e.g. some palettes, CMYK TIFF)
            with Image.open(path) as im:
                im = im.convert("RGBA" if "A" in im.getbands() or "transparency" in im.info else "RGB")
                return np.asarray(im)
        except (OSError, ValueError) as e:
            raise VharmError(f"{path}: not a readable image, truncated or damaged ({e})") from None
    if arr.ndim == 3 and arr.shape[2] == 3:
        return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
    if arr.ndim == 3 and arr.shape[2] == 4:
        return cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA)
    return arr


def to_unit(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535
    return np.clip(arr.astype(np.float32), 0, 1)


def read_image(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Reads a frame as uint8 RGB (H, W, 3) plus its alpha (H, W) float in [0, 1] if it has one."""
    arr = decode(Path(path))
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    alpha = None
    if arr.ndim == 3 and arr.shape[2] == 4:
        alpha = to_unit(arr[..., 3])
        arr = arr[..., :3]
    if arr.dtype != np.uint8:
        arr = np.round(to_unit(arr) * 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return np.ascontiguousarray(arr), alpha




def list_frames(folder: Path) -> list[Path]:
    """Image files of a directory, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("."))
