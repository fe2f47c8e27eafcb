"""MODEL patches on a UNet's self-attention, with ComfyUI's names, inputs and arithmetic:

* HyperTile (tfernd's HyperTile, comfy_extras.nodes_hypertile): the self-attentions at the
  latent's resolution (and max_depth halvings below it) attend within tiles of about tile_size
  pixels, chosen at random among the swap_size largest tilings.
"""
from __future__ import annotations

import struct
from dataclasses import replace

import torch

from ..errors import InvalidArgument
from .types import ModelRef, NodeDef, register
from .unet_patches import hypertile


def require_unet(model: ModelRef, node: str) -> None:
    """One line for models whose network is not a UNet with transformer blocks."""
    family = model.pipe.family
    if "pag" not in family.adapters:  # the families whose UNet attention the hooks here know
        raise InvalidArgument(f"model: {node} patches a UNet's self-attention; it is not available for "
                              f"{family.label} models")


def step_draws(sigma: float):
    """draw(n) -> an int in [0, n) from a generator seeded by the step's sigma, so a run repeats
    itself (ComfyUI draws from torch's global generator, which its noise seeding resets)."""
    g = torch.Generator().manual_seed(struct.unpack("<q", struct.pack("<d", float(sigma)))[0] & (2 ** 63 - 1))
    return lambda n: int(torch.randint(0, n, (1,), generator=g))


def hyper_tile(call, model, tile_size, swap_size, max_depth, scale_depth):
    require_unet(model, "HyperTile")

    def patch(unet, sigma: float):
        return hypertile(unet, tile_size, swap_size, max_depth, scale_depth, step_draws(sigma))
    return (replace(model, network_patches=model.network_patches + (patch,)),)


register(NodeDef(
    "HyperTile", hyper_tile,
    {"model": ("MODEL", {}), "tile_size": ("INT", {"default": 256, "min": 1, "max": 2048}),
     "swap_size": ("INT", {"default": 2, "min": 1, "max": 128}),
     "max_depth": ("INT", {"default": 0, "min": 0, "max": 10}),
     "scale_depth": ("BOOLEAN", {"default": False})},
    ("MODEL",), category="model_patches/unet", module="comfy_extras.nodes_hypertile"))
