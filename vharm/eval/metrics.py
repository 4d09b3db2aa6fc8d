"""The metrics of docs/metrics.md and their registry: MSE, fMSE, PSNR, fPSNR on the 0-255 scale, per frame; the
paper's temporal loss L_T (on [0, 1] colours); CO2Net's TL (0-255, confidence-weighted by the ground truth's own
consistency).

Inputs are (B, 3, H, W) in [0, 1] and masks (B, 1, H, W) in [0, 1]; outputs are per-frame (B,) tensors.
`METRICS` names every number vharm reports (key, label, format, direction); evaluation, the report, training's
validation and the quality-experiment scripts (experiments/) read keys, labels, formats and the `HARMED` threshold
from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vharm.data.flow import flow_valid, warp


@dataclass(frozen=True)
class Metric:
    """One reported number: its key in results, its label in tables, its format, and which way is better."""

    key: str
    label: str
    fmt: str
    higher_is_better: bool = False
    ranked: bool = True  # False: the same for every method (a reference line, not a score)
    help: str = ""


# In the order of the results tables (experiments/tables.py): the paper's L_T before CO2Net's TL and its floor.
METRICS = {m.key: m for m in (
    Metric("mse", "MSE", "{:.2f}", help="mean squared error over the frame, 0-255"),
    Metric("fmse", "fMSE", "{:.1f}", help="mean squared error over the foreground mask, 0-255"),
    Metric("psnr", "PSNR", "{:.2f}", higher_is_better=True, help="10 log10(255^2 / MSE), dB"),
    Metric("fpsnr", "fPSNR", "{:.2f}", higher_is_better=True, help="10 log10(255^2 / fMSE), dB"),
    Metric("lt1", "L_T1", "{:.5f}", help="the paper's L_T with the exact flow of a synthetic pair, [0, 1]"),
    Metric("lt2", "L_T2", "{:.5f}", help="the paper's L_T with DIS flow on the reference, [0, 1]"),
    Metric("tl", "TL", "{:.2f}", help="CO2Net's temporal loss with DIS flow on the reference, 0-255"),
    Metric("tl_floor", "TL floor (GT)", "{:.2f}", ranked=False, help="the reference's own TL"),
)}
# A clip is "harmed" by a method when its fMSE is above HARMED times the composite's (the do-no-harm count).
HARMED = 1.1


def harmed(value: float, composite: float) -> bool:
    """Whether a clip's fMSE `value` is above `HARMED` times the composite's `composite`.

    Example:
        >>> harmed(111.0, 100.0), harmed(109.0, 100.0)
        (True, False)
    """
    return value > HARMED * composite


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
