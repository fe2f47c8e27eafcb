"""ComfyUI's nodes for Flux.1 Kontext, an editing model that sees reference images next to the one
it makes (comfy_extras.nodes_edit_model and nodes_flux):

* ReferenceLatent: appends a latent to each conditioning entry's "reference_latents" (chained, several
  references); without a latent the conditioning passes unchanged. The Flux network appends the
  references' tokens after the image's (models/flux.py); other models ignore them, as in ComfyUI.
* FluxKontextImageScale: resizes (Lanczos, centre crop) to the Kontext training size whose aspect
  is nearest the image's.
* FluxKontextMultiReferenceLatentMethod (experimental): sets each entry's "reference_latents_method",
  where the network places the references in RoPE space (models.flux.reference_offsets): "offset"
  (the default), "index" or "uxo/uno" (stored as "uxo").
"""
from __future__ import annotations

from ..families.flux import kontext_size
from ..errors import InvalidArgument
from .nodes_conditioning import set_values
from .nodes_image import upscale
from .types import NodeDef, register


def reference_latent(call, conditioning, latent=None):
    if latent is None:
        return (conditioning,)
    ref = latent["samples"]
    return ([[ctx, {**(extra or {}), "reference_latents": [*(extra or {}).get("reference_latents", ()), ref]}]
             for ctx, extra in conditioning],)


register(NodeDef(
    "ReferenceLatent", reference_latent, {"conditioning": ("CONDITIONING", {})}, ("CONDITIONING",),
    optional={"latent": ("LATENT", {})}, category="advanced/conditioning/edit_models",
    module="comfy_extras.nodes_edit_model",
    description="This node sets the guiding latent for an edit model. If the model supports it you can chain "
                "multiple to set multiple reference images."))


def flux_kontext_image_scale(call, image):
    width, height = kontext_size(image.shape[2], image.shape[1])
    return (upscale(image.movedim(-1, 1), width, height, "lanczos", "center").movedim(1, -1),)


register(NodeDef(
    "FluxKontextImageScale", flux_kontext_image_scale, {"image": ("IMAGE", {})}, ("IMAGE",),
    category="advanced/conditioning/flux", module="comfy_extras.nodes_flux",
    description="This node resizes the image to one that is more optimal for flux kontext."))


# ComfyUI's combo; "uxo/uno" (or any "uso") is stored as "uxo"; "index_timestep_zero": Qwen-Image-Edit-2511's
METHOD_CHOICES = ("offset", "index", "uxo/uno", "index_timestep_zero")


def flux_kontext_multi_reference_latent_method(call, conditioning, reference_latents_method):
    if reference_latents_method not in METHOD_CHOICES:
        raise InvalidArgument(f"reference_latents_method: {reference_latents_method!r} is not one of "
                              f"{', '.join(METHOD_CHOICES)}")
    method = "uxo" if "uxo" in reference_latents_method or "uso" in reference_latents_method \
        else reference_latents_method
    return (set_values(conditioning, reference_latents_method=method),)


register(NodeDef(
    "FluxKontextMultiReferenceLatentMethod", flux_kontext_multi_reference_latent_method,
    {"conditioning": ("CONDITIONING", {}), "reference_latents_method": (list(METHOD_CHOICES), {})},
    ("CONDITIONING",), category="advanced/conditioning/flux", module="comfy_extras.nodes_flux",
    experimental=True))
