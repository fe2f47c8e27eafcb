"""Token merging for Stable Diffusion (Bolya and Hoffman's ToMe, the tomesd library A1111 applies
for its token_merging_ratio settings): in the transformer blocks at the latent's full resolution,
the self-attention runs on fewer tokens, the `ratio` of them most similar to another having been
averaged into it, and each merged token takes its destination's output.

`tome_blocks` is A1111's call, tomesd.apply_patch(ratio, max_downsample=1, sx=sy=2,
use_rand=False, merge_attn=True, merge_crossattn=False, merge_mlp=False): similarity is measured
on the block's input, the top-left token of every 2x2 cell is a destination, and queries, keys and
values all come from the merged tokens. ComfyUI's TomePatchModel merges only the queries
(workflows/unet_patches.py `tome`); both use `token_merging` below.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from .module_patches import forward_replaced, latent_size_seen


def token_merging(x: torch.Tensor, w: int, h: int, r: int, dst_pick: torch.Tensor):
    """ToMe's bipartite soft matching on (B, h*w, C) tokens: one token of each 2x2 cell (dst_pick
    (h//2, w//2) in 0..3, raster within the cell) is a destination, the rest sources; the r sources
    most similar (cosine) to their best destination are averaged into it. Returns merge(x) and
    unmerge(y) (a merged source takes its destination's value)."""
    b, n, _ = x.shape
    hs, ws = h // 2, w // 2
    marks = torch.zeros(h, w, dtype=torch.int64)
    cells = marks[:hs * 2, :ws * 2].view(hs, 2, ws, 2).permute(0, 2, 1, 3).reshape(hs, ws, 4)
    cells.scatter_(2, dst_pick[..., None], -1)
    marks[:hs * 2, :ws * 2] = cells.view(hs, ws, 2, 2).permute(0, 2, 1, 3).reshape(hs * 2, ws * 2)
    order = marks.flatten().argsort(stable=True)  # destinations (-1) first
    dst_idx, src_idx = order[:hs * ws], order[hs * ws:]
    metric = x / x.norm(dim=-1, keepdim=True)
    best, target = (metric[:, src_idx] @ metric[:, dst_idx].transpose(-1, -2)).max(dim=-1)
    r = min(r, len(src_idx))
    ranked = best.argsort(dim=-1, descending=True)
    merged, kept = ranked[:, :r], ranked[:, r:]
    into = target.gather(1, merged)

    def merge(t: torch.Tensor) -> torch.Tensor:
        c = t.shape[-1]
        src, dst = t[:, src_idx], t[:, dst_idx]
        moving = src.gather(1, merged[..., None].expand(-1, -1, c))
        dst = dst.scatter_reduce(1, into[..., None].expand(-1, -1, c), moving, reduce="mean")
        return torch.cat([src.gather(1, kept[..., None].expand(-1, -1, c)), dst], dim=1)

    def unmerge(t: torch.Tensor) -> torch.Tensor:
        c, k = t.shape[-1], kept.shape[1]
        unm, dst = t[:, :k], t[:, k:]
        out = t.new_zeros(b, n, c)
        out[:, dst_idx] = dst
        out.scatter_(1, src_idx[kept][..., None].expand(-1, -1, c), unm)
        out.scatter_(1, src_idx[merged][..., None].expand(-1, -1, c), dst.gather(1, into[..., None].expand(-1, -1, c)))
        return out

    return merge, unmerge


def transformer_blocks(unet) -> list:
    return [m for m in unet.modules() if hasattr(m, "attn1") and hasattr(m, "norm1")]


@contextmanager
def tome_blocks(unet, ratio: float):
    """tomesd's patch with A1111's arguments for the `with` block: each transformer block given the
    latent's full number of tokens n runs x + unmerge(attn1(merge(norm1(x)))), merging
    int(n * ratio) tokens chosen on x, then its cross-attention and feed-forward as usual."""
    shape: list = []

    def make_forward(block, plain):
        def forward(x, context):
            n = x.shape[1]
            h, w = (int(shape[0]), int(shape[1])) if shape else (0, 0)
            if n != h * w or int(n * ratio) <= 0 or h < 2 or w < 2:  # (tomesd fails on a 1-token side)
                return plain(x, context)
            corner = torch.zeros(h // 2, w // 2, dtype=torch.int64)  # use_rand=False: the top-left token
            merge, unmerge = token_merging(x, w, h, int(n * ratio), corner)
            x = x + unmerge(block.attn1(merge(block.norm1(x))))
            x = x + block.attn2(block.norm2(x), context)
            return x + block.ff(block.norm3(x))
        return forward

    with latent_size_seen(unet, shape), forward_replaced(transformer_blocks(unet), make_forward):
        yield
