"""Per-pixel 3x4 affine colour transforms: apply, fit, identity. The currency between the network (at its
working resolution) and the full-resolution frame.

A transform is a (B, 12, h, w) tensor: row-major 3x4 matrices, out_c = sum_k A[c, k] * rgb_k + A[c, 3], on
colours in [0, 1]. Being smooth in space, it can be predicted at 256^2 and bilinearly upsampled to 4K
without blurring the image it is applied to.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

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
