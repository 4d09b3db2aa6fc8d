"""Per-pixel 3x4 affine colour transforms: the one definition, applied to tensors (differentiable, training) and
to full-resolution uint8 frames (inference); fit, identity. The currency between the network (at its working
resolution) and the full-resolution frame.

A transform is a (B, 12, h, w) tensor: row-major 3x4 matrices, out_c = sum_k A[c, k] * rgb_k + A[c, 3], on
colours in [0, 1]. Being smooth in space, it can be predicted at 128^2 and bilinearly upsampled to 4K
without blurring the image it is applied to.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch.nn import functional as F

from vharm.io.masks import MASK_EPS

IDENTITY = (1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _check_image(name: str, x: torch.Tensor, channels: int) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != channels:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a (B, {channels}, H, W) tensor, got {shape}")


def identity(batch: int, height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """The transform that leaves every colour unchanged, (B, 12, H, W)."""
    eye = torch.tensor(IDENTITY, device=device, dtype=dtype).view(1, 12, 1, 1)
    return eye.expand(batch, 12, height, width).contiguous()


def apply_affine(image: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Applies per-pixel 3x4 affine colour transforms.

    Args:
        image: (B, 3, H, W) colours in [0, 1].
        coeffs: (B, 12, H, W) or (B, 12, h, w); a coarser grid is bilinearly upsampled to H x W.

    Returns:
        (B, 3, H, W), not clamped (callers clamp once at the end).

    Example:
        >>> img = torch.rand(1, 3, 8, 8)
        >>> torch.allclose(apply_affine(img, identity(1, 2, 2)), img)
        True
    """
    _check_image("image", image, 3)
    _check_image("coeffs", coeffs, 12)
    if coeffs.shape[-2:] != image.shape[-2:]:
        coeffs = F.interpolate(coeffs, size=image.shape[-2:], mode="bilinear", align_corners=False)
    a = coeffs.view(coeffs.shape[0], 3, 4, *coeffs.shape[-2:])
    return (a[:, :, :3] * image.unsqueeze(1)).sum(2) + a[:, :, 3]



