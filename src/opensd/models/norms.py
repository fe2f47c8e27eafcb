"""The normalisations the transformer models share (T5, MMDiT, Flux)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / rms(x) * weight over the last axis, the mean square taken in fp32 whatever x's dtype."""
    rms = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
    return (x.float() * rms).to(x.dtype) * weight


def layer_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm without a learned scale or bias: the adaLN blocks supply their own."""
    return F.layer_norm(x, x.shape[-1:], eps=eps)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: a per-sample (B, C) shift and scale applied to every token of x (B, L, C)."""
    return x * (1 + scale[:, None]) + shift[:, None]
