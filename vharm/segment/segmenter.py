"""`Segmenter`: the automatic foreground mask of `vharm segment`, `--mask auto` and `vharm composite` without
`--fg-mask`.

Per frame, at a working size of about `WORK_SIDE` px on the long side: the network on the whole frame; again on a
crop around the subject being followed (on a first frame: around everyone found), so that a small person is seen at
the network's full 256 px rather than squeezed with the whole frame; the previous frame's mask blended in along the
optical flow (`FlowStabiliser`); the main subject kept among the people found (`select_subject`: whoever overlaps
the previous frame's subject, or the largest, and everyone about as tall); and the edges taken from the
full-resolution frame by a fast guided filter. With `model="pose"` the crop pass is MediaPipe's pose network
instead, on one square crop per person turned so that the person stands upright in it. The state between frames
is explicit, as in `Harmonizer.step`: `mask, state = seg.step(frame, state)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from vharm.segment.filters import FlowStabiliser, guided_upsample
from vharm.segment.model import PersonModel, PoseModel
from vharm.segment.subject import SCALE_SHARE, keep_subject, select_subject

# The version of what `Segmenter()` outputs: bump it whenever the masks change (model, stages, constants), so that
# masks and scores cached from an older one (`vharm.data.automask`, `vharm evaluate`'s cache) are made again.
# 1: the selfie model with crop pass, flow stabilisation and guided filter; 2: + main-subject selection; 3: the
# main subject's mask zeroed far from it even when no region was dropped (faint marks of nobody); 4: model="pose"
# looks at each crop mirrored too.
VERSION = 4

# The working size (flow, crop boxes, guided-filter coefficients): the frame shrunk by the smallest whole factor that
# brings its long side to at most this many px. A whole factor keeps OpenCV's area resampling on its fast path
# (1080p -> 480x270: 1.9 ms; -> 512x288: 4.9 ms on one core).
WORK_SIDE = 512
CROP_MARGIN = 0.25  # the crop adds this fraction of the found region's size on each side
_KERNEL3 = np.ones((3, 3), np.uint8)
# The models `Segmenter(model=...)` knows by name (else a .tflite path for `PersonModel`).
MODELS = ("selfie", "pose", "pose+selfie")
POSE_MAX_PEOPLE = 4  # model="pose": at most this many people get a crop of their own (the largest first)
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
    # model="pose": for each person cropped, (centre, up): the crop's centre (working px) and the person's up
    # direction (frame px, unit vector) from the pose keypoints, so that the next crop is turned upright
    up: list | None = None


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
        model: "selfie" (default: the shipped MediaPipe selfie segmentation), "pose" (the crop pass by MediaPipe's
            pose-landmark network, one crop per person, turned upright, and mirrored: whole bodies in wide shots,
            about 2.7x the time), "pose+selfie" (both crop passes, combined by max: groups too), or a .tflite file for
            `PersonModel`. docs/segment.md compares them.
        threads: the network's CPU threads.
        pose_file: with "pose" or "pose+selfie", another MediaPipe pose-landmark .tflite than the shipped full one:
            `pose_landmark_heavy.tflite` (27.7 MB, Apache-2.0, in the npm package `@mediapipe/pose`; too large to
            ship) gives whole bodies better at about 2x the full model's time (docs/segment.md, "The heavy pose
            model").

    Example:
        >>> seg = Segmenter()
        >>> frame = np.full((120, 160, 3), 128, np.uint8)
        >>> mask = seg(frame)                             # a still; for video: mask, state = seg.step(frame, state)
        >>> mask.shape, mask.dtype.name, bool(0 <= mask.min() <= mask.max() <= 1)
        ((120, 160), 'float32', True)
    """

    def __init__(self, crop: bool = True, stabilise: bool = True, refine: bool = True,
                 model: str | Path | None = None, threads: int = 1, subject: bool = True,
                 pose_file: str | Path | None = None):
        if model is not None and str(model) not in MODELS and not Path(model).is_file():
            raise ValueError(f"model must be one of {', '.join(MODELS)} or a .tflite file, got {model!r}")
        self.kind = str(model) if model is not None and str(model) in MODELS else "selfie"
        if pose_file is not None and self.kind == "selfie":
            raise ValueError(f"pose_file is for model='pose' or 'pose+selfie', not {self.kind!r}")
        self.model = PersonModel(None if model is None or str(model) in MODELS else model, threads)
        # "pose": each person of the crop pass (a region of the subject) on a crop of its own through the pose
        # network, and whoever the selfie pass found in a crop but the pose network left out gets another crop;
        # "pose+selfie": the same crops without that, their masks and the selfie crop pass's combined by max.
        # "pose" also looks at each crop mirrored (`PoseModel(mirror=True)`): schoolgirls 0.613 -> 0.679 IoU, the 8
        # DAVIS person clips 0.835 -> 0.840; "pose+selfie" does not (0.729 -> 0.724, 0.805 -> 0.801: its selfie
        # crop pass already finds the people the pose network leaves out).
        self.pose = PoseModel(pose_file, threads=threads, mirror=self.kind == "pose") if self.kind != "selfie" else None
        self.crop, self.refine, self.subject = crop, refine, subject
        self.stabiliser = FlowStabiliser() if stabilise else None

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) RGB -> float32 (H, W) mask in [0, 1] (1: person), for a still image."""
        return self.step(rgb)[0]

    def step(self, rgb: np.ndarray, state: SegmentState | None = None) -> tuple[np.ndarray, SegmentState]:
        """One frame of a video: (mask float32 (H, W) in [0, 1], state for the next frame). `state` None: the
        first frame, or an unrelated one. The same as `upsample(rgb, locate(rgb, state))`, in two calls that a video
        pipeline may run in two threads (`vharm.io.masks.MaskSource`)."""
        state = self.locate(rgb, state)
        return self.upsample(rgb, state), state

    def locate(self, rgb: np.ndarray, state: SegmentState | None = None) -> SegmentState:
        """The subject at the working size: every stage but the full-resolution mask, which `upsample` makes from the
        state returned (its `prob` and `gray`). Only this part carries over from frame to frame."""
        if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            what = f"{rgb.dtype} {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
            raise ValueError(f"frame must be a uint8 (H, W, 3) RGB array, got {what}")
        h, w = rgb.shape[:2]
        scale = 1 / -(-max(h, w) // WORK_SIDE)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA) if scale < 1 else rgb
        prob = cv2.resize(self.model(small), size, interpolation=cv2.INTER_LINEAR)
        related = state is not None and state.prob.shape == prob.shape
        up = None
        previous = state.prob >= 0.5 if related else None  # the previous frame's subject
        if self.crop:
            # Around the subject being followed (where it was and where it is now), else around everyone found.
            if self.subject and previous is not None and previous.any():
                around = select_subject(prob, previous) | previous
            else:
                around = prob > 0.5
            if self.pose is not None:
                first = prob
                prob, up = self._pose_pass(rgb, prob, scale, around, state.up if related else None,
                                           peel=self.kind == "pose")
                if self.kind == "pose+selfie":
                    prob = np.maximum(prob, self._crop_pass(rgb, first, scale, around))
            else:
                prob = self._crop_pass(rgb, prob, scale, around)
        gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
        cut = False
        if self.stabiliser is not None and related:
            prob, cut = self.stabiliser.blend(prob, gray, state.prob, state.gray)
        if self.subject:
            prob = keep_subject(prob, select_subject(prob, None if cut else previous))
        return SegmentState(gray, prob, cut, up)

    def upsample(self, rgb: np.ndarray, state: SegmentState) -> np.ndarray:
        """The float32 (H, W) mask of `rgb` from what `locate` found in it (`state`): its edges snapped to the frame by
        the guided filter (`refine`), else the working-size mask resized. About a fifth of `step`'s time at 1080p."""
        h, w = rgb.shape[:2]
        if self.refine:
            return guided_upsample(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), state.gray, state.prob, GUIDE_RADIUS,
                                   GUIDE_EPS)
        if state.prob.shape == (h, w):
            return state.prob.copy()
        return cv2.resize(state.prob, (w, h), interpolation=cv2.INTER_LINEAR)

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

    def _pose_pass(self, rgb: np.ndarray, prob: np.ndarray, scale: float, around: np.ndarray, previous: list | None,
                   peel: bool = True) -> tuple[np.ndarray, list]:
        """model="pose": the pose network on a square crop around each person of `around` (bool, working size:
        its regions at least `SCALE_SHARE` as tall as the tallest, at most `POSE_MAX_PEOPLE`), each turned upright
        by the up direction found in the previous frame (`previous`: SegmentState.up), its mask pasted into `prob`
        (working size), the people's masks combined by max. Returns (prob, the (centre, up) of each crop)."""
        n, labels, stats, _ = cv2.connectedComponentsWithStats(around.astype(np.uint8), connectivity=8)
        if n <= 1:
            return prob, []
        heights, areas = stats[1:, cv2.CC_STAT_HEIGHT], stats[1:, cv2.CC_STAT_AREA]
        people = [i for i in np.argsort(-areas) if heights[i] >= SCALE_SHARE * heights.max()][:POSE_MAX_PEOPLE]
        h, w = prob.shape
        queue = [stats[i + 1, :4] for i in people]
        pasted, valid, found, tall = np.zeros_like(prob), np.zeros_like(prob), [], heights.max()
        peeled = np.zeros(prob.shape, bool)  # leftovers already given a crop: never queued again (a crop that
        # found no one there would find no one again, and took the slots of other people: 1080p 86 -> 58 ms)
        while queue and len(found) < POSE_MAX_PEOPLE:
            x, y, bw, bh = queue.pop(0)
            centre = np.array([x + bw / 2, y + bh / 2])
            side = max(bw, bh) * (1 + 2 * CROP_MARGIN)
            up = None
            for c, u in previous or []:  # this person's up in the previous frame: the crop centred nearest
                if np.abs(c - centre).max() < side / 2 and (up is None or np.abs(c - centre).max() < up[0]):
                    up = (np.abs(c - centre).max(), u)
            up = up[1] if up is not None else np.array([0.0, -1.0])
            presence, person, lin, keypoints = self._pose_crop(rgb, centre / scale, side / scale, up)
            if presence < 0.5 and previous is None:  # a first frame, unsure: maybe the person is on its side
                for turned in (np.array([up[1], -up[0]]), -up, np.array([-up[1], up[0]])):  # 90, 180, 270 degrees
                    out = self._pose_crop(rgb, centre / scale, side / scale, turned)
                    if out[0] > presence:
                        presence, person, lin, keypoints = out
            # the 256x256 model input -> working px
            m = np.hstack([lin * scale, (centre - lin @ np.array([128.0, 128.0]) * scale)[:, None]])
            np.maximum(pasted, cv2.warpAffine(person, m, (w, h), flags=cv2.INTER_LINEAR), out=pasted)
            np.maximum(valid, cv2.warpAffine(np.ones((256, 256), np.float32), m, (w, h), flags=cv2.INTER_LINEAR),
                       out=valid)
            d = lin @ (keypoints[1] - keypoints[0])  # hips' centre -> above the head, in frame px
            norm = float(np.hypot(*d))
            found.append((centre, d / norm if presence >= 0.5 and norm > 1e-6 else np.array([0.0, -1.0])))
            if peel:
                # Someone else in the crop: what the selfie pass found there that no crop's person covers, as tall
                # as a person, gets a crop of its own (the pose network segments one person per crop).
                rest = (prob >= 0.5) & (pasted < 0.5) & (valid > 0.5) & ~peeled
                rest = cv2.erode(rest.astype(np.uint8), _KERNEL3)
                rn, rlabels, rstats, _ = cv2.connectedComponentsWithStats(rest, connectivity=8)
                tall_enough = [j for j in range(1, rn) if rstats[j, cv2.CC_STAT_HEIGHT] >= SCALE_SHARE * tall]
                queue += [rstats[j, :4] for j in tall_enough]
                peeled |= np.isin(rlabels, tall_enough)
        return valid * pasted + (1 - valid) * prob, found

    def _pose_crop(self, rgb: np.ndarray, centre: np.ndarray, side: float, up: np.ndarray):
        """The pose network on the square of `side` px (full resolution) centred at `centre`, turned so that `up`
        (a unit vector in frame px) points up in it. Returns (presence, the person's probability (256, 256), the 2x2
        map from model px to frame px, keypoints (hips' centre, above the head) in model px)."""
        ydir = -np.asarray(up, np.float64)  # where the model's y axis (down) lies in the frame
        lin = np.stack([np.array([ydir[1], -ydir[0]]), ydir], axis=1) * (side / 256)  # columns: model x, y
        src, origin, k = rgb, np.zeros(2), int(side / 256)
        if k >= 2:  # shrink the region by a whole factor first (area resampling) so that the warp does not alias
            half = side * 0.75  # the turned square's half-diagonal, and a little
            x0, y0 = max(0, int(centre[0] - half)), max(0, int(centre[1] - half))
            x1 = min(rgb.shape[1], int(np.ceil(centre[0] + half)))
            y1 = min(rgb.shape[0], int(np.ceil(centre[1] + half)))
            if x1 - x0 >= 2 * k and y1 - y0 >= 2 * k:
                x1, y1 = x0 + (x1 - x0) // k * k, y0 + (y1 - y0) // k * k
                src = cv2.resize(rgb[y0:y1, x0:x1], ((x1 - x0) // k, (y1 - y0) // k), interpolation=cv2.INTER_AREA)
                origin = np.array([x0, y0], np.float64)
            else:
                k = 1
        else:
            k = 1
        to_src = np.hstack([lin / k, ((centre - origin - lin @ np.array([128.0, 128.0])) / k)[:, None]])
        crop = cv2.warpAffine(src, to_src, self.pose.size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        person = self.pose(crop)
        return self.pose.presence, person, lin, self.pose.keypoints.astype(np.float64)