def compose(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """The 3x4 transform (B, 12, h, w) that applies `inner` and then `outer` (both (B, 12, h, w), the same grid):
    x -> A_o (A_i x + b_i) + b_o, without the clamp to [0, 1] between them.

    Example:
        >>> a, b = torch.rand(1, 12, 2, 2), torch.rand(1, 12, 2, 2)
        >>> img = torch.rand(1, 3, 2, 2)
        >>> torch.allclose(apply_affine(img, compose(a, b)), apply_affine(apply_affine(img, b), a), atol=1e-6)
        True
    """
    _check_image("outer", outer, 12)
    _check_image("inner", inner, 12)
    if outer.shape != inner.shape:
        raise ValueError(f"compose: outer {tuple(outer.shape)} and inner {tuple(inner.shape)} differ")
    b, _, h, w = inner.shape
    o, i = outer.view(b, 3, 4, h, w), inner.view(b, 3, 4, h, w)
    matrix = torch.einsum("bijhw,bjkhw->bikhw", o[:, :, :3], i[:, :, :3])
    offset = torch.einsum("bijhw,bjhw->bihw", o[:, :, :3], i[:, :, 3]) + o[:, :, 3]
    return torch.cat([matrix, offset[:, :, None]], 2).reshape(b, 12, h, w)

def bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1) of the pixels of an (H, W) mask above MASK_EPS, or None for an empty mask.

    Example:
        >>> m = np.zeros((4, 5), np.float32); m[1:3, 2] = 1
        >>> bbox(m)
        (1, 3, 2, 3)
    """
    rows = np.flatnonzero(mask.max(axis=1) > MASK_EPS)
    if len(rows) == 0:
        return None
    cols = np.flatnonzero(mask.max(axis=0) > MASK_EPS)
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def sample(coeffs: torch.Tensor, size: tuple[int, int], box: tuple[int, int, int, int]) -> torch.Tensor:
    """A (1, 12, gh, gw) transform grid resampled bilinearly at the pixel centres of `box` = (y0, y1, x0, x1) of an
    (H, W) = `size` frame: (1, 12, y1 - y0, x1 - x0)."""
    h, w = size
    y0, y1, x0, x1 = box
    ys = (torch.arange(y0, y1, device=coeffs.device, dtype=coeffs.dtype) + 0.5) / h * 2 - 1
    xs = (torch.arange(x0, x1, device=coeffs.device, dtype=coeffs.dtype) + 0.5) / w * 2 - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.stack([gx, gy], dim=-1).unsqueeze(0)
    return F.grid_sample(coeffs, grid, mode="bilinear", padding_mode="border", align_corners=False)


def apply_to_frame(rgb: np.ndarray, coeffs: torch.Tensor, mask: np.ndarray) -> np.ndarray:
    """Applies a (1, 12, gh, gw) transform to a uint8 (H, W, 3) frame inside its float32 (H, W) mask and blends:
    pred = mask * T(rgb) + (1 - mask) * rgb, uint8; pixels outside the mask's box are the input's exactly.

    Only the mask's bounding box is touched, so a small foreground in 4K costs what its box costs. One matrix
    (gh = gw = 1) goes through OpenCV's fused uint8 transform, the same affine with the offset in 0-255 units;
    a grid is resampled per pixel (`sample`) and applied by `apply_affine`.

    Example:
        >>> rgb = np.full((2, 2, 3), 100, np.uint8); mask = np.float32([[1, 0], [0, 0]])
        >>> brighter = identity(1, 1, 1); brighter[:, 3::4] = 0.2  # +0.2 on every channel = +51 levels
        >>> apply_to_frame(rgb, brighter, mask)[..., 0].tolist()
        [[151, 100], [100, 100]]
    """
    pred = rgb.copy()
    box = bbox(mask)
    if box is None:
        return pred
    y0, y1, x0, x1 = box
    crop, m = rgb[y0:y1, x0:x1], np.ascontiguousarray(mask[y0:y1, x0:x1], dtype=np.float32)
    if coeffs.shape[-2:] == (1, 1):
        mat = coeffs.reshape(3, 4).cpu().double().numpy()
        mat[:, 3] *= 255
        changed = cv2.transform(crop, mat)
    else:
        local = sample(coeffs, rgb.shape[:2], box)
        x = torch.from_numpy(np.ascontiguousarray(crop)).to(local).permute(2, 0, 1).unsqueeze(0) / 255
        out = apply_affine(x, local)[0].permute(1, 2, 0)
        changed = (out * 255 + 0.5).clamp(0, 255).to(torch.uint8).cpu().numpy()  # +0.5 then truncation: rounds
    pred[y0:y1, x0:x1] = cv2.blendLinear(changed, crop, m, 1 - m)
    return pred


def pool_masked(coeffs: torch.Tensor, mask: torch.Tensor, grid: int) -> torch.Tensor:
    """Mask-weighted average of per-pixel transforms in grid x grid cells -> (B, 12, grid, grid).

    grid = 1 gives one transform for the whole foreground. Background pixels get a tiny weight so that
    cells without foreground still hold a defined (and harmless: it is blended out) transform.
    """
    w = mask + 1e-4
    return F.adaptive_avg_pool2d(coeffs * w, grid) / F.adaptive_avg_pool2d(w, grid)


def _box(x: torch.Tensor, r: int) -> torch.Tensor:
    return F.avg_pool2d(x, 2 * r + 1, stride=1, padding=r, count_include_pad=False)


def fit_local_affine(src: torch.Tensor, dst: torch.Tensor, radius: int = 4, eps: float = 1e-3) -> torch.Tensor:
    """Fits, around every pixel, the 3x4 affine that maps `src` colours to `dst` colours (a colour guided filter).

    This is how the `rgb` head's low-resolution change is carried to full resolution: the change is
    expressed as a smooth colour transform of the composite, then upsampled and applied, so that edges
    come from the full-resolution frame instead of a blurry upscaled prediction.

    Args:
        src: (B, 3, H, W) input colours in [0, 1].
        dst: (B, 3, H, W) desired colours in [0, 1].
        radius: half-size of the square window, in pixels.
        eps: ridge regulariser (in [0, 1]^2 units) pulling the 3x3 part toward the identity: where the window
            is flat, the fit keeps the full-resolution detail and only shifts the colours.

    Returns:
        (B, 12, H, W) coefficients, smoothed once more by the same box filter.
    """
    _check_image("src", src, 3)
    _check_image("dst", dst, 3)
    b, _, h, w = src.shape
    mean_s = _box(src, radius)
    mean_d = _box(dst, radius)
    # Covariances per pixel: cov_ss (3x3), cov_sd (3 src x 3 dst).
    prod_ss = (src.unsqueeze(2) * src.unsqueeze(1)).reshape(b, 9, h, w)
    prod_sd = (src.unsqueeze(2) * dst.unsqueeze(1)).reshape(b, 9, h, w)
    cov_ss = (_box(prod_ss, radius).view(b, 3, 3, h, w) - mean_s.unsqueeze(2) * mean_s.unsqueeze(1))
    cov_sd = (_box(prod_sd, radius).view(b, 3, 3, h, w) - mean_s.unsqueeze(2) * mean_d.unsqueeze(1))
    eye = torch.eye(3, device=src.device, dtype=src.dtype).view(1, 3, 3, 1, 1)
    cov_ss = (cov_ss + eps * eye).permute(0, 3, 4, 1, 2)  # (B, H, W, 3, 3)
    cov_sd = (cov_sd + eps * eye).permute(0, 3, 4, 1, 2)  # (B, H, W, 3 src, 3 dst)
    a = torch.linalg.solve(cov_ss, cov_sd).transpose(-1, -2)  # (B, H, W, 3 dst, 3 src)
    offset = mean_d.permute(0, 2, 3, 1) - (a @ mean_s.permute(0, 2, 3, 1).unsqueeze(-1)).squeeze(-1)
    coeffs = torch.cat([a, offset.unsqueeze(-1)], dim=-1).reshape(b, h, w, 12).permute(0, 3, 1, 2)
    return _box(coeffs.contiguous(), radius)
