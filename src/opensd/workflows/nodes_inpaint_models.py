"""comfyui-inpaint-nodes' object-removal nodes, with its names, inputs and outputs:
INPAINT_LoadInpaintModel reads a LaMa (or, with the optional spandrel_extra_arches, MAT) file of
the inpaint folder into an INPAINT_MODEL; INPAINT_InpaintWithModel fills an image's masked pixels
with it (inpaint_models.fill; the other pixels stay the input's), optionally upscaling the model's
output with an UPSCALE_MODEL before it is resized back. Krita AI Diffusion's "Remove object" fill
runs these two."""
from __future__ import annotations

from ..inpaint_models import inpaint_with_model, load_inpaint_model
from ..pipeline.device import resolve_device
from ..pipeline.pipeline import Interrupted
from .types import Choices, NodeDef, register

_MODULE = "custom_nodes.comfyui-inpaint-nodes"


def load_model(call, model_name):
    path = call.ctx.folders.resolve("inpaint", model_name)
    return (load_inpaint_model(path, resolve_device(call.ctx.device)),)


def inpaint(call, inpaint_model, image, mask, seed, optional_upscale_model=None):
    def progress(done, total):
        if call.ctx.should_stop():
            raise Interrupted("generation interrupted")
        call.progress(done, total)

    return (inpaint_with_model(inpaint_model, image, mask, seed, optional_upscale_model, progress),)


register(NodeDef("INPAINT_LoadInpaintModel", load_model, {"model_name": (Choices("inpaint"), {})},
                 ("INPAINT_MODEL",), output_names=("inpaint model",), category="inpaint",
                 display_name="Load Inpaint Model", module=_MODULE))
register(NodeDef("INPAINT_InpaintWithModel", inpaint,
                 {"inpaint_model": ("INPAINT_MODEL", {}), "image": ("IMAGE", {}), "mask": ("MASK", {}),
                  "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "step": 1})},
                 ("IMAGE",), output_names=("inpainted image",),
                 optional={"optional_upscale_model": ("UPSCALE_MODEL", {})}, category="inpaint",
                 display_name="Inpaint (using Model)", module=_MODULE))
