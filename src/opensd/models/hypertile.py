"""HyperTile as A1111's built-in extension applies it (tfernd's HyperTile,
extensions-builtin/hypertile): chosen self-attentions of the UNet, and the VAE decoder's middle
attention, attend within tiles of the image instead of across all of it.

What A1111 does, kept here:
- the layers are picked by name from fixed tables (SD1/SD2 names, or SDXL's), each with a depth;
  a UNet layer takes part when its depth <= max_depth, the VAE's (depth 0) always;
- the tile size is the largest power of two dividing both image sides, capped at the max tile
  setting, then max(128, that) // 8 in latent pixels (times 2^depth in the UNet);
- the number of tiles along a side is value // d for one of the swap_size smallest divisors
  d >= tile of the side's length, drawn with randint from one random.Random shared by the UNet and
  the VAE (A1111 seeds it with the job's first seed);
- a UNet attention's n tokens are read as an h x w grid with h = round(sqrt(n * W/H)) and
  w = round(sqrt(n * H/W)) for an image of W x H (so h follows the width, as in A1111), q, k and v
  all come from the tile; the VAE's attention gets its 4-D input cut into tiles.
"""
from __future__ import annotations

import math
import random
from contextlib import contextmanager
from functools import cache

import torch

from .module_patches import forward_replaced

# depth -> the layers A1111 tiles (LDM names; a layer is hooked when its name ends with one)
_SD_LAYERS = {
    0: ["input_blocks.1.1.transformer_blocks.0.attn1", "input_blocks.2.1.transformer_blocks.0.attn1",
        "output_blocks.9.1.transformer_blocks.0.attn1", "output_blocks.10.1.transformer_blocks.0.attn1",
        "output_blocks.11.1.transformer_blocks.0.attn1"],
    1: ["input_blocks.4.1.transformer_blocks.0.attn1", "input_blocks.5.1.transformer_blocks.0.attn1",
        "output_blocks.6.1.transformer_blocks.0.attn1", "output_blocks.7.1.transformer_blocks.0.attn1",
        "output_blocks.8.1.transformer_blocks.0.attn1"],
    2: ["input_blocks.7.1.transformer_blocks.0.attn1", "input_blocks.8.1.transformer_blocks.0.attn1",
        "output_blocks.3.1.transformer_blocks.0.attn1", "output_blocks.4.1.transformer_blocks.0.attn1",
        "output_blocks.5.1.transformer_blocks.0.attn1"],
    3: ["middle_block.1.transformer_blocks.0.attn1"],
}


def _xl_layers() -> dict[int, list[str]]:
    """SDXL's table in A1111: depth 0 the first block of the 2x-down level, depth 1 every other
    block of that level and every block of the 4x-down level, depth 2 the middle, depth 3 none."""
    down = ("input_blocks.4.1", "input_blocks.5.1", "output_blocks.3.1", "output_blocks.4.1", "output_blocks.5.1")
    deep = ("input_blocks.7.1", "input_blocks.8.1", "output_blocks.0.1", "output_blocks.1.1", "output_blocks.2.1")
    one = [f"{b}.transformer_blocks.1.attn1" for b in down]
    one += [f"{b}.transformer_blocks.{i}.attn1" for i in range(10) for b in deep]
    return {0: [f"{b}.transformer_blocks.0.attn1" for b in down], 1: one,
            2: [f"middle_block.1.transformer_blocks.{i}.attn1" for i in range(10)], 3: []}


_XL_LAYERS = _xl_layers()
VAE_LAYER = "decoder.mid.attn_1"


