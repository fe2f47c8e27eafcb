"""ComfyUI's image transforms from its dataset nodes (comfy_extras.nodes_dataset's ImageProcessingNode,
experimental), with its arithmetic:

* per image (a batch is processed image by image and joined again): ResizeImagesByShorterEdge /
  ByLongerEdge (deprecated there; Lanczos to the side given, the other side scaled and truncated),
  CenterCropImages, and the plain tensor maths AdjustBrightness (x * factor), AdjustContrast
  ((x - 0.5) * factor + 0.5), both clamped to 0..1, and NormalizeImages ((x - mean) / std);
* ImageGrid: a list of images (each batch's images in turn) resized to one cell each, left to right
  and top to bottom with black padding between cells.

The resizes, the crop and the grid go through 8-bit PIL images as ComfyUI's do (values truncated to
n / 255), so their results equal its own.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..errors import InvalidArgument
from .types import NodeDef, check_size, register

_MODULE = "comfy_extras.nodes_dataset"


def to_pil(image: torch.Tensor) -> Image.Image:
    """One (H, W, C) image as 8-bit PIL, values truncated as ComfyUI's tensor_to_pil does."""
    if image.shape[-1] not in (3, 4):
        raise InvalidArgument(f"images: {image.shape[-1]} channels; these nodes take RGB or RGBA images")
    return Image.fromarray((image.cpu().numpy() * 255).clip(0, 255).astype(np.uint8))


def from_pil(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image).astype(np.float32) / 255.0)[None]


def _per_image(process):
    """A node running `process(one (H, W, C) image, **options) -> (1, h, w, C)` on each image of the
    batch and joining the results."""
    def node(call, images, **options):
        return (torch.cat([process(image, **options) for image in images], dim=0),)
    return node


def _resized(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    if width < 1 or height < 1:
        raise InvalidArgument(f"images: a {image.shape[1]} x {image.shape[0]} image would be resized to "
                              f"{width} x {height}")
    check_size("resized image", height, width, image.shape[-1])
    return from_pil(to_pil(image).resize((width, height), Image.Resampling.LANCZOS))


def resize_shorter_edge(image, shorter_edge):
    h, w = image.shape[:2]
    if w < h:
        return _resized(image, shorter_edge, int(h * (shorter_edge / w)))
    return _resized(image, int(w * (shorter_edge / h)), shorter_edge)


def resize_longer_edge(image, longer_edge):
    h, w = image.shape[:2]
    if w > h:
        return _resized(image, longer_edge, int(h * (longer_edge / w)))
    return _resized(image, int(w * (longer_edge / h)), longer_edge)


def center_crop(image, width, height):
    h, w = image.shape[:2]
    left, top = max(0, (w - width) // 2), max(0, (h - height) // 2)
    return from_pil(to_pil(image).crop((left, top, min(w, left + width), min(h, top + height))))


def image_grid(call, images, columns, cell_width, cell_height, padding):
    columns, cell_width, cell_height, padding = columns[0], cell_width[0], cell_height[0], padding[0]
    cells = [one for batch in images for one in batch]
    if not cells:
        raise InvalidArgument("images: the list is empty, there is nothing to put in a grid")
    rows = -(-len(cells) // columns)
    width, height = columns * cell_width + (columns - 1) * padding, rows * cell_height + (rows - 1) * padding
    check_size("ImageGrid", height, width, 3)
    grid = Image.new("RGB", (width, height), (0, 0, 0))
    for i, cell in enumerate(cells):
        row, col = divmod(i, columns)
        picture = to_pil(cell).convert("RGB").resize((cell_width, cell_height), Image.Resampling.LANCZOS)
        grid.paste(picture, (col * (cell_width + padding), row * (cell_height + padding)))
    return (from_pil(grid),)


def _tensor_node(fn):
    def node(call, images, **options):
        return (fn(images, **options),)
    return node


def _int(default: int, lo: int, hi: int, tooltip: str, **extra):
    return ("INT", {"default": default, "min": lo, "max": hi, "tooltip": tooltip, **extra})


def _float(default: float, lo: float, hi: float, tooltip: str, **extra):
    return ("FLOAT", {"default": default, "min": lo, "max": hi, "tooltip": tooltip, **extra})


_ONE = {"images": ("IMAGE", {"tooltip": "Image to process."})}
_CROP = {"width": _int(512, 1, 8192, "Crop width."), "height": _int(512, 1, 8192, "Crop height.")}

# name, fn, extra inputs, display name, category, description, deprecated
PER_IMAGE = (
    ("ResizeImagesByShorterEdge", _per_image(resize_shorter_edge),
     {"shorter_edge": _int(512, 1, 8192, "Target dimension for the shorter edge.")},
     "Resize Images by Shorter Edge (DEPRECATED)", "image/transform",
     "Resize images so that the shorter edge matches the specified dimension while preserving aspect ratio.", True),
    ("ResizeImagesByLongerEdge", _per_image(resize_longer_edge),
     {"longer_edge": _int(1024, 1, 8192, "Target dimension for the longer edge.")},
     "Resize Images by Longer Edge (DEPRECATED)", "image/transform",
     "Resize images so that the longer edge matches the specified dimension while preserving aspect ratio.", True),
    ("CenterCropImages", _per_image(center_crop), _CROP, "Crop Image (Center)", "image/transform",
     "Center crop an image to the specified dimensions.", False),
    ("NormalizeImages", _tensor_node(lambda x, mean, std: (x - mean) / std),
     {"mean": _float(0.5, 0.0, 1.0, "Mean value for normalization.", advanced=True),
      "std": _float(0.5, 0.001, 1.0, "Standard deviation for normalization.", advanced=True)},
     "Normalize Image Colors", "image/color", "Normalize images using mean and standard deviation.", False),
    ("AdjustBrightness", _tensor_node(lambda x, factor: (x * factor).clamp(0.0, 1.0)),
     {"factor": _float(1.0, 0.0, 2.0, "Brightness factor. 1.0 = no change, <1.0 = darker, >1.0 = brighter.")},
     "Adjust Brightness", "image/adjustments", "Adjust the brightness of an image.", False),
    ("AdjustContrast", _tensor_node(lambda x, factor: ((x - 0.5) * factor + 0.5).clamp(0.0, 1.0)),
     {"factor": _float(1.0, 0.0, 2.0, "Contrast factor. 1.0 = no change, <1.0 = less contrast, >1.0 = more "
                                      "contrast.")},
     "Adjust Contrast", "image/adjustments", "Adjust the contrast of an image.", False),
)

for _name, _fn, _extra, _display, _category, _description, _deprecated in PER_IMAGE:
    register(NodeDef(
        _name, _fn, {**_ONE, **_extra}, ("IMAGE",), output_names=("images",), category=_category,
        display_name=_display, description=_description, module=_MODULE, experimental=True,
        deprecated=_deprecated))

register(NodeDef(
    "ImageGrid", image_grid,
    {"images": ("IMAGE", {"tooltip": "List of images to process."}),
     "columns": _int(4, 1, 20, "Number of columns in the grid."),
     "cell_width": _int(256, 32, 2048, "Width of each cell in the grid.", advanced=True),
     "cell_height": _int(256, 32, 2048, "Height of each cell in the grid.", advanced=True),
     "padding": _int(4, 0, 50, "Padding between images.", advanced=True)},
    ("IMAGE",), output_names=("images",), category="image/batch", display_name="Make Image Grid",
    description="Arrange multiple images into a grid layout.", module=_MODULE, experimental=True,
    input_is_list=True))
