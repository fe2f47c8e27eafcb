"""Alpha compositing nodes with ComfyUI's names, inputs and arithmetic (comfy_extras
.nodes_compositing): PorterDuffImageComposite with its 18 modes, SplitImageWithAlpha and
JoinImageWithAlpha. A MASK is 1 - alpha (ComfyUI's convention: 1 = transparent)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InvalidArgument
from .nodes_image import upscale
from .types import NodeDef, check_size, register


def _lighter(s, d, sa, da, pick):
    return (1 - da) * s + (1 - sa) * d + pick(s, d)


# mode: (alpha(sa, da), premultiplied colour(s, d, sa, da))
PORTER_DUFF = {
    "ADD": (lambda sa, da: (sa + da).clamp(0, 1), lambda s, d, sa, da: (s + d).clamp(0, 1)),
    "CLEAR": (lambda sa, da: torch.zeros_like(da), lambda s, d, sa, da: torch.zeros_like(d)),
    "DARKEN": (lambda sa, da: sa + da - sa * da, lambda s, d, sa, da: _lighter(s, d, sa, da, torch.min)),
    "DST": (lambda sa, da: da, lambda s, d, sa, da: d),
    "DST_ATOP": (lambda sa, da: sa, lambda s, d, sa, da: sa * d + (1 - da) * s),
    "DST_IN": (lambda sa, da: sa * da, lambda s, d, sa, da: d * sa),
    "DST_OUT": (lambda sa, da: (1 - sa) * da, lambda s, d, sa, da: (1 - sa) * d),
    "DST_OVER": (lambda sa, da: da + (1 - da) * sa, lambda s, d, sa, da: d + (1 - da) * s),
    "LIGHTEN": (lambda sa, da: sa + da - sa * da, lambda s, d, sa, da: _lighter(s, d, sa, da, torch.max)),
    "MULTIPLY": (lambda sa, da: sa * da, lambda s, d, sa, da: s * d),
    "OVERLAY": (lambda sa, da: sa + da - sa * da,
                lambda s, d, sa, da: torch.where(2 * d < da, 2 * s * d, sa * da - 2 * (da - s) * (sa - d))),
    "SCREEN": (lambda sa, da: sa + da - sa * da, lambda s, d, sa, da: s + d - s * d),
    "SRC": (lambda sa, da: sa, lambda s, d, sa, da: s),
    "SRC_ATOP": (lambda sa, da: da, lambda s, d, sa, da: da * s + (1 - sa) * d),
    "SRC_IN": (lambda sa, da: sa * da, lambda s, d, sa, da: s * da),
    "SRC_OUT": (lambda sa, da: (1 - da) * sa, lambda s, d, sa, da: (1 - da) * s),
    "SRC_OVER": (lambda sa, da: sa + (1 - sa) * da, lambda s, d, sa, da: s + (1 - sa) * d),
    "XOR": (lambda sa, da: (1 - da) * sa + (1 - sa) * da, lambda s, d, sa, da: (1 - da) * s + (1 - sa) * d),
}


def porter_duff(src: torch.Tensor, src_mask: torch.Tensor, dst: torch.Tensor, dst_mask: torch.Tensor,
                mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, W, C) images and (H, W, 1) masks -> the composite and its mask, through premultiplied
    alpha as ComfyUI computes them (colour 0 where the result's alpha is at most 1e-5)."""
    sa, da = 1 - src_mask, 1 - dst_mask
    alpha_fn, colour_fn = PORTER_DUFF[mode]
    alpha, colour = alpha_fn(sa, da), colour_fn(src * sa, dst * da, sa, da)
    colour = torch.where(alpha > 1e-5, colour / alpha, torch.zeros_like(colour)).clamp(0, 1)
    return colour, 1 - alpha


def _fitted(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(H, W, C) resized bicubically with a centre crop (ComfyUI's common_upscale)."""
    return upscale(x.movedim(-1, 0)[None], width, height, "bicubic", "center")[0].movedim(0, -1)


def porter_duff_image_composite(call, source, source_alpha, destination, destination_alpha, mode):
    if source.shape[-1] != destination.shape[-1]:
        raise InvalidArgument(f"source: {source.shape[-1]} channels cannot be composited onto "
                              f"{destination.shape[-1]} (ComfyUI requires the same number)")
    images, masks = [], []
    for i in range(min(len(source), len(source_alpha), len(destination), len(destination_alpha))):
        src, dst = source[i], destination[i]
        src_mask, dst_mask = source_alpha[i][..., None], destination_alpha[i][..., None]
        h, w = dst.shape[:2]
        if dst_mask.shape[:2] != (h, w):
            dst_mask = _fitted(dst_mask, h, w)
        if src.shape != dst.shape:
            src = _fitted(src, h, w)
        if src_mask.shape != dst_mask.shape:
            src_mask = _fitted(src_mask, *dst_mask.shape[:2])
        image, mask = porter_duff(src, src_mask, dst, dst_mask, mode)
        images.append(image)
        masks.append(mask[..., 0])
    return torch.stack(images), torch.stack(masks)


def split_image_with_alpha(call, image):
    alpha = image[..., 3] if image.shape[-1] > 3 else torch.ones_like(image[..., 0])
    return image[..., :3], 1.0 - alpha


def join_image_with_alpha(call, image, alpha):
    """The image's RGB with 1 - mask as its alpha, the mask stretched (bilinear) to the image."""
    check_size("JoinImageWithAlpha", alpha.reshape(-1, *alpha.shape[-2:]).shape[0], *image.shape[1:3])
    alpha = 1.0 - F.interpolate(alpha.reshape(-1, 1, *alpha.shape[-2:]), size=tuple(image.shape[1:3]),
                                mode="bilinear")[:, 0]
    count = min(len(image), len(alpha))
    return (torch.cat([image[:count, ..., :3], alpha[:count, ..., None]], dim=-1),)


_COMPOSITING = "comfy_extras.nodes_compositing"
register(NodeDef(
    "PorterDuffImageComposite", porter_duff_image_composite,
    {"source": ("IMAGE", {}), "source_alpha": ("MASK", {}), "destination": ("IMAGE", {}),
     "destination_alpha": ("MASK", {}), "mode": (list(PORTER_DUFF), {"default": "DST"})},
    ("IMAGE", "MASK"), category="mask/compositing", display_name="Porter-Duff Image Composite", module=_COMPOSITING))
register(NodeDef(
    "SplitImageWithAlpha", split_image_with_alpha, {"image": ("IMAGE", {})}, ("IMAGE", "MASK"),
    category="mask/compositing", display_name="Split Image with Alpha", module=_COMPOSITING))
register(NodeDef(
    "JoinImageWithAlpha", join_image_with_alpha, {"image": ("IMAGE", {}), "alpha": ("MASK", {})}, ("IMAGE",),
    category="mask/compositing", display_name="Join Image with Alpha", module=_COMPOSITING))
