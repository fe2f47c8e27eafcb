"""An image as Qwen2.5-VL's vision tower takes it, as transformers' Qwen2VLImageProcessor (the
torchvision one) prepares it: resized to whole 28-pixel blocks (2x2 patches of 14) keeping the
aspect ratio and the pixel count within [min_pixels, max_pixels] (`smart_resize`), bicubic with
antialiasing on the 8-bit image (PyTorch's 8-bit kernel), scaled to [0, 1], normalised with
CLIP's mean and std, cut into 14x14 patches in merge-unit order (2x2 patches consecutive, units
row by row), each repeated over the 2 frames of the tower's temporal kernel and flattened
(channel, frame, row, column). The defaults are Qwen2.5-VL's released processor settings (also
Qwen-Image-Edit's processor/)."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import InvalidArgument

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MIN_PIXELS = 56 * 56
MAX_PIXELS = 28 * 28 * 16384  # 12845056
PATCH, MERGE, FRAMES = 14, 2, 2


def smart_resize(height: int, width: int, factor: int = PATCH * MERGE, min_pixels: int = MIN_PIXELS,
                 max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(height, width) rounded to multiples of `factor`, scaled (aspect kept) into the pixel range."""
    if max(height, width) > 200 * min(height, width):
        raise InvalidArgument(f"a {width}x{height} image is too narrow for the vision encoder "
                              "(aspect ratio over 200)")
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def _resized(image: Image.Image, height: int, width: int) -> torch.Tensor:
    """(3, height, width) float holding 8-bit values: PyTorch's native 8-bit bicubic (antialiased)
    on the CPU, which is what torchvision runs there (its float path rounds differently)."""
    x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
    if x.shape[1:] != (height, width):
        x = F.interpolate(x[None], size=(height, width), mode="bicubic", align_corners=False, antialias=True)[0]
    return x.float()


def vl_patches(image: Image.Image, min_pixels: int = MIN_PIXELS,
               max_pixels: int = MAX_PIXELS) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """(patches (n, 3 * 2 * 14 * 14) fp32, grid (1, rows, columns) in patches) for one image, as
    the processor's (pixel_values, image_grid_thw)."""
    height, width = smart_resize(image.height, image.width, min_pixels=min_pixels, max_pixels=max_pixels)
    return _patchify(_resized(image, height, width) / 255.0)


def comfy_vl_patches(image: torch.Tensor, min_pixels: int = MIN_PIXELS,
                     max_pixels: int = MAX_PIXELS) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """The same from ComfyUI's IMAGE (H, W, 3+) floats in [0, 1], as ComfyUI's own Qwen2.5-VL
    encoder prepares it: smart_resize's size, but plain bilinear on the floats (no antialiasing, no
    8-bit rounding)."""
    x = image[..., :3].permute(2, 0, 1).float()
    height, width = smart_resize(x.shape[1], x.shape[2], min_pixels=min_pixels, max_pixels=max_pixels)
    x = F.interpolate(x[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    return _patchify(x)


def _patchify(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """(3, H, W) in [0, 1], H and W whole 28-pixel blocks -> (patches, grid), normalised."""
    x = (x - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
    height, width = x.shape[1:]
    gh, gw = height // PATCH, width // PATCH
    x = x.view(3, gh // MERGE, MERGE, PATCH, gw // MERGE, MERGE, PATCH).permute(1, 4, 2, 5, 0, 3, 6)
    x = x.unsqueeze(5).expand(*x.shape[:5], FRAMES, PATCH, PATCH)
    return x.reshape(gh * gw, 3 * FRAMES * PATCH * PATCH), (1, gh, gw)


def merged_tokens(grid: tuple[int, int, int]) -> int:
    """How many tokens the vision tower gives (and the prompt's image pad stands for) for `grid`."""
    t, h, w = grid
    return t * h * w // (MERGE * MERGE)
