"""The paper's losses (Huang et al. 2020, Eqs. 1-2) and the flow warp S they need.

Flow convention (used everywhere in vharm): `flow` is (B, 2, H, W) in pixels, stored on frame t and pointing
back into frame t-1: frame_t(x, y) ~ frame_{t-1}(x + flow[0, y, x], y + flow[1, y, x]). With it,
`warp(frame_{t-1}, flow)` predicts frame t (the paper's S(O_{t-1})).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


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


def temporal_loss(pred: torch.Tensor, prev_pred: torch.Tensor, flow: torch.Tensor, mask: torch.Tensor | None,
                  valid: torch.Tensor | None = None) -> torch.Tensor:
    """Regional temporal loss ||M_t o (O_t - S(O_{t-1}))||^2 / N_F (paper Eq. 2), averaged over channels.

    Args:
        pred: O_t, (B, C, H, W).
        prev_pred: O_{t-1}, (B, C, H, W).
        flow: (B, 2, H, W) from frame t back into frame t-1, in pixels.
        mask: M_t (B, 1, H, W) in [0, 1] for the regional loss; None for the global loss (every pixel).
        valid: optional (B, 1, H, W) weight that removes pixels whose flow leaves the frame.

    Returns:
        A scalar: mean over the weighted pixels and channels of the squared difference.
    """
    diff = (pred - warp(prev_pred, flow)) ** 2
    weight = torch.ones_like(pred[:, :1]) if mask is None else mask
    if valid is not None:
        weight = weight * valid
    return (weight * diff).sum() / (weight.sum() * pred.shape[1]).clamp_min(1e-8)


def flow_valid(flow: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W): 1 where the flow points inside the previous frame, else 0."""
    _, _, h, w = flow.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=flow.device, dtype=flow.dtype),
                            torch.arange(w, device=flow.device, dtype=flow.dtype), indexing="ij")
    x = xs + flow[:, 0]
    y = ys + flow[:, 1]
    return ((x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)).to(flow.dtype).unsqueeze(1)


def discriminator_loss(d_pred: torch.Tensor, d_comp: torch.Tensor, d_target: torch.Tensor,
                       mask: torch.Tensor) -> torch.Tensor:
    """Paper Eq. 1 (LSGAN, per pixel): D(O_t) -> M_t and D(I_t) -> M_t with weight 1/2 each, D(X_t) -> 0."""
    return 0.5 * F.mse_loss(d_pred, mask) + 0.5 * F.mse_loss(d_comp, mask) + (d_target ** 2).mean()


def adversarial_loss(d_pred: torch.Tensor) -> torch.Tensor:
    """||D(O_t)||^2 / N (paper Eq. 2): G wants every pixel of its output judged harmonious (0)."""
    return (d_pred ** 2).mean()


class GeneratorLoss(nn.Module):
    """L_G = MSE(O_t, X_t) + lambda1 * temporal + lambda2 * adversarial (paper Eq. 2).

    Args:
        lambda_temporal: lambda1 (paper: 2e-2).
        lambda_adv: lambda2 (paper: 1e-2).
        temporal: "regional" (paper), "global" (whole frame) or "none".
    """

    def __init__(self, lambda_temporal: float = 2e-2, lambda_adv: float = 1e-2, temporal: str = "regional",
                 relative: bool = False, relative_eps: float = 1e-3):
        super().__init__()
        if temporal not in ("regional", "global", "none"):
            raise ValueError(f"temporal must be regional, global or none, got {temporal!r}")
        self.lambda_temporal, self.lambda_adv, self.temporal = lambda_temporal, lambda_adv, temporal
        self.relative, self.relative_eps = relative, relative_eps

    def reconstruction(self, pred, target, comp=None) -> torch.Tensor:
        """MSE; with `relative`, each pair's error is divided by its composite's (+ eps) and the batch is
        rescaled by the composite's mean error, so the loss keeps MSE's scale (and lambda1/lambda2 their meaning)."""
        if not self.relative:
            return F.mse_loss(pred, target)
        err = (pred - target).pow(2).flatten(1).mean(1)
        base = (comp - target).pow(2).flatten(1).mean(1).detach()
        return (err / (base + self.relative_eps)).mean() * (base.mean() + self.relative_eps)

    def forward(self, pred, target, prev_pred=None, flow=None, mask=None, d_pred=None, comp=None
                ) -> dict[str, torch.Tensor]:
        """Returns the named terms and their weighted sum under "total"."""
        terms = {"rec": self.reconstruction(pred, target, comp)}
        total = terms["rec"]
        if self.temporal != "none" and prev_pred is not None:
            region = mask if self.temporal == "regional" else None
            terms["temporal"] = temporal_loss(pred, prev_pred, flow, region, flow_valid(flow))
            total = total + self.lambda_temporal * terms["temporal"]
        if d_pred is not None:
            terms["adv"] = adversarial_loss(d_pred)
            total = total + self.lambda_adv * terms["adv"]
        terms["total"] = total
        return terms
