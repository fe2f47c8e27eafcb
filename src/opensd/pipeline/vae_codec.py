"""When the VAE runs in tiles (models/vae_tiled.py): above a size, or when asked (--vae-tiling)."""
from __future__ import annotations

from typing import Callable

import torch

from ..models.vae_tiled import tiled

# Images above this many pixels are tiled by default: an untiled fp32 decode at 2048x2048 needs
# more than 8 GiB (a 128-channel full-size activation alone is 2 GiB); up to SDXL's 1024x1024 the
# whole image runs at once and matches the reference exactly.
TILE_ABOVE = 1024 * 1024
DECODE_TILE, DECODE_OVERLAP = 64, 16     # latent pixels: each tile costs what a 512x512 decode does
ENCODE_TILE, ENCODE_OVERLAP = 512, 128   # image pixels


def use_tiles(tiling: bool | None, pixels: int) -> bool:
    """tiling None: automatic, by size."""
    return pixels > TILE_ABOVE if tiling is None else tiling


def decode(decode_fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, downscale: int,
           tiling: bool | None = None, tiles: tuple[int, int] | None = None) -> torch.Tensor:
    """`decode_fn(z)` (latent -> image in about [-1, 1]), in tiles when `use_tiles` says so (fp32 then).
    `tiles`: (tile, overlap) in latent pixels, instead of DECODE_TILE/DECODE_OVERLAP."""
    if not use_tiles(tiling, z.shape[-2] * z.shape[-1] * downscale ** 2):
        return decode_fn(z)
    tile, overlap = tiles or (DECODE_TILE, DECODE_OVERLAP)
    return tiled(decode_fn, z, tile=tile, overlap=overlap, scale=downscale)


def encode(encode_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, downscale: int,
           tiling: bool | None = None, tiles: tuple[int, int] | None = None) -> torch.Tensor:
    """`encode_fn(x)` (image in [-1, 1] -> latent), in tiles when `use_tiles` says so (fp32 then).
    `tiles`: (tile, overlap) in image pixels, instead of ENCODE_TILE/ENCODE_OVERLAP."""
    if not use_tiles(tiling, x.shape[-2] * x.shape[-1]):
        return encode_fn(x)
    tile, overlap = tiles or (ENCODE_TILE, ENCODE_OVERLAP)
    return tiled(encode_fn, x, tile=tile, overlap=overlap, scale=1 / downscale, align=downscale)
