"""Image nodes of ComfyUI's comfy_extras.nodes_images, with its names, inputs and arithmetic:
ImageAddNoise (seeded Gaussian noise, clipped), ResizeAndPadImage (fit inside a size, centred on
white or black) and ImageScaleToMaxDimension (the longer side to a size); and nodes_post_processing's
ResizeImageMaskNode (an image or a mask resized one of nine ways, chosen with a DynamicCombo).
IMAGE is float (B, H, W, C) in 0..1, MASK (B, H, W)."""
from __future__ import annotations

import math

import torch

from ..errors import InvalidArgument
from .dynamic_combo import DynamicCombo, Option
from .nodes_image import CROPS, IMAGE_METHODS, upscale
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


def _resized(x: torch.Tensor, width: int, height: int, method: str, crop: str = "disabled") -> torch.Tensor:
    """An IMAGE (B, H, W, C) or a MASK (B, H, W) resized to height x width (ComfyUI's common_upscale)."""
    if x.ndim == 4:
        return upscale(x.movedim(-1, 1), width, height, method, crop).movedim(1, -1)
    return upscale(x.unsqueeze(1), width, height, method, crop).squeeze(1)


def _edge_scaled(h: int, w: int, size: int, longer: bool) -> tuple[int, int]:
    """(width, height) with the longer (or shorter) side at `size`, the other in proportion, rounded;
    a square to size x size."""
    if h == w:
        return size, size
    if (h > w) == longer:
        return round(w / h * size), size
    return size, round(h / w * size)


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
    w, h = _edge_scaled(*image.shape[1:3], largest_size, longer=True)
    return (_resized(image, max(1, w), max(1, h), upscale_method),)


register(NodeDef(
    "ImageScaleToMaxDimension", image_scale_to_max_dimension,
    {"image": ("IMAGE", {}),
     # ComfyUI's list names bilinear twice
     "upscale_method": (["area", "lanczos", "bilinear", "nearest-exact", "bilinear", "bicubic"], {}),
     "largest_size": ("INT", {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 1})},
    ("IMAGE",), category="image/upscaling", display_name="Scale Image to Max Dimension", module=_IMAGES))


# --- ResizeImageMaskNode ------------------------------------------------------------------------

def _scale_dimensions(x, width, height, method, crop="disabled"):
    """width x height; one side 0 follows the other in proportion (at least 1); both 0: unchanged."""
    if width == 0 and height == 0:
        return x
    h, w = x.shape[1:3]
    if width == 0:
        width = max(1, round(w * height / h))
    elif height == 0:
        height = max(1, round(h * width / w))
    return _resized(x, width, height, method, crop)


def _scale_total_pixels(x, megapixels, multiple, method):
    """About megapixels * 2**20 pixels in the same aspect, each side a multiple of `multiple` (at least one)."""
    h, w = x.shape[1:3]
    scale = math.sqrt(int(megapixels * 1024 * 1024) / (w * h))
    return _resized(x, max(1, round(w * scale / multiple)) * multiple, max(1, round(h * scale / multiple)) * multiple,
                    method)


def _scale_to_multiple(x, multiple, method):
    """Each side down to a multiple of `multiple`: scaled to cover that size, then centre-cropped. A
    side smaller than `multiple`, or sides already multiples: unchanged."""
    h, w = x.shape[1:3]
    target_w, target_h = w // multiple * multiple, h // multiple * multiple
    if multiple <= 1 or target_w == 0 or target_h == 0 or (target_w, target_h) == (w, h):
        return x
    if target_w / w >= target_h / h:
        scaled_w, scaled_h = target_w, max(target_h, math.ceil(h * target_w / w))
    else:
        scaled_w, scaled_h = max(target_w, math.ceil(w * target_h / h)), target_h
    x = _resized(x, scaled_w, scaled_h, method)
    x0, y0 = (scaled_w - target_w) // 2, (scaled_h - target_h) // 2
    return x[:, y0:y0 + target_h, x0:x0 + target_w]


