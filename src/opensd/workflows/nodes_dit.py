"""ComfyUI's nodes for SD3 and Flux (its comfy_extras.nodes_sd3, nodes_flux and the flow model
patches of nodes_model_advanced), with ComfyUI's names, inputs and defaults.

* EmptySD3LatentImage: zeros with 16 channels at 1/8 of the size (and the pixel size, so a model
  with another VAE downscale gets its latent, as EmptyLatentImage does here).
* CLIPTextEncodeSD3 / CLIPTextEncodeFlux: one prompt per encoder; with empty_padding "none" an empty
  prompt gives its encoder no tokens (zeros for a CLIP, no T5 tokens).
* FluxGuidance: the distilled guidance of every entry (Flux dev's `guidance` input; CFG stays the
  sampler's).
* ModelSamplingSD3 / ModelSamplingFlux / ModelSamplingAuraFlow: the flow schedule's shift (Flux: from
  max_shift and base_shift at the image size, ComfyUI's rule for a 8x VAE with 2x2 patches;
  AuraFlow: SD3's shift with the network's time in [0, 1], Z-Image's).
* T5TokenizerOptions (comfy_extras.nodes_cond): the CLIP's T5 prompts laid out as ComfyUI's T5
  tokenizer lays them out with those options: the prompt's pieces uncut, end of text, `min_padding`
  padding tokens, then padding up to `min_length` tokens (0, 0: no padding at all); in place of
  opensd's padding to the model's T5 length (and, for Chroma, of its one kept padding token). The
  family's T5 masking stays (Chroma's T5 attends to the prompt and end of text only); the network
  sees every token laid out. ComfyUI's recipe for Chroma, min_padding 1 and min_length 0, gives the
  context opensd gives Chroma by default, without the masked rows.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from ..families.flux import GUIDANCE_OFF
from ..sampling.flow import FlowSampling, flux2_mu, flux_mu, flux_shift
from .loras import activate
from .types import MAX_RESOLUTION, NodeDef, check_size, register

_TEXT = ("STRING", {"multiline": True, "dynamicPrompts": True})
_GUIDANCE = ("FLOAT", {"default": 3.5, "min": 0.0, "max": 100.0, "step": 0.1})


def _empty_latent(name: str, channels: int, down: int, category: str, module: str, display: str | None = None):
    """ComfyUI's empty-latent node `name`: zeros of `channels` at 1/`down` of the image."""
    def empty(call, width, height, batch_size=1):
        check_size(name, batch_size, channels, height // down, width // down)
        return ({"samples": torch.zeros(batch_size, channels, height // down, width // down),
                 "pixel_size": (width, height)},)

    register(NodeDef(
        name, empty,
        {"width": ("INT", {"default": 1024, "min": 16, "max": MAX_RESOLUTION, "step": 16}),
         "height": ("INT", {"default": 1024, "min": 16, "max": MAX_RESOLUTION, "step": 16}),
         "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096})},
        ("LATENT",), category=category, module=module, display_name=display))
    return empty


empty_sd3_latent = _empty_latent("EmptySD3LatentImage", 16, 8, "latent/sd3", "comfy_extras.nodes_sd3")
# FLUX.2's: 128 channels (the VAE's 32, patched 2x2) at 1/16
empty_flux2_latent = _empty_latent("EmptyFlux2LatentImage", 128, 16, "latent", "comfy_extras.nodes_flux",
                                   "Empty Flux 2 Latent")


def flux2_scheduler(call, steps, width, height):
    """FLUX.2's sigmas for `steps` steps of a width x height image: the times 1, 1 - 1/n, ..., 0
    shifted by mu from the image's 16x16-pixel tokens and the step count (flow.flux2_mu)."""
    mu = flux2_mu(round(width * height / 256), steps)
    t = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    return (flux_shift(mu, t).float(),)


register(NodeDef(
    "Flux2Scheduler", flux2_scheduler,
    {"steps": ("INT", {"default": 20, "min": 1, "max": 4096}),
     "width": ("INT", {"default": 1024, "min": 16, "max": MAX_RESOLUTION, "step": 1}),
     "height": ("INT", {"default": 1024, "min": 16, "max": MAX_RESOLUTION, "step": 1})},
    ("SIGMAS",), category="sampling/custom_sampling/schedulers", module="comfy_extras.nodes_flux"))


def conditioner_for(clip):
    """The prompt encoder of a CLIP: its CLIP skip, and T5TokenizerOptions' padding where it has a T5."""
    pipe = clip.pipe
    if clip.t5_padding is not None and getattr(pipe.config, "t5", None) is not None:
        return pipe.conditioner(clip.clip_skip, t5_padding=clip.t5_padding)
    return pipe.conditioner(clip.clip_skip)


def _conditioner(clip, family: str):
    pipe = clip.pipe
    if pipe.config.family != family:
        raise ValueError(f"clip: this node encodes for {family.upper()} models; this CLIP is for "
                         f"{pipe.family.label} (load its text encoders with type {family!r})")
    activate(clip, part="te")
    return conditioner_for(clip)


def _conditioning(c, **extra) -> list:
    return [[c.context.float().cpu(), {"pooled_output": c.pooled.float().cpu(), **extra}]]


def clip_text_encode_sd3(call, clip, clip_l, clip_g, t5xxl, empty_padding):
    none = empty_padding == "none"
    texts = {name: None if none and not text else text
             for name, text in (("clip_l", clip_l), ("clip_g", clip_g), ("t5xxl", t5xxl))}
    return (_conditioning(_conditioner(clip, "sd3").encode_parts(texts)),)


register(NodeDef(
    "CLIPTextEncodeSD3", clip_text_encode_sd3,
    {"clip": ("CLIP", {}), "clip_l": _TEXT, "clip_g": _TEXT, "t5xxl": _TEXT,
     "empty_padding": (["none", "empty_prompt"], {})},
    ("CONDITIONING",), category="advanced/conditioning", module="comfy_extras.nodes_sd3"))


def clip_text_encode_flux(call, clip, clip_l, t5xxl, guidance):
    c = _conditioner(clip, "flux").encode_parts({"clip_l": clip_l, "t5xxl": t5xxl})
    return (_conditioning(c, guidance=float(guidance)),)


register(NodeDef(
    "CLIPTextEncodeFlux", clip_text_encode_flux,
    {"clip": ("CLIP", {}), "clip_l": _TEXT, "t5xxl": _TEXT, "guidance": _GUIDANCE},
    ("CONDITIONING",), category="advanced/conditioning/flux", module="comfy_extras.nodes_flux"))


def flux_guidance(call, conditioning, guidance):
    return ([[ctx, {**(extra or {}), "guidance": float(guidance)}] for ctx, extra in conditioning],)


register(NodeDef(
    "FluxGuidance", flux_guidance, {"conditioning": ("CONDITIONING", {}), "guidance": _GUIDANCE},
    ("CONDITIONING",), category="advanced/conditioning/flux", module="comfy_extras.nodes_flux"))


def flux_disable_guidance(call, conditioning):
    return ([[ctx, {**(extra or {}), "guidance": GUIDANCE_OFF}] for ctx, extra in conditioning],)


register(NodeDef(
    "FluxDisableGuidance", flux_disable_guidance, {"conditioning": ("CONDITIONING", {})},
    ("CONDITIONING",), category="advanced/conditioning/flux", module="comfy_extras.nodes_flux",
    description="This node completely disables the guidance embed on Flux and Flux like models"))


def _flow_model(model, family: str, *others: str):
    """`model`, when its family is `family` or one of `others` (which take the same schedule)."""
    if model.pipe.config.family not in (family, *others):
        raise ValueError(f"model: this patch is for {family.upper()} models, not {model.pipe.family.label}")
    return model


def model_sampling_sd3(call, model, shift):
    return (replace(_flow_model(model, "sd3"), sampling=FlowSampling.sd3(float(shift))),)


register(NodeDef(
    "ModelSamplingSD3", model_sampling_sd3,
    {"model": ("MODEL", {}), "shift": ("FLOAT", {"default": 3.0, "min": 0.0, "max": 100.0, "step": 0.01})},
    ("MODEL",), category="advanced/model", module="comfy_extras.nodes_model_advanced"))


def model_sampling_aura_flow(call, model, shift):
    """SD3's shift with the network's time in [0, 1]: Z-Image's and Qwen-Image's schedule in ComfyUI (which
    also runs AuraFlow and Lumina 2 with it, families opensd does not run)."""
    return (replace(_flow_model(model, "z_image", "qwen_image"), sampling=FlowSampling.aura_flow(float(shift))),)


register(NodeDef(
    "ModelSamplingAuraFlow", model_sampling_aura_flow,
    {"model": ("MODEL", {}), "shift": ("FLOAT", {"default": 1.73, "min": 0.0, "max": 100.0, "step": 0.01})},
    ("MODEL",), category="advanced/model", module="comfy_extras.nodes_model_advanced"))


def model_sampling_flux(call, model, max_shift, base_shift, width, height):
    mu = flux_mu(width * height / (16 * 16), base_shift, max_shift)
    return (replace(_flow_model(model, "flux", "chroma"), sampling=FlowSampling.flux(mu)),)


_SHIFT = {"min": 0.0, "max": 100.0, "step": 0.01}
register(NodeDef(
    "ModelSamplingFlux", model_sampling_flux,
    {"model": ("MODEL", {}), "max_shift": ("FLOAT", {"default": 1.15, **_SHIFT}),
     "base_shift": ("FLOAT", {"default": 0.5, **_SHIFT}),
     "width": ("INT", {"default": 1024, "min": 16, "max": MAX_RESOLUTION, "step": 8}),
     "height": ("INT", {"default": 1024, "min": 16, "max": MAX_RESOLUTION, "step": 8})},
    ("MODEL",), category="advanced/model", module="comfy_extras.nodes_model_advanced"))


def t5_tokenizer_options(call, clip, min_padding, min_length):
    return (replace(clip, t5_padding=(min_padding, min_length)),)


register(NodeDef(
    "T5TokenizerOptions", t5_tokenizer_options,
    {"clip": ("CLIP", {}), "min_padding": ("INT", {"default": 0, "min": 0, "max": 10000, "step": 1}),
     "min_length": ("INT", {"default": 0, "min": 0, "max": 10000, "step": 1})},
    ("CLIP",), category="model/conditioning", display_name="T5 Tokenizer Options", experimental=True,
    module="comfy_extras.nodes_cond"))
