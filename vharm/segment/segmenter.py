"""`Segmenter`: the automatic foreground mask of `vharm segment`, `--mask auto` and `vharm composite` without
`--fg-mask`.

Per frame, at a working size of about `WORK_SIDE` px on the long side: the network on the whole frame; again on a
crop around the subject being followed (on a first frame: around everyone found), so that a small person is seen at
the network's full 256 px rather than squeezed with the whole frame; the previous frame's mask blended in along the
optical flow (`FlowStabiliser`); the main subject kept among the people found (`select_subject`: whoever overlaps
the previous frame's subject, or the largest, and everyone about as tall); and the edges taken from the
full-resolution frame by a fast guided filter. The state between frames is explicit, as in `Harmonizer.step`:
`mask, state = seg.step(frame, state)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from vharm.segment.filters import FlowStabiliser, guided_upsample
from vharm.segment.model import PersonModel
from vharm.segment.subject import keep_subject, select_subject

# The version of what `Segmenter()` outputs: bump it whenever the masks change (model, stages, constants), so that
# masks and scores cached from an older one (`vharm.data.automask`, `vharm evaluate`'s cache) are made again.
# 1: the selfie model with crop pass, flow stabilisation and guided filter; 2: + main-subject selection.
VERSION = 2

# The working size (flow, crop boxes, guided-filter coefficients): the frame shrunk by the smallest whole factor that
# brings its long side to at most this many px. A whole factor keeps OpenCV's area resampling on its fast path
# (1080p -> 480x270: 1.9 ms; -> 512x288: 4.9 ms on one core).
WORK_SIDE = 512
CROP_MARGIN = 0.25  # the crop adds this fraction of the found region's size on each side
CROP_MAX_AREA = 0.8  # no crop pass when the crop would cover more than this fraction of the frame (no gain)
# The guided filter at the working size: a 5x5 window; edges of contrast above ~0.1 (0-1 gray) are kept. On the
# tuning clips radius 2 / 4 / 8 px scored IoU 0.779 / 0.774 / 0.748 (eps 1e-2; eps 1e-4..1e-2 changed IoU by 0.001)
# and 1e-2 flickered least.
GUIDE_RADIUS = 2
GUIDE_EPS = 1e-2


@dataclass
class SegmentState:
    """What `Segmenter.step` carries from one frame to the next of the same video."""

    gray: np.ndarray  # uint8 (h, w): the frame at the working size
    prob: np.ndarray  # float32 (h, w): its stabilised mask before edge refinement
    scene_cut: bool = False  # the stabiliser found this frame unrelated to the previous one (a cut in the video)


class Segmenter:
    """Person masks for images and videos, from the shipped model (`PersonModel`); every stage can be switched off.

    The network marks every person it sees; `subject` keeps the main one or ones (`select_subject`), `subject=False`
    every person (`--all-people`). On a composite either may be a person of the background, not the pasted one.

    Args:
        subject: keep only the main subject (`select_subject`): whoever overlaps the previous frame's subject, or
            the largest person, and everyone about as tall; False: every person.
        crop: a second pass of the network on a crop around the people found (small people, crowds).
        stabilise: blend in the flow-warped previous mask (videos; `FlowStabiliser`).
        refine: snap the mask's edges to the full-resolution frame (fast guided filter).
        model: a .tflite file (default: the shipped MediaPipe selfie segmentation).
        threads: the network's CPU threads.

    Example:
        >>> seg = Segmenter()
        >>> frame = np.full((120, 160, 3), 128, np.uint8)
        >>> mask = seg(frame)                             # a still; for video: mask, state = seg.step(frame, state)
        >>> mask.shape, mask.dtype.name, bool(0 <= mask.min() <= mask.max() <= 1)
        ((120, 160), 'float32', True)
    """

    def __init__(self, crop: bool = True, stabilise: bool = True, refine: bool = True,
                 model: str | Path | None = None, threads: int = 1, subject: bool = True):
        self.model = PersonModel(model, threads)
        self.crop, self.refine, self.subject = crop, refine, subject
        self.stabiliser = FlowStabiliser() if stabilise else None

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) RGB -> float32 (H, W) mask in [0, 1] (1: person), for a still image."""
        return self.step(rgb)[0]

    def step(self, rgb: np.ndarray, state: SegmentState | None = None) -> tuple[np.ndarray, SegmentState]:
        """One frame of a video: (mask float32 (H, W) in [0, 1], state for the next frame). `state` None: the
        first frame, or an unrelated one."""
        if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            what = f"{rgb.dtype} {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
            raise ValueError(f"frame must be a uint8 (H, W, 3) RGB array, got {what}")
        h, w = rgb.shape[:2]
        scale = 1 / -(-max(h, w) // WORK_SIDE)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA) if scale < 1 else rgb
        prob = cv2.resize(self.model(small), size, interpolation=cv2.INTER_LINEAR)
        related = state is not None and state.prob.shape == prob.shape
        previous = state.prob >= 0.5 if related else None  # the previous frame's subject
        if self.crop:
            # Around the subject being followed (where it was and where it is now), else around everyone found.
            if self.subject and previous is not None and previous.any():
                around = select_subject(prob, previous) | previous
            else:
                around = prob > 0.5
            prob = self._crop_pass(rgb, prob, scale, around)
        gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
        cut = False
        if self.stabiliser is not None and related:
            prob, cut = self.stabiliser.blend(prob, gray, state.prob, state.gray)
        if self.subject:
            prob = keep_subject(prob, select_subject(prob, None if cut else previous))
        if self.refine:
            mask = guided_upsample(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), gray, prob, GUIDE_RADIUS, GUIDE_EPS)
        else:
            mask = cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR) if scale < 1 else prob.copy()
        return mask, SegmentState(gray, prob, cut)

    def _crop_pass(self, rgb: np.ndarray, prob: np.ndarray, scale: float, around: np.ndarray) -> np.ndarray:
        """`prob` (working size) with the network's answer on a square crop of the full-resolution frame around
        `around` (bool, working size), pasted in; unchanged when that is empty or the crop would be most of the
        frame."""
        ys, xs = np.nonzero(around)
        if xs.size == 0:
            return prob
        h, w = prob.shape
        cx, cy = (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2
        side = max(xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()) * (1 + 2 * CROP_MARGIN)
        cw, ch = min(side, w), min(side, h)
        if cw * ch > CROP_MAX_AREA * w * h:
            return prob
        x0 = int(np.clip(round(cx - cw / 2), 0, w - cw))  # shifted inside the frame, never shrunk
        y0 = int(np.clip(round(cy - ch / 2), 0, h - ch))
        x1, y1 = x0 + int(round(cw)), y0 + int(round(ch))
        full = rgb[int(y0 / scale):int(np.ceil(y1 / scale)), int(x0 / scale):int(np.ceil(x1 / scale))]
        out = prob.copy()
        out[y0:y1, x0:x1] = cv2.resize(self.model(full), (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
        return out
