"""Rotary position embedding over N-dimensional integer position ids (Flux: time, row, column).

Each head's channels form adjacent pairs (x0, x1), (x2, x3), ...; the first axes_dim[0] / 2 pairs
are rotated by angles from id axis 0, the next axes_dim[1] / 2 by axis 1, and so on. Pair i of an
axis of width d turns by position * theta ** (-2i / d). Angles are computed in float64, as in the
reference implementations, since positions times low frequencies lose digits in float32.
"""
from __future__ import annotations

import torch


def rope_angles(ids: torch.Tensor, axes_dim: tuple[int, ...], theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """ids (..., L, n_axes) -> (cos, sin), each (..., L, sum(axes_dim) / 2) in float32 (a batch of
    id lists where each sample's positions differ, as Z-Image's)."""
    parts = []
    for axis, dim in enumerate(axes_dim):
        freqs = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=ids.device) / dim)
        parts.append(ids[..., axis].to(torch.float64)[..., None] * freqs)
    angles = torch.cat(parts, dim=-1)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, L, heads, head_dim) rotated pair by pair by angles (L, head_dim / 2) or, per sample,
    (B, L, head_dim / 2); computed in fp32, returned in x's dtype."""
    x0, x1 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos.unsqueeze(-2), sin.unsqueeze(-2)  # broadcast over heads
    return torch.stack([c * x0 - s * x1, s * x0 + c * x1], dim=-1).flatten(-2).to(x.dtype)


def check_axes(axes_dim: tuple[int, ...], head_dim: int, what: str) -> None:
    """A config's RoPE split must cover the head exactly."""
    if sum(axes_dim) != head_dim:
        raise ValueError(f"{what} config: axes_dim {axes_dim} must sum to the head width {head_dim}")
