"""Loader nodes beyond CheckpointLoaderSimple/LoraLoader, with ComfyUI's names and inputs: a VAE,
a diffusion model or text encoders from files of their own (pipeline/parts.py), a checkpoint with
an LDM yaml config, and a LoRA on the model only.

CheckpointLoader reads from the yaml what the weights cannot say: ``parameterization: "v"``
(v-prediction) and ``scale_factor`` (the latents' scaling); the architecture itself is detected
from the weights, and a config whose UNet context width or input channels contradict them is
refused."""
from __future__ import annotations

import logging
from dataclasses import replace

import torch
import yaml

from ..checkpoints.detect_dit import NET
from ..models.stored_weights import store_linears
from ..pipeline import parts
from .model_sampling import ModelSampling
from .nodes_core import checkpoint_loader, lora_loader
from .types import ClipRef, Choices, LoraEntry, ModelRef, NodeDef, VaeRef, register

log = logging.getLogger(__name__)


def _where(ctx) -> dict:
    return {"device": ctx.device, "precision": ctx.precision}


def vae_loader(call, vae_name):
    path = call.ctx.folders.resolve("vae", vae_name)
    return (VaeRef(parts.load_vae(path, **_where(call.ctx)), vae_name),)


register(NodeDef("VAELoader", vae_loader, {"vae_name": (Choices("vae"), {})}, ("VAE",), category="loaders",
                 display_name="Load VAE"))


def _config_params(path) -> dict:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        params = doc.get("model", {}).get("params", {})
    except (yaml.YAMLError, AttributeError, UnicodeDecodeError) as e:
        raise ValueError(f"config_name: {path.name} is not an LDM yaml config ({e})") from None
    if not isinstance(params, dict):
        raise ValueError(f"config_name: {path.name} has no model.params")
    return params


def checkpoint_loader_with_config(call, config_name, ckpt_name):
    params = _config_params(call.ctx.folders.resolve("configs", config_name))
    model, clip, vae = checkpoint_loader(call, ckpt_name)
    model.pipe.family.require("ldm_config", "config_name")
    unet = model.pipe.config.unet
    wants = (params.get("unet_config") or {}).get("params") or {}
    for key, have in (("context_dim", unet.context_dim), ("in_channels", unet.in_channels)):
        if key in wants and wants[key] != have:
            raise ValueError(f"config_name: {config_name} describes a UNet with {key} {wants[key]}, "
                             f"but {ckpt_name} has {have}")
    if params.get("parameterization") == "v":
        model = replace(model, sampling=ModelSampling(model.pipe.schedule, "v"))
    if "scale_factor" in params:
        scaled = replace(model.pipe.config.vae, scaling_factor=float(params["scale_factor"]))
        model = replace(model, latent_format=scaled)
    return model, clip, vae


register(NodeDef(
    "CheckpointLoader", checkpoint_loader_with_config,
    {"config_name": (Choices("configs"), {}), "ckpt_name": (Choices("checkpoints"), {})},
    ("MODEL", "CLIP", "VAE"), category="advanced/loaders", display_name="Load Checkpoint With Config (DEPRECATED)"))


UNET_DTYPES = ["default", "fp8_e4m3fn", "fp8_e5m2"]


def unet_loader(call, unet_name, weight_dtype):
    path = call.ctx.folders.resolve("unet", unet_name)
    pipe = parts.load_unet(path, **_where(call.ctx))
    if weight_dtype != "default":  # float8 storage, cast per layer as it runs, where the family allows it
        if pipe.family.keeps_stored(NET):
            store_linears(pipe.family.network(pipe.model), getattr(torch, weight_dtype.replace("fp8", "float8")))
        else:
            log.warning("UNETLoader: %s storage is not supported for %s models; %s is loaded in %s", weight_dtype,
                        pipe.family.label, unet_name, call.ctx.precision)
    return (ModelRef(pipe, unet_name),)


register(NodeDef(
    "UNETLoader", unet_loader, {"unet_name": (Choices("unet"), {}), "weight_dtype": (UNET_DTYPES, {})},
    ("MODEL",), category="advanced/loaders", display_name="Load Diffusion Model"))


def unet_loader_gguf(call, unet_name):
    """city96's ComfyUI-GGUF node: a .gguf network from unet/ or diffusion_models/, its quantised
    Linears unpacked per layer as they run."""
    path = call.ctx.folders.resolve("unet_gguf", unet_name)
    return (ModelRef(parts.load_unet(path, **_where(call.ctx)), unet_name),)


register(NodeDef(
    "UnetLoaderGGUF", unet_loader_gguf, {"unet_name": (Choices("unet_gguf"), {})}, ("MODEL",), category="bootleg",
    display_name="Unet Loader (GGUF)", module="custom_nodes.ComfyUI-GGUF"))


CLIP_TYPES = ["stable_diffusion", "stable_cascade", "sd3", "stable_audio", "chroma", "lumina2", "flux2", "qwen_image"]
# ComfyUI's CLIPLoader types that name a DiT family's text encoders: the family (lumina2: Z-Image's Qwen3-4B;
# flux2: FLUX.2 [klein]'s Qwen3-4B or -8B; qwen_image: Qwen-Image's Qwen2.5-VL-7B)
_DIT_CLIP_TYPES = {"sd3": "sd3", "flux": "flux", "chroma": "chroma", "lumina2": "z_image", "flux2": "flux2",
                   "qwen_image": "qwen_image"}
DUAL_CLIP_TYPES = ["sdxl", "sd3", "flux"]


