"""Metrics exactly as defined in METRICS.md: MSE, fMSE, PSNR, fPSNR on the 0-255 scale, per frame; the paper's
temporal loss L_T (on [0, 1] colours); CO2Net's TL (0-255, confidence-weighted by the ground truth's own
consistency).

Inputs are (B, 3, H, W) in [0, 1] and masks (B, 1, H, W) in [0, 1]; outputs are per-frame (B,) tensors.
"""

from __future__ import annotations

import math

import torch

from vharm.data.flow import flow_valid, warp


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over pixels and channels of (pred - target)^2 on 0-255, per frame."""
    return ((pred - target) * 255).pow(2).flatten(1).mean(1)


def fmse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum m * (pred - target)^2 / (3 * sum m) on 0-255, per frame (0 where the mask is empty)."""
    err = (mask * ((pred - target) * 255).pow(2)).flatten(1).sum(1)
    return err / (3 * mask.flatten(1).sum(1)).clamp_min(1e-8)


def psnr(err: torch.Tensor) -> torch.Tensor:
    """10 log10(255^2 / err) for an MSE or fMSE on 0-255 (capped at 100 dB for a perfect frame)."""
    return (10 * torch.log10(255.0 ** 2 / err.clamp_min(255.0 ** 2 * 1e-10))).clamp_max(100.0)


def temporal_lt(pred: torch.Tensor, prev_pred: torch.Tensor, flow: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The paper's L_T per frame: mean over foreground pixels (and channels) of (O_t - S(O_{t-1}))^2, [0, 1] scale."""
    weight = mask * flow_valid(flow)
    diff = (pred - warp(prev_pred, flow)).pow(2)
    return (weight * diff).flatten(1).sum(1) / (3 * weight.flatten(1).sum(1)).clamp_min(1e-8)


def co2net_tl(pred: torch.Tensor, prev_pred: torch.Tensor, target: torch.Tensor, prev_target: torch.Tensor,
              mask: torch.Tensor, prev_mask: torch.Tensor, flow: torch.Tensor, alpha: float = 50.0) -> torch.Tensor:
    """CO2Net's TL for frame t (0-255): `flow` goes from the ground truth's frame t back to frame t-1.

    M = W(m_{t-1}) * m_t * exp(-alpha * mean_c |W(gt_{t-1}) - gt_t|) and
    TL = sum M * sum_c (W(pred_{t-1}) - pred_t)^2 / sum M, colours on 0-255 (the exponent on [0, 1]).
    """
    w_gt = warp(prev_target, flow)
    conf = warp(prev_mask, flow) * mask * flow_valid(flow)
    conf = conf * torch.exp(-alpha * (w_gt - target).abs().mean(1, keepdim=True))
    diff = ((warp(prev_pred, flow) - pred) * 255).pow(2).sum(1, keepdim=True)
    return (conf * diff).flatten(1).sum(1) / conf.flatten(1).sum(1).clamp_min(1e-8)


def mean(values) -> float:
    vals = [float(v) for v in values]
    return sum(vals) / len(vals) if vals else math.nan
