"""ComfyUI's Canny node (comfy_extras.nodes_canny): edges as a white-on-black IMAGE, its thresholds
in kornia's units as ComfyUI's are -- fractions of the gradient of the 0..1 grey image after a 5x5
Gaussian blur (sigma 1), the Sobel kernels normalised to sum 8 -- not OpenCV's 0..255 pixel units.

The gradient is computed here that way; non-maximum suppression and hysteresis are OpenCV's Canny,
as for the ControlNet preprocessor (adapters/preprocessors.canny), fed those derivatives."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InvalidArgument
from .types import NodeDef, register

_GREY = (0.299, 0.587, 0.114)  # kornia's rgb_to_grayscale
_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0
# the gradient's unit in the int16 derivatives OpenCV takes: a 0..1 image's gradient stays below
# 0.5 per axis, and OpenCV caps L2 thresholds at 32767
_UNIT = 32000.0


def _blur_kernel() -> torch.Tensor:
    g = torch.exp(-torch.arange(-2.0, 3.0) ** 2 / 2.0)
    g = g / g.sum()
    return torch.outer(g, g)


def gradients(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H, W, C) image -> x and y gradients (B, H, W) in ComfyUI's (kornia's) units."""
    grey = (image[..., :3] * torch.tensor(_GREY, dtype=image.dtype)).sum(-1)[:, None] if image.shape[-1] >= 3 \
        else image[..., :1].movedim(-1, 1)
    blurred = F.conv2d(F.pad(grey.float(), (2, 2, 2, 2), mode="reflect"), _blur_kernel()[None, None])
    padded = F.pad(blurred, (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(padded, _SOBEL_X[None, None])
    gy = F.conv2d(padded, _SOBEL_X.T.contiguous()[None, None])
    return gx[:, 0], gy[:, 0]


def detect_edges(call, image, low_threshold, high_threshold):
    if low_threshold > high_threshold:
        raise InvalidArgument(f"low_threshold: {low_threshold} is above high_threshold {high_threshold}")
    if min(image.shape[1:3]) < 3:  # the blur's reflected border needs 3 pixels a side
        raise InvalidArgument(f"image: a {image.shape[2]}x{image.shape[1]} image is too small for Canny "
                              "(at least 3x3 pixels)")
    import cv2

    gx, gy = gradients(image)
    edges = []
    for dx, dy in zip(gx, gy):
        as_int16 = [np.ascontiguousarray((d * _UNIT).round().numpy().astype(np.int16)) for d in (dx, dy)]
        edges.append(cv2.Canny(*as_int16, low_threshold * _UNIT, high_threshold * _UNIT, L2gradient=True))
    out = torch.from_numpy(np.stack(edges)).float() / 255.0
    return (out[..., None].repeat(1, 1, 1, 3),)


def _threshold(default: float):
    return ("FLOAT", {"default": default, "min": 0.01, "max": 0.99, "step": 0.01})


register(NodeDef(
    "Canny", detect_edges,
    {"image": ("IMAGE", {}), "low_threshold": _threshold(0.4), "high_threshold": _threshold(0.8)},
    ("IMAGE",), category="image/preprocessors", module="comfy_extras.nodes_canny"))
