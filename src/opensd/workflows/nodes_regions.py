"""comfyui-tooling-nodes' regions (Krita AI Diffusion's regional prompts): an attention couple.

* ETN_BackgroundRegion starts a REGIONS chain with a prompt for what no region covers;
  ETN_DefineRegion adds a mask (1 = the region) and its prompt; ETN_ListRegionMasks gives every
  region's mask, the background's being 1 minus the sum of the others.
* ETN_AttentionMask patches the UNet's cross-attentions: for the rows of positive-kind conditioning
  (the negative's are left alone) each cross-attention output becomes the sum over regions of the
  region's mask, divided by the masks' sum, times the attention over the region's own prompt (the
  row's own prompt is not used there, as in the original). A mask is given at the latent's size or 8
  times it, and taken to each layer's token grid by nearest-neighbour sampling."""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ..errors import InvalidArgument
from ..models.module_patches import forward_replaced, latent_size_seen
from ..models.unet import BasicTransformerBlock
from .nodes_unet_attention import require_unet
from .types import NodeDef, register

_MODULE = "custom_nodes.comfyui-tooling-nodes"
_CATEGORY = "external_tooling/regions"


@dataclass(frozen=True)
class Region:
    previous: Region | None
    mask: torch.Tensor | None  # (1, H, W); None for the background until the chain is resolved
    conditioning: list

    def chain(self) -> list[Region]:
        """The regions bottom first, the background's mask filled in."""
        out, r = [], self
        while r is not None:
            out.append(r)
            r = r.previous
        if len(out) < 2:
            raise InvalidArgument("regions: at least 2 regions are needed (a background and a defined region)")
        out.reverse()
        shapes = {tuple(r.mask.shape) for r in out[1:]}
        if len(shapes) > 1:
            raise InvalidArgument(f"mask: the regions' masks differ in size ({', '.join(map(str, sorted(shapes)))})")
        if out[0].mask is None:
            out[0] = Region(None, 1.0 - torch.stack([r.mask for r in out[1:]]).sum(0), out[0].conditioning)
        return out


def _regions(value) -> Region:
    if not isinstance(value, Region):
        raise InvalidArgument("regions: expected REGIONS from ETN_BackgroundRegion or ETN_DefineRegion")
    return value


def background_region(call, conditioning):
    return (Region(None, None, conditioning),)


def define_region(call, mask, conditioning, regions=None):
    mask = mask.reshape(-1, *mask.shape[-2:])[:1].float()
    return (Region(None if regions is None else _regions(regions), mask, conditioning),)


def list_region_masks(call, regions):
    return (torch.stack([r.mask for r in _regions(regions).chain()]),)


def token_weights(weights: torch.Tensor, latent: tuple[int, int], tokens: int) -> torch.Tensor:
    """(N, 1, H, W) region weights -> (N, tokens, 1) for a layer of `tokens` positions."""
    h, w = latent
    hm, wm = weights.shape[-2:]
    if (hm, wm) == (h, w):
        base = 1
    elif (hm, wm) == (8 * h, 8 * w):
        base = 8
    else:
        raise InvalidArgument(f"mask: {wm}x{hm} is neither the latent's {w}x{h} nor the image's {8 * w}x{8 * h}")
    out = weights
    for factor in (1, 2, 4, 8):
        size = (math.ceil(h / factor), math.ceil(w / factor))
        if size[0] * size[1] == tokens and base * factor > 1:
            out = F.interpolate(weights, size=size, mode="nearest")
            break
    if out.shape[-2] * out.shape[-1] != tokens:
        raise InvalidArgument(f"regions: no mask size fits an attention layer of {tokens} positions")
    return out.reshape(weights.shape[0], tokens, 1)


@contextmanager
def attention_couple(weights: torch.Tensor, contexts: list[torch.Tensor], unet, flags: tuple[bool, ...]):
    """`flags`: which rows of the call come from a negative-kind list (those keep the plain attention)."""
    latent: list = []
    layers = [m.attn2 for m in unet.modules() if isinstance(m, BasicTransformerBlock)]

    def make_forward(module, forward):
        def couple(x, context=None):
            out = forward(x, context)
            if context is None:
                return out
            rows = [b for b, negative in enumerate(flags) if not negative]
            if not rows or len(flags) != len(x):
                return out
            w = token_weights(weights, tuple(latent), x.shape[1]).to(out)
            xs = x[rows]
            mixed = 0
            for i, region_context in enumerate(contexts):
                mixed = mixed + w[i] * forward(xs, region_context.to(context).expand(len(rows), -1, -1))
            out = out.clone()
            out[rows] = mixed
            return out
        return couple

    with latent_size_seen(unet, latent), forward_replaced(layers, make_forward):
        yield


def attention_mask(call, model, regions):
    require_unet(model, "ETN_AttentionMask")
    chain = _regions(regions).chain()
    masks = torch.stack([r.mask for r in chain])  # (N, 1, H, W)
    total = masks.sum(0, keepdim=True)
    if not bool((total > 0).any()):
        raise InvalidArgument("regions: the masks cover nothing")
    weights = torch.where(total > 0, masks / total.clamp_min(1e-12), torch.zeros_like(masks))
    contexts = [r.conditioning[0][0] for r in chain]

    def patch(unet, sigma: float, image: int, negative: tuple[bool, ...]):
        return attention_couple(weights, contexts, unet, negative)
    patch.per_image = True  # guiders.ModelRun names the negative rows
    return (replace(model, network_patches=model.network_patches + (patch,)),)


register(NodeDef("ETN_BackgroundRegion", background_region, {"conditioning": ("CONDITIONING", {})}, ("REGIONS",),
                 output_names=("regions",), category=_CATEGORY, display_name="Background Region", module=_MODULE))
register(NodeDef("ETN_DefineRegion", define_region, {"mask": ("MASK", {}), "conditioning": ("CONDITIONING", {})},
                 ("REGIONS",), output_names=("regions",), optional={"regions": ("REGIONS", {})}, category=_CATEGORY,
                 display_name="Define Region", module=_MODULE))
register(NodeDef("ETN_ListRegionMasks", list_region_masks, {"regions": ("REGIONS", {})}, ("MASK",),
                 output_names=("masks",), category=_CATEGORY, display_name="List Region Masks", module=_MODULE))
register(NodeDef("ETN_AttentionMask", attention_mask, {"model": ("MODEL", {}), "regions": ("REGIONS", {})},
                 ("MODEL",), output_names=("model",), category=_CATEGORY, display_name="Regions Attention Mask",
                 module=_MODULE))