_RESIZE = {  # ComfyUI's ResizeType: resize_type's key -> fn(input, chosen option's values, scale_method)
    "scale dimensions": lambda x, o, m: _scale_dimensions(x, o["width"], o["height"], m, o["crop"]),
    "scale by multiplier": lambda x, o, m: _resized(x, round(x.shape[2] * o["multiplier"]),
                                                    round(x.shape[1] * o["multiplier"]), m),
    "scale longer dimension": lambda x, o, m: _resized(x, *_edge_scaled(*x.shape[1:3], o["longer_size"], True), m),
    "scale shorter dimension": lambda x, o, m: _resized(x, *_edge_scaled(*x.shape[1:3], o["shorter_size"], False),
                                                        m),
    "scale width": lambda x, o, m: _scale_dimensions(x, o["width"], 0, m),
    "scale height": lambda x, o, m: _scale_dimensions(x, 0, o["height"], m),
    "scale total pixels": lambda x, o, m: _scale_total_pixels(x, o["megapixels"], o["multiple"], m),
    "match size": lambda x, o, m: _resized(x, o["match"].shape[2], o["match"].shape[1], m, o["crop"]),
    "scale to multiple": lambda x, o, m: _scale_to_multiple(x, o["multiple"], m),
}


def resize_image_mask(call, input, resize_type, scale_method):
    """`resize_type`: the DynamicCombo's dict, {its option's inputs..., "resize_type": the key}."""
    if input.ndim not in (3, 4):
        raise InvalidArgument(f"input: expected an IMAGE (B, H, W, C) or a MASK (B, H, W), got shape "
                              f"{tuple(input.shape)}")
    return (_RESIZE[resize_type["resize_type"]](input, resize_type, scale_method),)


def _size_input(default: int, tooltip: str, least: int = 0) -> tuple:
    return ("INT", {"default": default, "min": least, "max": MAX_RESOLUTION, "step": 1, "tooltip": tooltip})


_CROP = (CROPS, {"default": "center", "tooltip": "How to handle aspect ratio mismatch: 'disabled' stretches to fit, "
                                                 "'center' crops to maintain aspect ratio."})
_KEEPS = "Aspect ratio is preserved."
register(NodeDef(
    "ResizeImageMaskNode", resize_image_mask,
    {"input": ("COMFY_MATCHTYPE_V3", {"template": {"template_id": "input_type", "allowed_types": "IMAGE,MASK"}}),
     "resize_type": (DynamicCombo((
         Option("scale dimensions", {
             "width": _size_input(512, "Target width in pixels. Set to 0 to auto-calculate from height while "
                                       "preserving aspect ratio."),
             "height": _size_input(512, "Target height in pixels. Set to 0 to auto-calculate from width while "
                                        "preserving aspect ratio."),
             "crop": _CROP}),
         Option("scale by multiplier", {
             "multiplier": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 8.0, "step": 0.01,
                                      "tooltip": "Scale factor (e.g., 2.0 doubles size, 0.5 halves size)."})}),
         Option("scale longer dimension", {
             "longer_size": _size_input(512, f"The longer edge will be resized to this value. {_KEEPS}")}),
         Option("scale shorter dimension", {
             "shorter_size": _size_input(512, f"The shorter edge will be resized to this value. {_KEEPS}")}),
         Option("scale width", {
             "width": _size_input(512, "Target width in pixels. Height auto-adjusts to preserve aspect ratio.")}),
         Option("scale height", {
             "height": _size_input(512, "Target height in pixels. Width auto-adjusts to preserve aspect ratio.")}),
         Option("scale total pixels", {
             "megapixels": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 16.0, "step": 0.01, "tooltip":
                                      f"Target total megapixels (e.g., 1.0 \u2248 1024\u00d71024). {_KEEPS}"}),
             "multiple": _size_input(1, "Round width and height to the nearest multiple of this number.", least=1)}),
         Option("match size", {
             "match": ("IMAGE,MASK", {"tooltip": "Resize input to match the dimensions of this reference image or "
                                                 "mask."}),
             "crop": _CROP}),
         Option("scale to multiple", {
             "multiple": _size_input(8, "Resize so width and height are divisible by this number. Useful for latent "
                                        "alignment (e.g., 8 or 64).", least=1)}),
     )), {"tooltip": "Select how to resize: by exact dimensions, scale factor, matching another image, etc."}),
     "scale_method": (IMAGE_METHODS, {"default": "area", "tooltip": "Interpolation algorithm. 'area' is best for "
                                      "downscaling, 'lanczos' for upscaling, 'nearest-exact' for pixel art."})},
    ("COMFY_MATCHTYPE_V3",), output_names=("resized",), category="image/transform", display_name="Resize Image/Mask",
    description="Resize an image or mask using various scaling methods.", module="comfy_extras.nodes_post_processing"))
