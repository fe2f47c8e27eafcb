"""Guidance patches on a MODEL, applied after CFG (ComfyUI's post-CFG functions):

* CFGZeroStar (Fan et al. 2025, comfy_extras.nodes_cfg): the negative's prediction scaled by the
  least-squares factor that best matches it to the positive's (in x - denoised), per image.
* PerturbedAttentionGuidance (Ahn et al. 2024, comfy_extras.nodes_pag): the positive predicted once
  more with the middle block's self-attention replaced by identity, and the result pushed away
  from that prediction by `scale`.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from .guiders import PostCfgArgs
from .types import NodeDef, register
from .unet_patches import middle_self_attention_as_values


def optimized_scale(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Per batch item, <positive, negative> / |negative|^2 (shaped to broadcast)."""
    p, n = positive.reshape(positive.shape[0], -1), negative.reshape(negative.shape[0], -1)
    alpha = (p * n).sum(1, keepdim=True) / ((n * n).sum(1, keepdim=True) + 1e-8)
    return alpha.reshape([positive.shape[0]] + [1] * (positive.ndim - 1))


def cfg_zero_star_function(args: PostCfgArgs) -> torch.Tensor:
    """uncond + scale (cond - uncond) becomes alpha uncond + scale (cond - alpha uncond)."""
    x, uncond = args.input, args.uncond_denoised
    alpha = optimized_scale(x - args.cond_denoised, x - uncond)
    return args.denoised + uncond * (alpha - 1.0) + args.cond_scale * uncond * (1.0 - alpha)


def cfg_zero_star(call, model):
    return (replace(model, post_cfg_functions=model.post_cfg_functions + (cfg_zero_star_function,)),)


register(NodeDef(
    "CFGZeroStar", cfg_zero_star, {"model": ("MODEL", {})}, ("MODEL",), output_names=("patched_model",),
    category="advanced/guidance", module="comfy_extras.nodes_cfg"))


def pag_function(scale: float):
    def fn(args: PostCfgArgs) -> torch.Tensor:
        if scale == 0:
            return args.denoised
        with middle_self_attention_as_values(args.network):
            perturbed = args.predict(args.cond)
        return args.denoised + (args.cond_denoised - perturbed) * scale
    return fn


def perturbed_attention_guidance(call, model, scale):
    model.pipe.family.require("pag", "model")
    return (replace(model, post_cfg_functions=model.post_cfg_functions + (pag_function(scale),)),)


register(NodeDef(
    "PerturbedAttentionGuidance", perturbed_attention_guidance,
    {"model": ("MODEL", {}),
     "scale": ("FLOAT", {"default": 3.0, "min": 0.0, "max": 100.0, "step": 0.01, "round": 0.01})},
    ("MODEL",), category="model_patches/unet", module="comfy_extras.nodes_pag"))
