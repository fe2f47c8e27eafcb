"""GLIGEN (Li et al. 2023, "Open-Set Grounded Text-to-Image Generation"), the box-grounded text model
ComfyUI runs: a position net turning (phrase embedding, box) pairs into grounding tokens, and one
gated self-attention layer per transformer of the UNet, run between each transformer block's
self-attention and its cross-attention.

Grounding tokens: h = MLP([e, Fourier(box)]) for each of up to 30 objects, where Fourier takes each
of the box's four corners (x1, y1, x2, y2, in 0..1 of the latent) at 8 frequencies 100^(k/8), sin then
cos per frequency; padded objects use the learned null phrase and null position features instead.

Gated self-attention over the visual tokens v and the projected grounding tokens:
v = v + tanh(alpha_attn) SelfAttn(LN([v, W h]))[:len(v)], then v = v + tanh(alpha_dense) FF(LN(v)).
Attribute names follow the released files' keys (position_net.*, <block>.fuser.*).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .unet import CrossAttention, FeedForward

MAX_OBJECTS = 30
FOURIER_FREQS = 8


def fourier_embed(boxes: torch.Tensor, freqs: int = FOURIER_FREQS, temperature: float = 100.0) -> torch.Tensor:
    """(..., 4) -> (..., freqs * 2 * 4): sin(f x), cos(f x) for f = temperature ** (k / freqs)."""
    bands = temperature ** (torch.arange(freqs) / freqs)
    return torch.cat([t for f in bands.tolist() for t in (torch.sin(f * boxes), torch.cos(f * boxes))], dim=-1)


class PositionNet(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        position_dim = FOURIER_FREQS * 2 * 4
        self.linears = nn.Sequential(nn.Linear(in_dim + position_dim, 512), nn.SiLU(), nn.Linear(512, 512), nn.SiLU(),
                                     nn.Linear(512, out_dim))
        self.null_positive_feature = nn.Parameter(torch.zeros(in_dim))
        self.null_position_feature = nn.Parameter(torch.zeros(position_dim))

    def forward(self, boxes: torch.Tensor, masks: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """boxes (B, N, 4), masks (B, N) 1 for a real object, embeddings (B, N, in_dim) -> (B, N, out_dim)."""
        m = masks[..., None]
        w = self.null_positive_feature
        xyxy = fourier_embed(boxes) * m + (1 - m) * self.null_position_feature.to(boxes).view(1, 1, -1)
        phrases = embeddings * m + (1 - m) * w.to(boxes).view(1, 1, -1)
        return self.linears(torch.cat([phrases, xyxy], dim=-1))


class GatedSelfAttention(nn.Module):
    def __init__(self, query_dim: int, context_dim: int, heads: int, dim_head: int):
        super().__init__()
        self.linear = nn.Linear(context_dim, query_dim)
        self.attn = CrossAttention(query_dim, heads, dim_head)
        self.ff = FeedForward(query_dim)
        self.norm1 = nn.LayerNorm(query_dim)
        self.norm2 = nn.LayerNorm(query_dim)
        self.alpha_attn = nn.Parameter(torch.tensor(0.0))
        self.alpha_dense = nn.Parameter(torch.tensor(0.0))

    def forward(self, x: torch.Tensor, objs: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        both = torch.cat([x, self.linear(objs)], dim=1)
        x = x + torch.tanh(self.alpha_attn) * self.attn(self.norm1(both))[:, :n]
        return x + torch.tanh(self.alpha_dense) * self.ff(self.norm2(x))


class Gligen(nn.Module):
    """The fusers, one per UNet transformer in the order the UNet runs them, and the position net."""

    def __init__(self, fusers: list[GatedSelfAttention], position_net: PositionNet, key_dim: int):
        super().__init__()
        self.module_list = nn.ModuleList(fusers)
        self.position_net = position_net
        self.key_dim = key_dim

    def objects(self, boxes: list[tuple[torch.Tensor, int, int, int, int]], batch: int, height: int,
                width: int) -> torch.Tensor:
        """Grounding tokens (batch, 30, D) for (phrase embedding (1, key_dim), h, w, y, x) boxes in
        latent cells of a (height, width) latent, as ComfyUI's set_position lays them out."""
        corners = torch.zeros(MAX_OBJECTS, 4)
        masks = torch.zeros(MAX_OBJECTS)
        phrases = torch.zeros(MAX_OBJECTS, self.key_dim)
        for i, (phrase, h, w, y, x) in enumerate(boxes[:MAX_OBJECTS]):
            corners[i] = torch.tensor((x / width, y / height, (x + w) / width, (y + h) / height))
            masks[i] = 1.0
            phrases[i] = phrase.reshape(-1).float()
        param = self.position_net.null_positive_feature
        args = (corners, masks, phrases)
        return self.position_net(*(t[None].expand(batch, *t.shape).to(param) for t in args))
