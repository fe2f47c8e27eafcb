"""Image batch and transform nodes with ComfyUI's names, inputs and arithmetic (its
comfy_extras.nodes_images): repeating and picking from a batch, quarter turns, flips and stitching
two images side by side. IMAGE is float (B, H, W, C) in 0..1."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .nodes_image import upscale
from .nodes_latent import FLIPS, ROTATIONS
from .types import MAX_RESOLUTION, NodeDef, check_size, register

_IMAGES = "comfy_extras.nodes_images"


def repeat_image_batch(call, image, amount):
    check_size("RepeatImageBatch", amount * image.shape[0], *image.shape[1:])
    return (image.repeat(amount, 1, 1, 1),)


register(NodeDef(
    "RepeatImageBatch", repeat_image_batch,
    {"image": ("IMAGE", {}), "amount": ("INT", {"default": 1, "min": 1, "max": 4096})},
    ("IMAGE",), category="image/batch", display_name="Repeat Image Batch", module=_IMAGES))


def image_from_batch(call, image, batch_index, length):
    count = image.shape[0]
    if batch_index < 0:  # counted from the end
        batch_index += count
    batch_index = max(0, min(count - 1, batch_index))
    return (image[batch_index:batch_index + min(count - batch_index, length)].clone(),)


register(NodeDef(
    "ImageFromBatch", image_from_batch,
    {"image": ("IMAGE", {}),
     "batch_index": ("INT", {"default": 0, "min": -MAX_RESOLUTION, "max": MAX_RESOLUTION}),
     "length": ("INT", {"default": 1, "min": 1, "max": 4096})},
    ("IMAGE",), category="image/batch", display_name="Get Image from Batch", module=_IMAGES))


def image_rotate(call, image, rotation):
    return (torch.rot90(image, k=ROTATIONS.index(rotation), dims=[2, 1]),)  # clockwise


register(NodeDef(
    "ImageRotate", image_rotate, {"image": ("IMAGE", {}), "rotation": (ROTATIONS, {})},
    ("IMAGE",), category="image/transform", display_name="Rotate Image", module=_IMAGES))


def image_flip(call, image, flip_method):
    return (torch.flip(image, dims=[1 if flip_method.startswith("x") else 2]),)


register(NodeDef(
    "ImageFlip", image_flip, {"image": ("IMAGE", {}), "flip_method": (FLIPS, {})},
    ("IMAGE",), category="image/transform", display_name="Flip Image", module=_IMAGES))


# --- stitching -----------------------------------------------------------------------------------

SPACING_COLOURS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0), "red": (1.0, 0.0, 0.0),
                   "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}


def _to_batch(image: torch.Tensor, batch: int) -> torch.Tensor:
    """Longer by repeats of its last image."""
    extra = batch - image.shape[0]
    return torch.cat([image, image[-1:].repeat(extra, 1, 1, 1)]) if extra > 0 else image


def _centred(image: torch.Tensor, size: int, dim: int, value: float) -> torch.Tensor:
    """Padded along dim (1: height, 2: width) to size, the extra split top/bottom or left/right
    (the odd pixel after)."""
    extra = size - image.shape[dim]
    if extra <= 0:
        return image
    pad = [0, 0, 0, 0] if dim == 2 else [0, 0, 0, 0, 0, 0]
    pad[-2:] = [extra // 2, extra - extra // 2]
    return F.pad(image, pad, value=value)


def _with_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    missing = channels - image.shape[-1]
    return torch.cat([image, image.new_ones(*image.shape[:-1], missing)], dim=-1) if missing > 0 else image


def _gap(spacing_width: int) -> int:
    return spacing_width + spacing_width % 2 if spacing_width > 0 else 0  # even


def _check_stitched_size(image1: torch.Tensor, image2: torch.Tensor, sideways: bool, spacing_width: int) -> None:
    """The stitched image's size, refused before any of its parts is repeated, padded or made."""
    across, along = (1, 2) if sideways else (2, 1)
    shape = [max(image1.shape[0], image2.shape[0]), 0, 0, max(image1.shape[3], image2.shape[3])]
    shape[across] = max(image1.shape[across], image2.shape[across])
    shape[along] = image1.shape[along] + image2.shape[along] + _gap(spacing_width)
    check_size("ImageStitch", *shape)


def image_stitch(call, image1, direction, match_image_size, spacing_width, spacing_color, image2=None):
    if image2 is None:
        return (image1,)
    sideways = direction in ("left", "right")
    colour = SPACING_COLOURS[spacing_color]
    if match_image_size:  # image2 scaled to image1's height (sideways) or width, keeping its aspect
        h1, w1 = image1.shape[1:3]
        aspect = image2.shape[2] / image2.shape[1]
        width, height = (max(1, int(h1 * aspect)), h1) if sideways else (w1, max(1, int(w1 / aspect)))
        image2 = upscale(image2.movedim(-1, 1), width, height, "lanczos", "disabled").movedim(1, -1)
    _check_stitched_size(image1, image2, sideways, spacing_width)
    batch = max(image1.shape[0], image2.shape[0])
    image1, image2 = _to_batch(image1, batch), _to_batch(image2, batch)
    if not match_image_size:  # the smaller one centred on padding: the spacing colour if white or black, else black
        dim = 1 if sideways else 2
        size = max(image1.shape[dim], image2.shape[dim])
        value = colour[0] if spacing_color in ("white", "black") else 0.0
        image1, image2 = _centred(image1, size, dim, value), _centred(image2, size, dim, value)
    channels = max(image1.shape[-1], image2.shape[-1])
    image1, image2 = _with_channels(image1, channels), _with_channels(image2, channels)
    parts = [image2, image1] if direction in ("left", "up") else [image1, image2]
    if spacing_width > 0:
        gap = _gap(spacing_width)
        shape = ((batch, max(image1.shape[1], image2.shape[1]), gap, channels) if sideways
                 else (batch, gap, max(image1.shape[2], image2.shape[2]), channels))
        spacing = image1.new_zeros(shape)
        rgb = min(3, channels)
        spacing[..., :rgb] = torch.tensor(colour[:rgb], dtype=spacing.dtype)
        if channels == 4:
            spacing[..., 3] = 1.0
        parts.insert(1, spacing)
    return (torch.cat(parts, dim=2 if sideways else 1),)


register(NodeDef(
    "ImageStitch", image_stitch,
    {"image1": ("IMAGE", {}),
     "direction": (["right", "down", "left", "up"], {"default": "right"}),
     "match_image_size": ("BOOLEAN", {"default": True}),
     "spacing_width": ("INT", {"default": 0, "min": 0, "max": 1024, "step": 2, "advanced": True}),
     "spacing_color": (list(SPACING_COLOURS), {"default": "white", "advanced": True})},
    ("IMAGE",), optional={"image2": ("IMAGE", {})}, category="image/transform", display_name="Stitch Images",
    module=_IMAGES,
    description=("Stitches image2 to image1 in the specified direction.\nIf image2 is not provided, returns image1 "
                 "unchanged.\nOptional spacing can be added between images.")))
