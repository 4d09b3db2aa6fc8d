"""Optical flow: the convention, the warp S of the paper's temporal loss, and DIS estimation for real frames.

Flow convention (used everywhere in vharm): `flow` is (B, 2, H, W) in pixels, stored on frame t and pointing
back into frame t-1: frame_t(x, y) ~ frame_{t-1}(x + flow[0, y, x], y + flow[1, y, x]). With it,
`warp(frame_{t-1}, flow)` predicts frame t (the paper's S(O_{t-1})).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch.nn import functional as F

_DIS = None

def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward-warps `image` (B, C, H, W) by `flow` (B, 2, H, W) in pixels, bilinear, zeros outside.

    Differentiable in `image` and `flow` (a spatial transformer, as the paper's S).

    Example:
        >>> img = torch.arange(16.).view(1, 1, 4, 4)
        >>> flow = torch.zeros(1, 2, 4, 4); flow[:, 0] = -1  # content moved right by 1 pixel
        >>> warp(img, flow)[0, 0, 0].tolist()
        [0.0, 0.0, 1.0, 2.0]
    """
    if image.ndim != 4 or flow.ndim != 4 or flow.shape[1] != 2 or flow.shape[-2:] != image.shape[-2:]:
        raise ValueError(f"warp needs image (B, C, H, W) and flow (B, 2, H, W) of the same size, "
                         f"got {tuple(image.shape)} and {tuple(flow.shape)}")
    b, _, h, w = image.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=image.device, dtype=image.dtype),
                            torch.arange(w, device=image.device, dtype=image.dtype), indexing="ij")
    x = xs + flow[:, 0]
    y = ys + flow[:, 1]
    # grid_sample with align_corners=True maps -1/+1 to the centres of the first/last pixels.
    grid = torch.stack([2 * x / max(w - 1, 1) - 1, 2 * y / max(h - 1, 1) - 1], dim=-1)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def flow_valid(flow: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W): 1 where the flow points inside the previous frame, else 0."""
    _, _, h, w = flow.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=flow.device, dtype=flow.dtype),
                            torch.arange(w, device=flow.device, dtype=flow.dtype), indexing="ij")
    x = xs + flow[:, 0]
    y = ys + flow[:, 1]
    return ((x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)).to(flow.dtype).unsqueeze(1)


def estimate_flow(frame2: np.ndarray, frame1: np.ndarray) -> np.ndarray:
    """Backward flow (2, H, W) from frame 2 into frame 1 with OpenCV DIS (MEDIUM), RGB float or uint8 input."""
    global _DIS
    if _DIS is None:
        _DIS = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)

    def gray(f):
        f = f if f.dtype == np.uint8 else (np.clip(f, 0, 1) * 255).astype(np.uint8)
        return cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)

    return _DIS.calc(gray(frame2), gray(frame1), None).transpose(2, 0, 1).astype(np.float32)
