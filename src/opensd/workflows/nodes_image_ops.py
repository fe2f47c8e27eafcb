"""Image nodes with ComfyUI's names, inputs and arithmetic: scaling, inverting, batching, cropping
and the post-processing filters (blend, blur, sharpen). IMAGE is float (B, H, W, C) in 0..1."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import InvalidArgument
from .nodes_image import IMAGE_METHODS, preview_image, upscale
from .types import MAX_RESOLUTION, NodeDef, check_size, register

_POST = "comfy_extras.nodes_post_processing"


def _scaled(image: torch.Tensor, width: int, height: int, method: str) -> torch.Tensor:
    return upscale(image.movedim(-1, 1), width, height, method, "disabled").movedim(1, -1)


def image_scale_by(call, image, upscale_method, scale_by):
    return (_scaled(image, round(image.shape[2] * scale_by), round(image.shape[1] * scale_by), upscale_method),)


register(NodeDef(
    "ImageScaleBy", image_scale_by,
    {"image": ("IMAGE", {}), "upscale_method": (IMAGE_METHODS, {}),
     "scale_by": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 8.0, "step": 0.01})},
    ("IMAGE",), category="image/upscaling", display_name="Upscale Image By"))


def image_scale_to_total_pixels(call, image, upscale_method, megapixels):
    total = int(megapixels * 1024 * 1024)
    scale = math.sqrt(total / (image.shape[2] * image.shape[1]))
    return (_scaled(image, round(image.shape[2] * scale), round(image.shape[1] * scale), upscale_method),)


register(NodeDef(
    "ImageScaleToTotalPixels", image_scale_to_total_pixels,
    {"image": ("IMAGE", {}), "upscale_method": (IMAGE_METHODS, {}),
     "megapixels": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 16.0, "step": 0.01})},
    ("IMAGE",), category="image/upscaling", module=_POST))


def image_invert(call, image):
    return (1.0 - image,)


register(NodeDef("ImageInvert", image_invert, {"image": ("IMAGE", {})}, ("IMAGE",), category="image",
                 display_name="Invert Image"))


def image_batch(call, image1, image2):
    if image1.shape[1:] != image2.shape[1:]:
        image2 = upscale(image2.movedim(-1, 1), image1.shape[2], image1.shape[1], "bilinear", "center").movedim(1, -1)
    return (torch.cat((image1, image2), dim=0),)


register(NodeDef("ImageBatch", image_batch, {"image1": ("IMAGE", {}), "image2": ("IMAGE", {})}, ("IMAGE",),
                 category="image", display_name="Batch Images"))


def empty_image(call, width, height, batch_size=1, color=0):
    check_size("EmptyImage", batch_size, height, width, 3)
    rgb = torch.tensor([(color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF], dtype=torch.float32) / 255.0
    return (rgb.expand(batch_size, height, width, 3).clone(),)


register(NodeDef(
    "EmptyImage", empty_image,
    {"width": ("INT", {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1}),
     "height": ("INT", {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1}),
     "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096}),
     "color": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFF, "step": 1, "display": "color"})},
    ("IMAGE",), category="image"))


def get_image_size(call, image, unique_id=None):  # unique_id: ComfyUI shows the size on the node
    return image.shape[2], image.shape[1], image.shape[0]


register(NodeDef(
    "GetImageSize", get_image_size, {"image": ("IMAGE", {})}, ("INT", "INT", "INT"),
    output_names=("width", "height", "batch_size"), hidden={"unique_id": "UNIQUE_ID"}, category="image",
    display_name="Get Image Size", module="comfy_extras.nodes_images",
    description="Returns the width, height, and batch size of the image."))


def get_latent_size(call, latent, unique_id=None):
    """Width, height, frames (1 for an image latent) and batch size of a LATENT's samples."""
    samples = latent["samples"]
    if samples.ndim == 5:
        batch, _, frames, height, width = samples.shape
    elif samples.ndim == 4:
        (batch, _, height, width), frames = samples.shape, 1
    else:
        raise InvalidArgument(f"latent: samples of shape {tuple(samples.shape)}, expected (batch, channels, "
                              "height, width) or (batch, channels, frames, height, width)")
    return width, height, frames, batch


register(NodeDef(
    "GetLatentSize", get_latent_size,
    {"latent": ("LATENT", {"tooltip": "The image or video latent to inspect."})}, ("INT", "INT", "INT", "INT"),
    output_names=("width", "height", "frames", "batch_size"), hidden={"unique_id": "UNIQUE_ID"}, category="latent",
    display_name="Get Image/Video Latent Size", module="comfy_extras.nodes_images",
    description="Returns the width, height, frame count, and batch size of an image or video latent."))


def _int(default: int, lo: int):
    return ("INT", {"default": default, "min": lo, "max": MAX_RESOLUTION, "step": 1})


