"""VAE encode/decode in overlapping tiles, so large images run within a bounded memory.

Each tile runs through the VAE on its own, with context around it, and the outputs are blended
with linear ramps across the overlaps, so no seam shows. A tile differs from the same region of a
whole-image run in three ways: the context beyond the overlap (the decoder's convolutions reach
about 17 latent pixels), the mid-block attention (it sees only its tile), and GroupNorm, whose
statistics become the tile's own instead of the image's. diffusers and ComfyUI accept these small
differences too. Sharing the statistics was measured (random SD-shaped VAE, docs/benchmarks.md):
the whole image's exact statistics halve the error, but they need the untiled run this avoids, and
statistics pooled from a first pass over the tiles made it worse (pass-2 activations no longer
match pass-1 statistics), so each tile normalises on its own.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Starts of the fewest tiles of `tile` that cover `size` with at least `overlap` shared, evenly spread."""
    if size <= tile:
        return [0]
    count = math.ceil((size - overlap) / (tile - overlap))
    return [round(i * (size - tile) / (count - 1)) for i in range(count)]


def _ramp(starts: list[int], tile: int, size: int, i: int) -> torch.Tensor:
    """Blend weights of tile i along one axis: rising across the overlap with the tile before,
    falling across the overlap with the tile after, so two neighbours' weights sum to 1."""
    n = min(tile, size)
    w = torch.ones(n)
    if i > 0:
        ov = starts[i - 1] + tile - starts[i]
        w[:ov] = (torch.arange(ov) + 0.5) / ov
    if i < len(starts) - 1:
        ov = starts[i] + tile - starts[i + 1]
        w[n - ov:] = torch.minimum(w[n - ov:], 1 - (torch.arange(ov) + 0.5) / ov)
    return w


def tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, tile: int, overlap: int,
          scale: float, align: int = 1) -> torch.Tensor:
    """`fn(x)` (a VAE encode or decode) computed in tiles of `tile` x `tile` input pixels sharing at
    least `overlap`; the output is `scale` times the input's size, in fp32. Tile starts are multiples
    of `align` (an encoder's downscale, so every tile's latent grid lines up with the image's)."""
    b, _, h, w = x.shape
    ys, xs = ([s * align for s in tile_starts(n // align, tile // align, overlap // align)] for n in (h, w))
    out = weight = None
    for i, y0 in enumerate(ys):
        for j, x0 in enumerate(xs):
            t = fn(x[:, :, y0:y0 + tile, x0:x0 + tile]).float()
            if out is None:
                out = torch.zeros(b, t.shape[1], round(h * scale), round(w * scale))
                weight = torch.zeros(out.shape[2:])
            wy = _ramp([round(s * scale) for s in ys], t.shape[2], out.shape[2], i)
            wx = _ramp([round(s * scale) for s in xs], t.shape[3], out.shape[3], j)
            mask = wy[:, None] * wx[None, :]
            oy, ox = round(y0 * scale), round(x0 * scale)
            out[:, :, oy:oy + t.shape[2], ox:ox + t.shape[3]].addcmul_(t, mask)
            weight[oy:oy + t.shape[2], ox:ox + t.shape[3]] += mask
    return out.div_(weight)
