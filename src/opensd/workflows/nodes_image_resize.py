"""Image nodes of ComfyUI's comfy_extras.nodes_images, with its names, inputs and arithmetic:
ImageAddNoise (seeded Gaussian noise, clipped), ResizeAndPadImage (fit inside a size, centred on
white or black) and ImageScaleToMaxDimension (the longer side to a size). IMAGE is float
(B, H, W, C) in 0..1."""
from __future__ import annotations

import torch

from ..errors import InvalidArgument
from .nodes_image import upscale
from .types import MAX_RESOLUTION, MAX_SEED, NodeDef, check_size, register

_IMAGES = "comfy_extras.nodes_images"


def image_add_noise(call, image, seed, strength):
    """image + strength * N(0, 1), the noise drawn on the CPU from manual_seed(seed) as ComfyUI does."""
    noise = torch.randn(image.size(), generator=torch.Generator().manual_seed(seed)).to(image)
    return ((image + strength * noise).clip(0.0, 1.0),)


register(NodeDef(
    "ImageAddNoise", image_add_noise,
    {"image": ("IMAGE", {}),
     "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True,
                      "tooltip": "The random seed used for creating the noise."}),
     "strength": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01})},
    ("IMAGE",), category="image/filters", display_name="Add Noise to Image", module=_IMAGES))


def _resized(image: torch.Tensor, width: int, height: int, method: str) -> torch.Tensor:
    return upscale(image.movedim(-1, 1), width, height, method, "disabled").movedim(1, -1)


def resize_and_pad_image(call, image, target_width, target_height, padding_color, interpolation):
    """Scaled by the smaller of the two ratios (sizes truncated), centred on the target canvas."""
    _, h, w, c = image.shape
    check_size("ResizeAndPadImage", image.shape[0], target_height, target_width, c)
    scale = min(target_width / w, target_height / h)
    new_w, new_h = max(1, int(w * scale)), max(1, int(h * scale))
    out = torch.full((image.shape[0], target_height, target_width, c), 0.0 if padding_color == "black" else 1.0,
                     dtype=image.dtype)
    y, x = (target_height - new_h) // 2, (target_width - new_w) // 2
    out[:, y:y + new_h, x:x + new_w] = _resized(image, new_w, new_h, interpolation)
    return (out,)


register(NodeDef(
    "ResizeAndPadImage", resize_and_pad_image,
    {"image": ("IMAGE", {}),
     "target_width": ("INT", {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1}),
     "target_height": ("INT", {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1}),
     "padding_color": (["white", "black"], {"advanced": True}),
     "interpolation": (["area", "bicubic", "nearest-exact", "bilinear", "lanczos"], {"advanced": True})},
    ("IMAGE",), category="image/transform", display_name="Resize And Pad Image", module=_IMAGES))


def image_scale_to_max_dimension(call, image, upscale_method, largest_size):
    """The longer side to largest_size, the other in proportion (rounded); a square to a square."""
    if largest_size < 1:
        raise InvalidArgument("largest_size: must be at least 1 pixel")
    h, w = image.shape[1:3]
    if h > w:
        w, h = round(w / h * largest_size), largest_size
    elif w > h:
        w, h = largest_size, round(h / w * largest_size)
    else:
        w = h = largest_size
    return (_resized(image, max(1, w), max(1, h), upscale_method),)


register(NodeDef(
    "ImageScaleToMaxDimension", image_scale_to_max_dimension,
    {"image": ("IMAGE", {}),
     # ComfyUI's list names bilinear twice
     "upscale_method": (["area", "lanczos", "bilinear", "nearest-exact", "bilinear", "bicubic"], {}),
     "largest_size": ("INT", {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 1})},
    ("IMAGE",), category="image/upscaling", display_name="Scale Image to Max Dimension", module=_IMAGES))
