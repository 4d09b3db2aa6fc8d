"""The report's pictures: the shown frame of each clip, its error heat map, written as small JPEGs that
report.html (vharm.eval.report) refers to."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from vharm.errors import VharmError
from vharm.eval.clips import Clip
from vharm.io.files import atomic_path

THUMB_WIDTH = 320
HEAT_MAX = 40.0  # |error| (0-255, mean over channels) shown at full heat; the same scale for every method


def _thumb(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    if w <= THUMB_WIDTH:
        return rgb
    return cv2.resize(rgb, (THUMB_WIDTH, round(h * THUMB_WIDTH / w)), interpolation=cv2.INTER_AREA)


def heat_map(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """|pred - ref| (mean over channels, 0-255) as an RGB inferno map, HEAT_MAX and above at full heat.

    Example:
        >>> ref = np.zeros((1, 2, 3), np.uint8)
        >>> heat_map(np.uint8([[[0, 0, 0], [40, 40, 40]]]), ref).tolist()  # no error: black; 40 levels: yellow
        [[[0, 0, 4], [252, 255, 164]]]
    """
    err = np.abs(pred.astype(np.float32) - ref.astype(np.float32)).mean(2)
    level = np.round(np.clip(err / HEAT_MAX, 0, 1) * 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(level, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)


def write_jpeg(path: Path, rgb: np.ndarray) -> None:
    """A report picture, written atomically (a half-written file would survive into a resumed report)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(_thumb(rgb), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 88]):
            raise VharmError(f"{path}: could not write image")


def show_frame(clip: Clip) -> int:
    """The frame the report pictures: the middle one (the second of a pair)."""
    return len(clip.comp) // 2
