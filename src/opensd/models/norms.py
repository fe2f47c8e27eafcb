"""The normalisations the transformer models share (T5, MMDiT, Flux)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / rms(x) * weight over the last axis, the mean square taken in fp32 whatever x's dtype."""
    rms = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
    return (x.float() * rms).to(x.dtype) * weight


class RMSNorm(nn.Module):
    """rms_norm with a learned scale, stored under the name the original files use for it
    (`weight` in T5 and SD3, `scale` in Flux)."""

    def __init__(self, dim: int, eps: float = 1e-6, param: str = "weight"):
        super().__init__()
        self.eps, self.param = eps, param
        self.register_parameter(param, nn.Parameter(torch.ones(dim)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, getattr(self, self.param), self.eps)


def layer_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm without a learned scale or bias: the adaLN blocks supply their own."""
    return F.layer_norm(x, x.shape[-1:], eps=eps)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: a per-sample (B, C) shift and scale applied to every token of x (B, L, C)."""
    return x * (1 + scale[:, None]) + shift[:, None]


class FinalLayer(nn.Module):
    """The DiTs' output layer (SD3 and Flux name it alike): adaLN (shift, scale), then a linear.
    Not `adaptive` (Chroma): `c` is the (shift, scale) pair itself."""

    def __init__(self, dim: int, out_dim: int, adaptive: bool = True):
        super().__init__()
        self.linear = nn.Linear(dim, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim)) if adaptive else None

    def forward(self, x: torch.Tensor, c) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1) if self.adaLN_modulation is not None else c
        return self.linear(modulate(layer_norm(x), shift, scale))
