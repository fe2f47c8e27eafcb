"""ComfyUI controlnet_aux's preprocessor nodes (Fannovel16/comfyui_controlnet_aux), with its node
names and inputs so graphs written for it (Krita AI Diffusion's among them) run here:

* DepthAnythingV2Preprocessor: Depth Anything V2 relative depth, near = bright, as an IMAGE whose
  short side is `resolution` (aspect kept), as controlnet_aux returns it. `ckpt_name` is looked up in
  the models folder's preprocessor folders (library.models_dir "preprocessors"); nothing is downloaded.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..adapters.depth_anything_files import CKPT_NAMES, DEFAULT_CKPT, find_weights
from ..adapters.preprocessors import depth_anything_v2, fit_image
from ..pipeline.device import resolve_device
from .types import MAX_RESOLUTION, NodeDef, check_size, register


def short_side(image: Image.Image, resolution: int) -> Image.Image:
    """`image` scaled so its short side is `resolution` (controlnet_aux's output size)."""
    w, h = image.size
    k = resolution / min(w, h)
    size = (max(1, round(w * k)), max(1, round(h * k)))
    check_size("image", size[1], size[0], 3)
    return fit_image(image, *size)


def depth_anything(call, image, ckpt_name=DEFAULT_CKPT, resolution=512):
    path = find_weights(call.ctx.folders, ckpt_name)
    device = resolve_device(call.ctx.device)
    maps = []
    for i, picture in enumerate(image):
        rgb = Image.fromarray((picture[..., :3].clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy())
        maps.append(np.asarray(short_side(depth_anything_v2(rgb, path, device), resolution)))
        call.progress(i + 1, image.shape[0])
    return (torch.from_numpy(np.stack(maps)).float() / 255.0,)


register(NodeDef(
    "DepthAnythingV2Preprocessor", depth_anything, {"image": ("IMAGE", {})}, ("IMAGE",),
    optional={"ckpt_name": (list(CKPT_NAMES), {"default": DEFAULT_CKPT}),
              "resolution": ("INT", {"default": 512, "min": 64, "max": MAX_RESOLUTION, "step": 64})},
    category="ControlNet Preprocessors/Normal and Depth Estimators", display_name="Depth Anything V2 - Relative",
    module="custom_nodes.comfyui_controlnet_aux"))
