"""The one place every attention in the models goes through, so a faster kernel can be swapped in."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
              mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """Multi-head scaled dot-product attention.

    q: (B, Nq, H*D), k and v: (B, Nk, H*D); returns (B, Nq, H*D).
    mask: optional additive mask broadcastable to (B, H, Nq, Nk).
    scale: logit scale; None is 1/sqrt(D) (T5 uses 1: its logits are not scaled).
    """
    b, nq, inner = q.shape
    d = inner // heads
    q, k, v = (t.view(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return out.transpose(1, 2).reshape(b, nq, inner)
