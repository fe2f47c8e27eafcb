"""A1111's speed settings that trade a little quality for time, for one generation: token merging
(token_merging_ratio*: tomesd on the UNet's full-resolution self-attention, models/token_merging.py)
and its built-in Hypertile extension (tiled self-attention in the UNet and the VAE decoder,
models/hypertile.py). Both are measured in bench/attention_patches.py."""
from __future__ import annotations

import math
import random
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from ..errors import InvalidArgument
from ..models.hypertile import hypertile_unet, hypertile_vae
from ..models.token_merging import tome_blocks

MAX_RATIO = 0.9  # A1111's slider; past 0.75 every source token is already merged


@dataclass
class HyperTile:
    """A1111's hypertile_* settings: where it tiles (the UNet in the first pass, in the hires pass,
    the VAE decoder) and how (max_depth, max_tile in pixels, swap_size)."""
    unet: bool = False
    unet_hires: bool = False
    unet_max_depth: int = 3
    unet_max_tile: int = 256
    unet_swap_size: int = 3
    vae: bool = False
    vae_max_tile: int = 128
    vae_swap_size: int = 3

    def validate(self) -> None:
        for name in ("unet", "unet_hires", "vae"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidArgument(f"hypertile.{name}: {getattr(self, name)!r} must be true or false")
        for name, low, high in (("unet_max_depth", 0, 3), ("unet_max_tile", 0, 512), ("unet_swap_size", 1, 64),
                                ("vae_max_tile", 0, 512), ("vae_swap_size", 1, 64)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise InvalidArgument(f"hypertile.{name}: {value!r} must be a whole number in {low}..{high}")


def check_ratio(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 <= value <= MAX_RATIO:
        raise InvalidArgument(f"{name}: {value!r} must be a number in 0..{MAX_RATIO}")


class Speedups:
    """The patches of one generation. Hypertile's tile choices come from one random.Random seeded
    with the generation's first seed, shared by the UNet and the VAE as in A1111; the hires pass
    seeds it again unless the first pass tiled the UNet (A1111's before_hr)."""

    def __init__(self, hypertile: HyperTile | None, seed: int, width: int, height: int, sdxl: bool):
        self.hypertile, self.seed, self.sdxl = hypertile, seed, sdxl
        self.size = (width, height)
        self.rng = random.Random(seed)

    def before_hires(self, width: int, height: int) -> None:
        if self.hypertile is not None and not self.hypertile.unet:
            self.rng.seed(self.seed)
        self.size = (width, height)

    @contextmanager
    def unet(self, net, ratio: float, hires: bool):
        """The UNet `net` patched for one pass: token merging at `ratio` (0: none), Hypertile when
        it is on for this pass (`hires`: the hires fix's second pass)."""
        h = self.hypertile
        with ExitStack() as stack:
            if ratio > 0:
                stack.enter_context(tome_blocks(net, ratio))
            if h is not None and (h.unet_hires if hires else h.unet):
                stack.enter_context(hypertile_unet(net, *self.size, self.rng, max_tile=h.unet_max_tile,
                                                   swap_size=h.unet_swap_size, max_depth=h.unet_max_depth,
                                                   sdxl=self.sdxl))
            yield

    @contextmanager
    def vae(self, vae):
        h = self.hypertile
        if h is None or not h.vae:
            yield
            return
        with hypertile_vae(vae, *self.size, self.rng, max_tile=h.vae_max_tile, swap_size=h.vae_swap_size):
            yield