def random_divisor(value: int, min_value: int, max_options: int, rng: random.Random) -> int:
    """value // d for d one of the `max_options` smallest divisors of value that are >= min_value
    (capped at value), picked by rng.randint over all of them; drawn even when there is one."""
    min_value = min(min_value, value)
    counts = [value // d for d in range(min_value, value + 1) if value % d == 0][:max_options]
    return counts[rng.randint(0, len(counts) - 1)]


def largest_tile(width: int, height: int) -> int:
    """The largest power of two dividing both sides."""
    gcd, tile = math.gcd(width, height), 1
    while gcd % (tile * 2) == 0:
        tile *= 2
    return tile


@cache
def token_grid(n: int, aspect: float) -> tuple[int, int]:
    """(h, w) with h * w = n for a W/H `aspect`: the rounded square roots, one of them adjusted
    when they do not multiply to n, else the divisor pair whose w/h is nearest the aspect."""
    h, w = max(1, round(math.sqrt(n * aspect))), max(1, round(math.sqrt(n / aspect)))  # (A1111: 0 fails)
    if h * w == n:
        return h, w
    if (n / h).is_integer():
        return h, n // h
    if (n / w).is_integer():
        return n // w, w
    pairs = [(d, n // d) for d in range(2, n + 1) if n % d == 0]
    return min(pairs, key=lambda p: abs(p[1] / p[0] - aspect))


def tiles(x: torch.Tensor, nh: int, nw: int, h: int, w: int) -> torch.Tensor:
    """(b, nh*h*nw*w, c) read as nh x nw tiles of h x w tokens -> (b*nh*nw, h*w, c)."""
    b, _, c = x.shape
    return x.reshape(b, nh, h, nw, w, c).permute(0, 1, 3, 2, 4, 5).reshape(b * nh * nw, h * w, c)


def untiled(x: torch.Tensor, nh: int, nw: int, h: int, w: int) -> torch.Tensor:
    c = x.shape[-1]
    return x.reshape(-1, nh, nw, h, w, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, nh * h * nw * w, c)


def _latent_tile(width: int, height: int, max_tile: int) -> int:
    return max(128, min(largest_tile(width, height), max_tile)) // 8


def unet_layers(unet, max_depth: int, sdxl: bool) -> list[tuple[torch.nn.Module, int]]:
    """(attention, depth) of the layers A1111 tiles, depth <= max_depth."""
    table = _XL_LAYERS if sdxl else _SD_LAYERS
    return [(module, depth) for depth in range(4) if depth <= max_depth for name, module in unet.named_modules()
            if any(name.endswith(layer) for layer in table[depth])]


@contextmanager
def hypertile_unet(unet, width: int, height: int, rng: random.Random, *, max_tile: int = 256,
                   swap_size: int = 3, max_depth: int = 3, sdxl: bool = False):
    """A1111's HyperTile on the UNet's self-attentions for the `with` block, for an image of
    width x height pixels."""
    tile = _latent_tile(width, height, max_tile)
    depths = {id(m): d for m, d in unet_layers(unet, max_depth, sdxl)}

    def make_forward(attn, plain):
        factor = 2 ** depths[id(attn)]

        def forward(x, context=None):
            h, w = token_grid(x.shape[1], width / height)
            nh = random_divisor(h, tile * factor, swap_size, rng)
            nw = random_divisor(w, tile * factor, swap_size, rng)
            if nh * nw <= 1:
                return plain(x, context)
            return untiled(plain(tiles(x, nh, nw, h // nh, w // nw), context), nh, nw, h // nh, w // nw)
        return forward

    modules = [m for m, _ in unet_layers(unet, max_depth, sdxl)]
    with forward_replaced(modules, make_forward):
        yield


@contextmanager
def hypertile_vae(vae, width: int, height: int, rng: random.Random, *, max_tile: int = 128, swap_size: int = 3):
    """A1111's HyperTile on the VAE decoder's middle attention for the `with` block: its (b, c, h, w)
    input cut into nh x nw tiles, each attended (and group-normed) alone."""
    tile = _latent_tile(width, height, max_tile)

    def make_forward(attn, plain):
        def forward(x):
            b, c, h, w = x.shape
            nh = random_divisor(h, tile, swap_size, rng)
            nw = random_divisor(w, tile, swap_size, rng)
            if nh * nw <= 1:
                return plain(x)
            th, tw = h // nh, w // nw
            cut = x.reshape(b, c, nh, th, nw, tw).permute(0, 2, 4, 1, 3, 5).reshape(b * nh * nw, c, th, tw)
            out = plain(cut)
            return out.reshape(b, nh, nw, c, th, tw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)
        return forward

    modules = [m for name, m in vae.named_modules() if name.endswith(VAE_LAYER)]
    with forward_replaced(modules, make_forward):
        yield
