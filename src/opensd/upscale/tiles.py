"""Run an image model tile by tile, so any image size fits in bounded memory.

The layout and blend are ComfyUI's (comfy.utils.tiled_scale), so its ImageUpscaleWithModel gives the
same pixels here: tiles start every `tile - overlap` pixels, the last ones cut short at the edge;
each output tile is weighted by a linear ramp over the scaled overlap at its four sides and the
weighted sum is divided by the summed weights, so seams fade instead of showing.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..errors import InvalidArgument


def tile_positions(size: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """(start, length) of the tiles along one side."""
    if size <= tile:
        return [(0, size)]
    starts = (max(0, min(size - overlap, p)) for p in range(0, size - overlap, tile - overlap))
    return [(s, min(tile, size - s)) for s in starts]


def _ramp(length: int, feather: int, device) -> torch.Tensor:
    weights = torch.ones(length, device=device)
    if feather < length:
        ramp = torch.arange(1, feather + 1, device=device) / feather
        weights[:feather] *= ramp
        weights[length - feather:] *= ramp.flip(0)
    return weights


def check_tiling(tile: int, overlap: int) -> tuple[int, int]:
    """A tile size (0 or less: no tiling) and an overlap smaller than it, or one line naming which is wrong."""
    if tile > 0 and not 0 <= overlap < tile:
        raise InvalidArgument(f"tile overlap: {overlap} must be at least 0 and less than the tile size {tile}")
    return tile, overlap


@torch.no_grad()
def tiled_scale(x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], scale: float, tile: int = 512,
                overlap: int = 32, progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """`fn` ((1, C, h, w) -> (1, C', h*scale, w*scale)) over `x` (B, C, H, W) in tiles of `tile`
    pixels sharing `overlap`; `tile` <= 0 runs each image whole. `progress(done, total)` after each tile."""
    check_tiling(tile, overlap)
    b, _, h, w = x.shape
    tile = tile if tile > 0 else max(h, w)
    rows, cols = tile_positions(h, tile, overlap), tile_positions(w, tile, overlap)
    total, done = b * len(rows) * len(cols), 0
    feather = round(overlap * scale)
    outputs = []
    for i in range(b):
        if len(rows) == len(cols) == 1:
            outputs.append(fn(x[i:i + 1]))
            done += 1
            if progress:
                progress(done, total)
            continue
        out = div = None
        for y, th in rows:
            for x0, tw in cols:
                piece = fn(x[i:i + 1, :, y:y + th, x0:x0 + tw])
                if out is None:  # the weights are the same for every channel: one plane holds their sums
                    out = piece.new_zeros((1, piece.shape[1], round(h * scale), round(w * scale)))
                    div = piece.new_zeros((1, 1, *out.shape[-2:]))
                ph, pw = piece.shape[-2:]
                mask = _ramp(ph, feather, piece.device)[:, None] * _ramp(pw, feather, piece.device)[None, :]
                oy, ox = round(y * scale), round(x0 * scale)
                out[..., oy:oy + ph, ox:ox + pw] += piece * mask
                div[..., oy:oy + ph, ox:ox + pw] += mask
                done += 1
                if progress:
                    progress(done, total)
        outputs.append(out / div)
    return torch.cat(outputs)
