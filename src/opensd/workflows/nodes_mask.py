"""Mask nodes with ComfyUI's names, inputs and arithmetic (its comfy_extras/nodes_mask.py and
LoadImageMask): converting between masks and images, solid masks, cropping, combining, growing and
feathering, and pasting images through a mask. A MASK is float (B, H, W) (a lone (H, W) is taken
as a batch of one); 1 = selected."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..image_read import upright
from .compositing import composite
from .nodes_image import check_input_image, image_fingerprint, input_path
from .types import MAX_RESOLUTION, Choices, NodeDef, check_size, register

_MODULE = "comfy_extras.nodes_mask"


def _batch(mask: torch.Tensor) -> torch.Tensor:
    return mask.reshape(-1, mask.shape[-2], mask.shape[-1])


def _int(default: int, lo: int = 0, hi: int = MAX_RESOLUTION):
    return ("INT", {"default": default, "min": lo, "max": hi, "step": 1})


# --- loading and converting ----------------------------------------------------------------------

CHANNELS = ["alpha", "red", "green", "blue"]


def load_image_mask(call, image, channel):
    path = input_path(call.ctx, image)
    if path is None:
        raise FileNotFoundError(f"Invalid image file: {image}")
    with Image.open(path) as img:
        check_size("LoadImageMask", img.height, img.width)
        img = upright(img).convert("RGBA")
        band = channel[0].upper()
        mask = torch.from_numpy(np.asarray(img.getchannel(band), dtype=np.float32) / 255.0)
    return ((1.0 - mask if band == "A" else mask)[None],)


register(NodeDef(
    "LoadImageMask", load_image_mask,
    {"image": (Choices("input_images", strict=False), {"image_upload": True}), "channel": (CHANNELS, {})},
    ("MASK",), category="mask", display_name="Load Image (as Mask)",
    check=check_input_image, fingerprint=image_fingerprint))


def mask_to_image(call, mask):
    return (mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).movedim(1, -1).expand(-1, -1, -1, 3),)


register(NodeDef("MaskToImage", mask_to_image, {"mask": ("MASK", {})}, ("IMAGE",), category="mask",
                 display_name="Convert Mask to Image", module=_MODULE))

IMAGE_CHANNELS = ["red", "green", "blue", "alpha"]


def image_to_mask(call, image, channel):
    return (image[:, :, :, IMAGE_CHANNELS.index(channel)],)


register(NodeDef("ImageToMask", image_to_mask, {"image": ("IMAGE", {}), "channel": (IMAGE_CHANNELS, {})},
                 ("MASK",), category="mask", display_name="Convert Image to Mask", module=_MODULE))


def solid_mask(call, value, width, height):
    return (torch.full((1, height, width), value, dtype=torch.float32),)


register(NodeDef(
    "SolidMask", solid_mask,
    {"value": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
     "width": _int(512, 1), "height": _int(512, 1)},
    ("MASK",), category="mask", module=_MODULE))


def invert_mask(call, mask):
    return (1.0 - mask,)


register(NodeDef("InvertMask", invert_mask, {"mask": ("MASK", {})}, ("MASK",), category="mask", module=_MODULE))


def crop_mask(call, mask, x, y, width, height):
    return (_batch(mask)[:, y:y + height, x:x + width],)


register(NodeDef(
    "CropMask", crop_mask,
    {"mask": ("MASK", {}), "x": _int(0), "y": _int(0), "width": _int(512, 1), "height": _int(512, 1)},
    ("MASK",), category="mask", module=_MODULE))


# --- combining -----------------------------------------------------------------------------------

def _mask_op(op: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if op == "multiply":
        return a * b
    if op == "add":
        return a + b
    if op == "subtract":
        return a - b
    logic = {"and": torch.logical_and, "or": torch.logical_or, "xor": torch.logical_xor}[op]
    return logic(a.round().bool(), b.round().bool()).float()  # masks are rounded to 0/1 first


OPERATIONS = ["multiply", "add", "subtract", "and", "or", "xor"]


def mask_composite(call, destination, source, x, y, operation):
    dest, src = _batch(destination), _batch(source)
    out = dest.clone()
    right, bottom = min(x + src.shape[-1], dest.shape[-1]), min(y + src.shape[-2], dest.shape[-2])
    part = src[:, :bottom - y, :right - x]
    out[:, y:bottom, x:right] = _mask_op(operation, dest[:, y:bottom, x:right], part)
    return (out.clamp(0.0, 1.0),)


register(NodeDef(
    "MaskComposite", mask_composite,
    {"destination": ("MASK", {}), "source": ("MASK", {}), "x": _int(0), "y": _int(0),
     "operation": (OPERATIONS, {})},
    ("MASK",), category="mask", module=_MODULE))


def image_composite_masked(call, destination, source, x, y, resize_source, mask=None):
    if destination.shape[-1] < source.shape[-1]:  # RGBA onto RGB: the source's alpha is dropped
        source = source[..., :destination.shape[-1]]
    elif destination.shape[-1] > source.shape[-1]:  # RGB onto RGBA: the source is opaque
        source = F.pad(source, (0, 1), value=1.0)
    out = composite(destination.clone().movedim(-1, 1), source.movedim(-1, 1), x, y, mask, 1, resize_source)
    return (out.movedim(1, -1),)


register(NodeDef(
    "ImageCompositeMasked", image_composite_masked,
    {"destination": ("IMAGE", {}), "source": ("IMAGE", {}), "x": _int(0), "y": _int(0),
     "resize_source": ("BOOLEAN", {"default": False})},
    ("IMAGE",), optional={"mask": ("MASK", {})}, category="image", module=_MODULE))


# --- growing and feathering ----------------------------------------------------------------------

def _morph(m: torch.Tensor, grow: bool, tapered: bool) -> torch.Tensor:
    """One step of grey dilation (grow) or erosion over a 3x3 footprint, the cross when tapered;
    edges repeat the border pixel (scipy.ndimage's default "reflect" for a 3x3 footprint)."""
    p = F.pad(m[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    h, w = m.shape[-2:]
    shifts = [(dy, dx) for dy in range(3) for dx in range(3) if not (tapered and dy != 1 and dx != 1)]
    stack = torch.stack([p[:, dy:dy + h, dx:dx + w] for dy, dx in shifts])
    return stack.amax(0) if grow else stack.amin(0)


def threshold_mask(call, mask, value):
    return ((mask > value).float(),)


register(NodeDef("ThresholdMask", threshold_mask,
                 {"mask": ("MASK", {}), "value": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01})},
                 ("MASK",), category="mask", module=_MODULE))


def grow_mask(call, mask, expand, tapered_corners):
    out = _batch(mask).float()
    for _ in range(abs(expand)):
        out = _morph(out, expand > 0, tapered_corners)
    return (out,)


register(NodeDef(
    "GrowMask", grow_mask,
    {"mask": ("MASK", {}), "expand": _int(0, -MAX_RESOLUTION), "tapered_corners": ("BOOLEAN", {"default": True})},
    ("MASK",), category="mask", module=_MODULE))


def feather_mask(call, mask, left, top, right, bottom):
    out = _batch(mask).clone()
    w, h = out.shape[-1], out.shape[-2]
    left, right, top, bottom = min(left, w), min(right, w), min(top, h), min(bottom, h)
    # ComfyUI's ramps, including its index -0: the right and bottom ramps' first factor lands on
    # column / row 0 instead of the last one
    for i in range(left):
        out[:, :, i] *= (i + 1.0) / left
    for i in range(right):
        out[:, :, -i] *= (i + 1) / right
    for i in range(top):
        out[:, i, :] *= (i + 1) / top
    for i in range(bottom):
        out[:, -i, :] *= (i + 1) / bottom
    return (out,)


register(NodeDef(
    "FeatherMask", feather_mask,
    {"mask": ("MASK", {}), "left": _int(0), "top": _int(0), "right": _int(0), "bottom": _int(0)},
    ("MASK",), category="mask", module=_MODULE))
