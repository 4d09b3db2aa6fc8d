"""The main subject among the people the network finds: it marks every person in the frame (the dancer and the
audience behind him, a passer-by far off), and a user who wants "the person" wants the one the video is about.

The mask's connected regions (at 0.5) are the candidates. The subject is the regions that overlap the previous
frame's subject (grown by `MOTION` for movement), so that it stays chosen while it moves, turns or shrinks; on the
first frame, or when it is lost, the largest region. Every region about as tall as the subject (`SCALE_SHARE`) is
kept too: the others of a group walking together, or the subject coming back from behind a post, where people far
behind it are much smaller. Regions close to the subject (`NEAR` of its height: a forearm or a foot cut off at a
thin joint) join it. Beyond a few pixels of the subject the mask is zeroed when a region was dropped (the soft rims of
the dropped regions with them), else beyond `NEAR` of its height (faint marks far from anyone).
"""

from __future__ import annotations

import cv2
import numpy as np

# A region at least this share of the subject's height is a subject too: a person at about the subject's distance
# (one of a group, or the subject back from behind a post), where people far behind are much smaller.
SCALE_SHARE = 0.5
# A region is the subject again when this share of it lies on the previous frame's subject (grown by MOTION).
TRACK_SHARE = 0.2
MOTION = 0.03  # how far the subject may move between frames, as a share of the frame's long side (15 px at 512)
NEAR = 0.15  # regions within this share of the subject's height join it
RIM = 4  # px at the working size: the soft edge kept around the subject when others are dropped


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _within(mask: np.ndarray, radius: float) -> np.ndarray:
    """bool: the pixels within `radius` px of `mask`: a dilation by a disk, as a distance transform (~0.7 ms at
    480x270 on one core whatever the radius; a 31-px elliptic dilation ~1 ms, growing with the radius)."""
    return cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 3) <= radius


def select_subject(prob: np.ndarray, previous: np.ndarray | None = None) -> np.ndarray:
    """The regions of `prob` (float32 (h, w) in [0, 1]) that make the main subject, as a bool (h, w) mask.

    Args:
        prob: the person probability at the working size.
        previous: bool (h, w), the previous frame's subject (None: choose afresh).

    Example:
        >>> prob = np.zeros((60, 100), np.float32)
        >>> prob[10:50, 10:30] = 1; prob[40:50, 80:85] = 1        # a person, and someone small far off
        >>> keep = select_subject(prob)
        >>> bool(keep[30, 20]), bool(keep[45, 82])
        (True, False)
    """
    n, labels, stats, _ = cv2.connectedComponentsWithStats((prob >= 0.5).astype(np.uint8), connectivity=8)
    if n <= 2:  # nobody, or one region: nothing to choose
        return labels > 0
    areas = stats[:, cv2.CC_STAT_AREA].astype(np.float64)
    heights = stats[:, cv2.CC_STAT_HEIGHT].astype(np.float64)
    areas[0] = heights[0] = 0
    seeds = np.zeros(n, bool)
    if previous is not None and previous.shape == prob.shape and previous.any():
        grown = _within(previous, MOTION * max(prob.shape))
        seeds = np.bincount(labels[grown], minlength=n) >= TRACK_SHARE * areas
        seeds[0] = False
    # the subject's scale: the tallest region followed, else the largest region's height
    scale = heights[seeds].max() if seeds.any() else heights[np.argmax(areas)]
    seeds |= heights >= SCALE_SHARE * scale
    seeds[0] = False
    chosen = seeds[labels]
    ys = np.nonzero(chosen.any(axis=1))[0]
    near = np.bincount(labels[_within(chosen, NEAR * (ys[-1] + 1 - ys[0]))], minlength=n) > 0
    keep = seeds | near
    keep[0] = False
    return keep[labels]


def keep_subject(prob: np.ndarray, subject: np.ndarray) -> np.ndarray:
    """`prob` zeroed where it cannot be the subject (bool): beyond `RIM` px of it when a region was dropped (its soft
    rim goes with it), else beyond `NEAR` of the subject's height (faint marks far from anyone, such as the sunlit
    rooftops of an aerial street at a third of full strength, go; the person's own soft edges stay); all of it when
    there is no subject.

    Example:
        >>> prob = np.zeros((60, 100), np.float32)
        >>> prob[10:50, 10:30] = 1; prob[10:50, 30:33] = 0.3; prob[5:8, 70:90] = 0.3   # a soft edge, a faint roof
        >>> out = keep_subject(prob, select_subject(prob))
        >>> float(out[20, 31]), float(out[6, 80])
        (0.30000001192092896, 0.0)
    """
    if not subject.any():
        return np.zeros_like(prob)
    if ((prob >= 0.5) & ~subject).any():
        near = cv2.dilate(subject.astype(np.uint8), _disk(RIM)) > 0
    else:
        ys = np.nonzero(subject.any(axis=1))[0]
        near = _within(subject, NEAR * (ys[-1] + 1 - ys[0]))
    return np.where(near, prob, np.float32(0))
