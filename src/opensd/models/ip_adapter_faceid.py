"""The image projections of IP-Adapter FaceID (h94/IP-Adapter-FaceID): face identity tokens from an
InsightFace (ArcFace) embedding instead of a CLIP image embedding. The rest of the adapter (the
decoupled cross-attention, models/ip_adapter.py) is the base adapters'.

* FaceID and FaceID Portrait (ip-adapter-faceid_sd15/_sdxl, -portrait*): :class:`FaceIDProjection`,
  the 512-wide normalised embedding -> linear (to 1024) - GELU - linear (to tokens x width), each of the
  tokens LayerNorm'd (4 tokens; Portrait 16, one set per face picture);
* FaceID Plus / Plus v2 (-plus_sd15, -plusv2_sd15/_sdxl): :class:`FaceIDPlusProjection`, those 4 tokens
  as the latents of a perceiver (``perceiver_resampler``: a linear from CLIP vision's penultimate hidden
  states of the aligned face, then 4 blocks of attention (heads of 64) and feed-forward, a linear and a
  LayerNorm); v2 adds the tokens back: out = tokens + scale x perceiver (``shortcut``).

Attribute names equal the released files' keys (``image_proj.proj.0.weight``, ``image_proj.norm.weight``,
``image_proj.perceiver_resampler.layers.0.0.to_q.weight``).
"""
from __future__ import annotations

import torch
from torch import nn

from .ip_adapter import PerceiverAttention, feed_forward

FACE = "face_embedding"  # what the projections read: InsightFace's normalised identity embedding
ID_DIM = 512


class FaceIDProjection(nn.Module):
    """FaceID / Portrait: identity embeddings (B, id_dim) -> (B, tokens, width)."""
    source = FACE
    clip_dim = None  # reads no CLIP output

    def __init__(self, id_dim: int, width: int, tokens: int, hidden: int):
        super().__init__()
        self.image_dim, self.width, self.tokens = id_dim, width, tokens
        self.proj = nn.Sequential(nn.Linear(id_dim, hidden), nn.GELU(), nn.Linear(hidden, tokens * width))
        self.norm = nn.LayerNorm(width)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.proj(ids.to(self.proj[0].weight.dtype))
        return self.norm(x.reshape(-1, self.tokens, self.width))


class FacePerceiver(nn.Module):
    """The perceiver of FaceID Plus: the id tokens (B, tokens, width) attend to the projected CLIP hidden
    states (B, N, clip_dim) in `depth` blocks; no learned latents of its own."""

    def __init__(self, clip_dim: int, width: int, depth: int, heads: int, ff_inner: int):
        super().__init__()
        self.proj_in = nn.Linear(clip_dim, width)
        self.proj_out = nn.Linear(width, width)
        self.norm_out = nn.LayerNorm(width)
        self.layers = nn.ModuleList(nn.ModuleList([PerceiverAttention(width, heads), feed_forward(width, ff_inner)])
                                    for _ in range(depth))

    def forward(self, latents: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        x = self.proj_in(hidden)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


class FaceIDPlusProjection(FaceIDProjection):
    """FaceID Plus (v2): identity embeddings (B, id_dim) and CLIP penultimate hidden states of the aligned
    face (B, N, clip_dim) -> (B, tokens, width)."""

    def __init__(self, id_dim: int, width: int, tokens: int, hidden: int, clip_dim: int, depth: int, heads: int,
                 ff_inner: int):
        super().__init__(id_dim, width, tokens, hidden)
        self.clip_dim = clip_dim
        self.perceiver_resampler = FacePerceiver(clip_dim, width, depth, heads, ff_inner)

    def forward(self, ids: torch.Tensor, hidden: torch.Tensor, scale: float = 1.0,
                shortcut: bool = False) -> torch.Tensor:
        tokens = super().forward(ids)
        out = self.perceiver_resampler(tokens, hidden.to(tokens.dtype))
        return tokens + scale * out if shortcut else out


def is_faceid(adapter) -> bool:
    """Whether an IPAdapter's projection reads face embeddings (FaceID, Portrait, FaceID Plus)."""
    return getattr(adapter, "source", None) == FACE


def project_faces(adapter, ids: torch.Tensor, hidden: torch.Tensor | None = None, scale: float = 1.0,
                  shortcut: bool = False) -> torch.Tensor:
    """A FaceID adapter's tokens (B, tokens, width) of identity embeddings (B, id_dim) and, for FaceID Plus,
    the aligned faces' CLIP hidden states (B, N, clip_dim)."""
    proj = adapter.image_proj
    param = next(proj.parameters())
    ids = ids.to(device=param.device, dtype=param.dtype)
    if proj.clip_dim is None:
        return proj(ids)
    if hidden is None:
        raise ValueError("FaceID Plus needs the CLIP hidden states of the aligned face")
    return proj(ids, hidden.to(device=param.device, dtype=param.dtype), scale, shortcut)
