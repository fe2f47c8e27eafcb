"""Per-layer IP-Adapter weights by "weight type", as ComfyUI_IPAdapter_plus (cubiq) spreads one
weight over the UNet's cross-attention layers.

A layer is known by its block kind ("input", "middle", "output") and its transformer index: the
number of its SpatialTransformer in the order the UNet runs them (input blocks, the middle block,
output blocks; every transformer block of one SpatialTransformer shares it). The curves count
`layers` = 11 transformers for SDXL adapters (cross-attention layer 101 exists) and 16 otherwise;
the named types keep only some transformers (SDXL's style is output block 1's, its composition
input block 8's).
"""
from __future__ import annotations

from torch import nn

from ..errors import InvalidArgument
from ..models.ip_adapter import cross_attentions
from ..models.unet import SpatialTransformer

WEIGHT_TYPES = ["linear", "ease in", "ease out", "ease in-out", "reverse in-out", "weak input", "weak output",
                "weak middle", "strong middle", "style transfer", "composition", "strong style transfer",
                "style and composition", "style transfer precise", "composition precise"]

_WEAK = {"weak input": ("input",), "weak output": ("output",), "weak middle": ("middle",),
         "strong middle": ("input", "output")}


def layer_places(unet: nn.Module) -> list[tuple[str, int]]:
    """(block kind, transformer index) of each cross-attention layer, in cross_attentions' order."""
    parts = (("input", unet.input_blocks), ("middle", unet.middle_block), ("output", unet.output_blocks))
    index = {}
    for _, part in parts:
        for module in part.modules():
            if isinstance(module, SpatialTransformer):
                index[id(module)] = len(index)
    places = {}
    for kind, part in parts:
        for module in part.modules():
            if isinstance(module, SpatialTransformer):
                for block in module.transformer_blocks:
                    places[id(block.attn2)] = (kind, index[id(module)])
    return [places[id(attn)] for attn in cross_attentions(unet)]


def _named(weight_type: str, w: float, sdxl: bool) -> dict[int, float]:
    """The transformer index -> weight tables of the named types (others get nothing)."""
    sd1_style = {i: w for i in (0, 1, 2, 3, 9, 10, 11, 12, 13, 14, 15)}
    if weight_type == "style transfer":
        return {6: w} if sdxl else sd1_style
    if weight_type == "composition":
        return {3: w} if sdxl else {4: w * 0.25, 5: w}
    if weight_type == "strong style transfer":
        keep = (0, 1, 2, 4, 5, 6, 7, 8, 9, 10) if sdxl else (0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
        return {i: w for i in keep}
    if weight_type in ("style and composition", "style transfer precise"):
        # the composition weight is the node's 1.0 for the first (no composition input here), the weight itself
        # for the second (no style_boost input here)
        comp = 1.0 if weight_type == "style and composition" else w
        return {3: comp, 6: w} if sdxl else {**sd1_style, 4: comp * 0.25, 5: comp}
    if weight_type == "composition precise":
        if sdxl:
            return {**{i: w * 0.1 for i in range(11)}, 3: w, 6: w}
        return {**{i: w for i in range(16)}, 4: w * 0.25, 5: w, 6: w * 0.1, 7: w * 0.1, 8: w * 0.1}
    raise InvalidArgument(f"weight_type: {weight_type!r} is not one of {', '.join(WEIGHT_TYPES)}")


def layer_weights(weight_type: str, weight: float, places: list[tuple[str, int]], sdxl: bool) -> list[float]:
    """The weight of each cross-attention layer at `places` for `weight_type`."""
    layers = 11 if sdxl else 16
    half = layers / 2
    out = []
    for kind, t in places:
        if weight_type == "linear":
            out.append(weight)
        elif weight_type == "ease in":
            out.append(weight * (0.05 + 0.95 * (1 - t / layers)))
        elif weight_type == "ease out":
            out.append(weight * (0.05 + 0.95 * (t / layers)))
        elif weight_type == "ease in-out":
            out.append(weight * (0.05 + 0.95 * (1 - abs(t - half) / half)))
        elif weight_type == "reverse in-out":
            out.append(weight * (0.05 + 0.95 * (abs(t - half) / half)))
        elif weight_type in _WEAK:
            out.append(weight * 0.2 if kind in _WEAK[weight_type] else weight)
        else:
            out.append(_named(weight_type, weight, sdxl).get(t, 0.0))
    return out
