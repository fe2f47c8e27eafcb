"""Image filter nodes with ComfyUI's names, inputs and arithmetic: Morphology with a flat square
kernel and ImageRGBToYUV / ImageYUVToRGB (comfy_extras.nodes_morphology, kornia's operations and
BT.601 constants), ImageQuantize (nodes_post_processing, Pillow's median-cut palette, optional
Floyd-Steinberg or ordered Bayer dithering) and ImageColorToMask (nodes_mask). IMAGE is float
(B, H, W, C) in 0..1."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .types import NodeDef, register

# --- morphology ----------------------------------------------------------------------------------


def _window_max(x: torch.Tensor, size: int) -> torch.Tensor:
    """Max over a size x size window per (B, C, H, W) pixel, kornia's placement (size // 2 before,
    the rest after), pixels outside the image ignored (its geodesic border). Rows then columns:
    O(size) per pixel, so kernel_size 999 on a large image stays cheap."""
    before, after = size // 2, size - size // 2 - 1
    x = F.max_pool2d(F.pad(x, [0, 0, before, after], value=-math.inf), (size, 1), stride=1)
    return F.max_pool2d(F.pad(x, [before, after, 0, 0], value=-math.inf), (1, size), stride=1)


def dilate(x: torch.Tensor, size: int) -> torch.Tensor:
    return _window_max(x, size)


def erode(x: torch.Tensor, size: int) -> torch.Tensor:
    return -_window_max(-x, size)


MORPHOLOGY = {
    "erode": erode,
    "dilate": dilate,
    "open": lambda x, k: dilate(erode(x, k), k),
    "close": lambda x, k: erode(dilate(x, k), k),
    "gradient": lambda x, k: dilate(x, k) - erode(x, k),
    "bottom_hat": lambda x, k: erode(dilate(x, k), k) - x,
    "top_hat": lambda x, k: x - dilate(erode(x, k), k),
}


def morphology(call, image, operation, kernel_size):
    return (MORPHOLOGY[operation](image.movedim(-1, 1), kernel_size).movedim(1, -1),)


register(NodeDef(
    "Morphology", morphology,
    {"image": ("IMAGE", {}), "operation": (list(MORPHOLOGY), {}),
     "kernel_size": ("INT", {"default": 3, "min": 3, "max": 999, "step": 1})},
    ("IMAGE",), category="image/postprocessing", display_name="ImageMorphology",
    module="comfy_extras.nodes_morphology"))


def rgb_to_yuv(call, image):
    """Y, Cb and Cr (kornia's rgb_to_ycbcr), each as a grey image of the input's channels."""
    r, g, b = image[..., 0:1], image[..., 1:2], image[..., 2:3]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb, cr = (b - y) * 0.564 + 0.5, (r - y) * 0.713 + 0.5
    return tuple(c.expand_as(image) for c in (y, cb, cr))


def yuv_to_rgb(call, Y, U, V):  # noqa: N803  (ComfyUI's input names)
    y, cb, cr = (c.mean(-1, keepdim=True) - off for c, off in ((Y, 0.0), (U, 0.5), (V, 0.5)))
    return (torch.cat([y + 1.403 * cr, y - 0.714 * cr - 0.344 * cb, y + 1.773 * cb], dim=-1),)


register(NodeDef(
    "ImageRGBToYUV", rgb_to_yuv, {"image": ("IMAGE", {})}, ("IMAGE", "IMAGE", "IMAGE"), output_names=("Y", "U", "V"),
    category="image/batch", module="comfy_extras.nodes_morphology"))
register(NodeDef(
    "ImageYUVToRGB", yuv_to_rgb, {"Y": ("IMAGE", {}), "U": ("IMAGE", {}), "V": ("IMAGE", {})}, ("IMAGE",),
    category="image/batch", module="comfy_extras.nodes_morphology"))


# --- colours -------------------------------------------------------------------------------------

DITHERS = ["none", "floyd-steinberg", "bayer-2", "bayer-4", "bayer-8", "bayer-16"]


def bayer_matrix(n: int) -> np.ndarray:
    """The 2^n x 2^n ordered-dither matrix, centred on 0 and scaled to -0.5..0.5."""
    if n == 0:
        return np.zeros((1, 1), np.float64)
    q = 4 ** n
    m = q * bayer_matrix(n - 1)
    return np.block([[m - 1.5, m + 0.5], [m + 1.5, m - 0.5]]) / q


def _quantized(im: Image.Image, colors: int, dither: str) -> Image.Image:
    palette = im.quantize(colors=colors)  # median cut; then mapped onto it (Pillow issue 5836)
    if dither == "none":
        return im.quantize(palette=palette, dither=Image.Dither.NONE)
    if dither == "floyd-steinberg":
        return im.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG)
    order = int(dither.split("-")[-1])
    spread = 2 * 256 / (len(palette.getpalette()) // 3)
    matrix = spread * bayer_matrix(int(math.log2(order))) + 0.5
    pixels = np.asarray(im).astype(np.float32)
    reps = (math.ceil(pixels.shape[0] / order), math.ceil(pixels.shape[1] / order))
    pixels += np.tile(matrix, reps)[:pixels.shape[0], :pixels.shape[1], None].astype(np.float32)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).quantize(palette=palette, dither=Image.Dither.NONE)


def image_quantize(call, image, colors, dither):
    """Each image's RGB reduced to `colors` colours (bytes truncated as ComfyUI makes them); an
    alpha channel passes through."""
    out = image.clone()
    for i in range(image.shape[0]):
        rgb = (image[i, ..., :3].clamp(0, 1) * 255).to(torch.uint8).numpy()
        im = _quantized(Image.fromarray(rgb, mode="RGB"), colors, dither)
        out[i, ..., :3] = torch.from_numpy(np.array(im.convert("RGB"))).float() / 255
    return (out,)


register(NodeDef(
    "ImageQuantize", image_quantize,
    {"image": ("IMAGE", {}), "colors": ("INT", {"default": 256, "min": 1, "max": 256, "step": 1}),
     "dither": (DITHERS, {})},
    ("IMAGE",), category="image/postprocessing", module="comfy_extras.nodes_post_processing"))


def image_color_to_mask(call, image, color):
    """1 where a pixel's RGB, rounded to bytes, is exactly 0xRRGGBB `color`."""
    rgb = (image[..., :3].clamp(0, 1) * 255).round().to(torch.int64)
    packed = (rgb[..., 0] << 16) + (rgb[..., 1] << 8) + rgb[..., 2]
    return ((packed == color).float(),)


register(NodeDef(
    "ImageColorToMask", image_color_to_mask,
    {"image": ("IMAGE", {}),
     "color": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFF, "step": 1, "display": "number"})},
    ("MASK",), category="mask", module="comfy_extras.nodes_mask"))
