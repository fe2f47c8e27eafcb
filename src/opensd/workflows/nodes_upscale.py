"""ComfyUI's upscale-model nodes (comfy_extras.nodes_upscale_model): UpscaleModelLoader reads a file of
the models folder's upscaler folders into an UPSCALE_MODEL (a spandrel model, as in ComfyUI), and
ImageUpscaleWithModel runs it over an IMAGE in ComfyUI's 512-pixel tiles with 32 pixels of overlap."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..pipeline.device import resolve_device
from ..pipeline.pipeline import Interrupted
from ..upscale import load_upscale_model, tiled_scale
from .types import Choices, NodeDef, register

MODULE = "comfy_extras.nodes_upscale_model"
TILE, OVERLAP = 512, 32


def upscale_model_loader(call, model_name):
    path = call.ctx.folders.resolve("upscale_models", model_name)
    return (load_upscale_model(path, resolve_device(call.ctx.device)),)


register(NodeDef("UpscaleModelLoader", upscale_model_loader, {"model_name": (Choices("upscale_models"), {})},
                 ("UPSCALE_MODEL",), category="loaders", display_name="Load Upscale Model", module=MODULE))


def image_upscale_with_model(call, upscale_model, image):
    alpha = image[..., 3:4] if image.shape[-1] == 4 else None  # an alpha channel is scaled bilinearly
    device = next(upscale_model.model.parameters()).device
    x = image[..., :3].movedim(-1, -3).to(device, torch.float32)

    def progress(done, total):
        if call.ctx.should_stop():
            raise Interrupted("generation interrupted")
        call.progress(done, total)

    out = tiled_scale(x, upscale_model, upscale_model.scale, TILE, OVERLAP, progress).cpu()
    out = out.clamp(0, 1).movedim(-3, -1)
    if alpha is not None:
        scaled = F.interpolate(alpha.movedim(-1, -3).float(), size=out.shape[1:3], mode="bilinear")
        out = torch.cat([out, scaled.movedim(-3, -1)], dim=-1)
    return (out,)


register(NodeDef("ImageUpscaleWithModel", image_upscale_with_model,
                 {"upscale_model": ("UPSCALE_MODEL", {}), "image": ("IMAGE", {})}, ("IMAGE",),
                 category="image/upscaling", display_name="Upscale Image (using Model)", module=MODULE))
