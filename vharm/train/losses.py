"""The paper's losses (Huang et al. 2020, Eqs. 1-2); the flow warp S they need is `vharm.data.flow.warp`."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from vharm.data.flow import flow_valid, warp


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




def discriminator_loss(d_pred: torch.Tensor, d_comp: torch.Tensor, d_target: torch.Tensor,
                       mask: torch.Tensor) -> torch.Tensor:
    """Paper Eq. 1 (LSGAN, per pixel): D(O_t) -> M_t and D(I_t) -> M_t with weight 1/2 each, D(X_t) -> 0."""
    return 0.5 * F.mse_loss(d_pred, mask) + 0.5 * F.mse_loss(d_comp, mask) + (d_target ** 2).mean()


def adversarial_loss(d_pred: torch.Tensor) -> torch.Tensor:
    """||D(O_t)||^2 / N (paper Eq. 2): G wants every pixel of its output judged harmonious (0).

    Example:
        >>> adversarial_loss(torch.full((1, 1, 4, 4), 0.5)).item()
        0.25
    """
    return (d_pred ** 2).mean()


class GeneratorLoss(nn.Module):
    """L_G = MSE(O_t, X_t) + lambda1 * temporal + lambda2 * adversarial (paper Eq. 2).

    Args:
        lambda_temporal: lambda1 (paper: 2e-2).
        lambda_adv: lambda2 (paper: 1e-2).
        temporal: "regional" (paper), "global" (whole frame) or "none".
        relative: divide each pair's reconstruction error by its composite's (see `reconstruction`).
        relative_eps: added to the composite's error, per pixel on [-1, 1] colours.

    Example:
        >>> target = torch.zeros(1, 3, 4, 4)
        >>> terms = GeneratorLoss()(target + 0.1, target)  # no previous frame, no D: MSE alone
        >>> sorted(terms), round(terms["total"].item(), 4)
        (['rec', 'total'], 0.01)
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