def image_crop(call, image, width, height, x, y):
    x, y = min(x, image.shape[2] - 1), min(y, image.shape[1] - 1)
    return (image[:, y:y + height, x:x + width, :],)


register(NodeDef(
    "ImageCrop", image_crop,
    {"image": ("IMAGE", {}), "width": _int(512, 1), "height": _int(512, 1), "x": _int(0, 0), "y": _int(0, 0)},
    ("IMAGE",), category="image/transform", module="comfy_extras.nodes_images"))


def image_crop_v2(call, image, crop_region):
    """ImageCrop's slice from a BOUNDING_BOX, and a preview of the crop (ComfyUI shows it on the node)."""
    x, y = min(crop_region["x"], image.shape[2] - 1), min(crop_region["y"], image.shape[1] - 1)
    crop = image[:, y:y + crop_region["height"], x:x + crop_region["width"], :]
    return {"result": (crop,), "ui": preview_image(call, crop)["ui"]}


register(NodeDef(
    "ImageCropV2", image_crop_v2,
    {"image": ("IMAGE", {}),
     "crop_region": ("BOUNDING_BOX", {"default": {"x": 0, "y": 0, "width": 512, "height": 512}, "socketless": True,
                                      "component": "ImageCrop"})},
    ("IMAGE",), category="image/transform", display_name="Crop Image", module="comfy_extras.nodes_images",
    description="Crop an image to the specified dimensions."))


# --- post-processing -----------------------------------------------------------------------------

def _soft_light_g(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x <= 0.25, ((16 * x - 12) * x + 4) * x, torch.sqrt(x))


BLEND_MODES = {
    "normal": lambda a, b: b,
    "multiply": lambda a, b: a * b,
    "screen": lambda a, b: 1 - (1 - a) * (1 - b),
    "overlay": lambda a, b: torch.where(a <= 0.5, 2 * a * b, 1 - 2 * (1 - a) * (1 - b)),
    "soft_light": lambda a, b: torch.where(b <= 0.5, a - (1 - 2 * b) * a * (1 - a), a + (2 * b - 1) * (_soft_light_g(a) - a)),
    "difference": lambda a, b: a - b,
}


def image_blend(call, image1, image2, blend_factor, blend_mode):
    if image1.shape != image2.shape:
        image2 = upscale(image2.movedim(-1, 1), image1.shape[2], image1.shape[1], "bicubic", "center").movedim(1, -1)
    blended = BLEND_MODES[blend_mode](image1, image2)
    return ((image1 * (1 - blend_factor) + blended * blend_factor).clamp(0, 1),)


register(NodeDef(
    "ImageBlend", image_blend,
    {"image1": ("IMAGE", {}), "image2": ("IMAGE", {}),
     "blend_factor": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01}),
     "blend_mode": (list(BLEND_MODES), {})},
    ("IMAGE",), category="image/postprocessing", module=_POST))


def gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    """ComfyUI's kernel: a Gaussian over coordinates spread evenly in [-1, 1] across the kernel (not
    in pixels), normalised to sum 1."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    g = torch.exp(-(x * x + y * y) / (2.0 * sigma * sigma))
    return g / g.sum()


def _filter(image: torch.Tensor, kernel: torch.Tensor, radius: int) -> torch.Tensor:
    """Each channel convolved with kernel over the image with reflected borders."""
    c = image.shape[-1]
    x = F.pad(image.movedim(-1, 1), (radius,) * 4, mode="reflect")
    out = F.conv2d(x, kernel.repeat(c, 1, 1).unsqueeze(1).to(x), groups=c)
    return out.movedim(1, -1)


def image_blur(call, image, blur_radius, sigma):
    return (_filter(image, gaussian_kernel(blur_radius * 2 + 1, sigma), blur_radius),)


register(NodeDef(
    "ImageBlur", image_blur,
    {"image": ("IMAGE", {}), "blur_radius": ("INT", {"default": 1, "min": 1, "max": 31, "step": 1}),
     "sigma": ("FLOAT", {"default": 1.0, "min": 0.1, "max": 10.0, "step": 0.1})},
    ("IMAGE",), category="image/postprocessing", module=_POST))


def image_sharpen(call, image, sharpen_radius, sigma, alpha):
    size = sharpen_radius * 2 + 1
    kernel = gaussian_kernel(size, sigma) * -(alpha * 10)
    kernel[size // 2, size // 2] -= kernel.sum() - 1.0  # the kernel sums to 1: flat areas stay
    return (_filter(image, kernel, sharpen_radius).clamp(0, 1),)


register(NodeDef(
    "ImageSharpen", image_sharpen,
    {"image": ("IMAGE", {}), "sharpen_radius": ("INT", {"default": 1, "min": 1, "max": 31, "step": 1}),
     "sigma": ("FLOAT", {"default": 1.0, "min": 0.1, "max": 10.0, "step": 0.01}),
     "alpha": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 5.0, "step": 0.01})},
    ("IMAGE",), category="image/postprocessing", module=_POST))