def _clip(call, names: list[str], type: str, supported: tuple[str, ...]) -> ClipRef:
    if type not in supported:
        raise ValueError(f"type: {type!r} text encoders are for model families opensd does not run; "
                         f"use one of {', '.join(map(repr, supported))}")
    paths = [call.ctx.folders.resolve("clip", n) for n in names]
    family = _DIT_CLIP_TYPES.get(type)  # SD1/SD2/SDXL: told apart by the files
    return ClipRef(parts.load_text_encoders(paths, **_where(call.ctx), family=family), "+".join(names))


def clip_loader(call, clip_name, type="stable_diffusion"):
    return (_clip(call, [clip_name], type, ("stable_diffusion", "sd3", "chroma", "lumina2", "flux2", "qwen_image")),)


def dual_clip_loader(call, clip_name1, clip_name2, type):
    return (_clip(call, [clip_name1, clip_name2], type, ("sdxl", "sd3", "flux")),)


def triple_clip_loader(call, clip_name1, clip_name2, clip_name3):
    return (_clip(call, [clip_name1, clip_name2, clip_name3], "sd3", ("sd3",)),)


register(NodeDef(
    "CLIPLoader", clip_loader, {"clip_name": (Choices("clip"), {}), "type": (CLIP_TYPES, {})},
    ("CLIP",), category="advanced/loaders", display_name="Load CLIP"))
register(NodeDef(
    "TripleCLIPLoader", triple_clip_loader,
    {f"clip_name{i}": (Choices("clip"), {}) for i in (1, 2, 3)}, ("CLIP",), category="advanced/loaders",
    module="comfy_extras.nodes_sd3"))
register(NodeDef(
    "DualCLIPLoader", dual_clip_loader,
    {"clip_name1": (Choices("clip"), {}), "clip_name2": (Choices("clip"), {}), "type": (DUAL_CLIP_TYPES, {})},
    ("CLIP",), category="advanced/loaders"))


def lora_loader_model_only(call, model, lora_name, strength_model):
    if strength_model == 0:
        return (model,)
    entry = LoraEntry(call.ctx.folders.resolve("loras", lora_name), float(strength_model), 0.0)
    return (replace(model, loras=model.loras + (entry,)),)


register(NodeDef(
    "LoraLoaderModelOnly", lora_loader_model_only,
    {"model": ("MODEL", {}), "lora_name": (Choices("loras"), {}),
     "strength_model": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01})},
    ("MODEL",), category="loaders"))


# ComfyUI's LoraLoaderBypass / ...ModelOnly (comfy_extras.nodes_lora_debug, "for debugging") add the
# LoRA's path to each patched layer's output, base(x) + lora(x), instead of merging it into the weights:
# for a layer linear in its weight that is (W + delta) x, the merged result up to rounding, so they
# share LoraLoader's path here.
_BYPASS_STRENGTH = "How strongly to modify the {}. This value can be negative."
register(NodeDef(
    "LoraLoaderBypass", lora_loader,
    {"model": ("MODEL", {"tooltip": "The diffusion model the LoRA will be applied to."}),
     "clip": ("CLIP", {"tooltip": "The CLIP model the LoRA will be applied to."}),
     "lora_name": (Choices("loras"), {"tooltip": "The name of the LoRA."}),
     "strength_model": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01,
                                  "tooltip": _BYPASS_STRENGTH.format("diffusion model")}),
     "strength_clip": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01,
                                 "tooltip": _BYPASS_STRENGTH.format("CLIP model")})},
    ("MODEL", "CLIP"), category="loaders", display_name="Load LoRA (Bypass) (For debugging)",
    description="Apply LoRA in bypass mode. Unlike regular LoRA, this doesn't modify model weights - instead it "
                "injects the LoRA computation during forward pass. Useful for training scenarios.",
    module="comfy_extras.nodes_lora_debug", experimental=True))
register(NodeDef(
    "LoraLoaderBypassModelOnly", lora_loader_model_only,
    {"model": ("MODEL", {}), "lora_name": (Choices("loras"), {}),
     "strength_model": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01})},
    ("MODEL",), category="loaders", display_name="Load LoRA (Bypass, Model Only) (for debugging)",
    description="Apply LoRA in bypass mode. Unlike regular LoRA, this doesn't modify model weights - instead it "
                "injects the LoRA computation during forward pass. Useful for training scenarios.",
    module="comfy_extras.nodes_lora_debug", experimental=True))


def hypernetwork_loader(call, model, hypernetwork_name, strength):
    """ComfyUI's HypernetworkLoader: the model's attention k/v inputs (self- and cross-attention)
    go through an A1111 hypernetwork while it samples; loaders stacked later act on the output of
    earlier ones. The file is read (and checked) here, once per value of the node."""
    from ..adapters.hypernetwork import hypernetworks_applied, read_hypernetwork
    model.pipe.family.require("hypernetwork", "hypernetwork_name")
    hn = read_hypernetwork(call.ctx.folders.resolve("hypernetworks", hypernetwork_name))
    nets = [(hn, float(strength))]

    def patch(network, sigma: float):
        return hypernetworks_applied(network, nets)
    return (replace(model, network_patches=model.network_patches + (patch,)),)


register(NodeDef(
    "HypernetworkLoader", hypernetwork_loader,
    {"model": ("MODEL", {}), "hypernetwork_name": (Choices("hypernetworks"), {}),
     "strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01})},
    ("MODEL",), category="loaders", module="comfy_extras.nodes_hypernetwork"))
