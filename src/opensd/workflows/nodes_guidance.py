"""Guidance patches on a MODEL, applied after CFG (ComfyUI's post-CFG functions):

* CFGZeroStar (Fan et al. 2025, comfy_extras.nodes_cfg): the negative's prediction scaled by the
  least-squares factor that best matches it to the positive's (in x - denoised), per image.
* CFGNorm (nodes_cfg): the guided prediction's per-pixel channel length capped at the positive's.
* PerpNegGuider (nodes_perpneg): a GUIDER with Perp-Neg's combination (guiders.PerpNegGuider).
* PerturbedAttentionGuidance (Ahn et al. 2024, comfy_extras.nodes_pag): the positive predicted once
  more with the middle block's self-attention replaced by identity, and the result pushed away
  from that prediction by `scale`.
* SkipLayerGuidanceDiT / SkipLayerGuidanceSD3 (comfy_extras.nodes_slg, nodes_sd3): the same with
  some of an SD3/Flux network's blocks skipped, within a window of sigmas, optionally rescaled
  towards the positive's standard deviation. SkipLayerGuidanceDiTSimple instead predicts the
  negative with those blocks skipped, within its window, before CFG (a calc_cond_batch function).
"""
from __future__ import annotations

import re
from dataclasses import replace

import torch

from .dit_patches import skip_blocks
from .guiders import CalcCondArgs, PerpNegGuider, PostCfgArgs
from .ksampler import sampling_of
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


def cfg_norm_function(strength: float):
    """The guided prediction scaled per pixel down to the positive's channel-vector length (never
    up), times strength."""
    def fn(args: PostCfgArgs) -> torch.Tensor:
        cond_len = torch.norm(args.cond_denoised, dim=1, keepdim=True)
        guided_len = torch.norm(args.denoised, dim=1, keepdim=True)
        return args.denoised * (cond_len / (guided_len + 1e-8)).clamp(0.0, 1.0) * strength
    return fn


def cfg_norm(call, model, strength):
    return (replace(model, post_cfg_functions=model.post_cfg_functions + (cfg_norm_function(strength),)),)


register(NodeDef(
    "CFGNorm", cfg_norm,
    {"model": ("MODEL", {}), "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01})},
    ("MODEL",), output_names=("patched_model",), category="advanced/guidance", module="comfy_extras.nodes_cfg",
    experimental=True))


def perp_neg_guider(call, model, positive, negative, empty_conditioning, cfg, neg_scale):
    return (PerpNegGuider(model, positive, negative, empty_conditioning, cfg, neg_scale),)


register(NodeDef(
    "PerpNegGuider", perp_neg_guider,
    {"model": ("MODEL", {}), "positive": ("CONDITIONING", {}), "negative": ("CONDITIONING", {}),
     "empty_conditioning": ("CONDITIONING", {}),
     "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
     "neg_scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01})},
    ("GUIDER",), category="_for_testing", module="comfy_extras.nodes_perpneg", experimental=True))


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


def slg_function(double: list[int], single: list[int], scale: float, sigma_start: float, sigma_end: float,
                 rescaling_scale: float):
    def fn(args: PostCfgArgs) -> torch.Tensor:
        out = args.denoised
        sigma = float(args.sigma.reshape(-1)[0])
        if scale > 0 and sigma_end <= sigma <= sigma_start:
            with skip_blocks(args.network, double, single):
                skipped = args.predict(args.cond)
            out = out + (args.cond_denoised - skipped) * scale
            if rescaling_scale != 0:
                factor = args.cond_denoised.std() / out.std()
                out = out * (rescaling_scale * factor + (1 - rescaling_scale))
        return out
    return fn


def _layer_numbers(text: str) -> list[int]:
    """Any digit runs, as ComfyUI reads them; runs too long for a block index are ignored as
    indices past the network are (Python refuses to convert over 4300 digits)."""
    return [int(n) for n in re.findall(r"\d+", text) if len(n) <= 9]


def skip_layer_guidance_dit(call, model, double_layers, single_layers, scale, start_percent, end_percent,
                            rescaling_scale=0.0):
    model.pipe.family.require("skip_layers", "model")
    double, single = _layer_numbers(double_layers), _layer_numbers(single_layers)
    if not double and not single:
        return (model,)
    ms = sampling_of(model)
    fn = slg_function(double, single, scale, ms.percent_to_sigma(start_percent), ms.percent_to_sigma(end_percent),
                      rescaling_scale)
    return (replace(model, post_cfg_functions=model.post_cfg_functions + (fn,)),)


def _layers():
    return ("STRING", {"default": "7, 8, 9", "multiline": False})


_SLG = {"scale": ("FLOAT", {"default": 3.0, "min": 0.0, "max": 10.0, "step": 0.1}),
        "start_percent": ("FLOAT", {"default": 0.01, "min": 0.0, "max": 1.0, "step": 0.001}),
        "end_percent": ("FLOAT", {"default": 0.15, "min": 0.0, "max": 1.0, "step": 0.001})}
_SLG_DESCRIPTION = "Generic version of SkipLayerGuidance node that can be used on every DiT model."
register(NodeDef(
    "SkipLayerGuidanceDiT", skip_layer_guidance_dit,
    {"model": ("MODEL", {}), "double_layers": _layers(), "single_layers": _layers(), **_SLG,
     "rescaling_scale": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 10.0, "step": 0.01})},
    ("MODEL",), category="advanced/guidance", module="comfy_extras.nodes_slg", experimental=True,
    description=_SLG_DESCRIPTION))


def slg_simple_function(double: list[int], single: list[int], sigma_start: float, sigma_end: float):
    """In the window, the negative predicted with the blocks skipped (the positive as it is), before CFG."""
    def fn(args: CalcCondArgs) -> list:
        cond, uncond = args.conds
        sigma = float(args.sigma.reshape(-1)[0])
        if uncond is None or not sigma_end <= sigma <= sigma_start:
            return args.calc(args.conds)
        with skip_blocks(args.network, double, single):
            skipped = args.calc([None, uncond])[1]
        return [args.calc([cond, None])[0], skipped]
    return fn


def skip_layer_guidance_dit_simple(call, model, double_layers, single_layers, start_percent, end_percent):
    model.pipe.family.require("skip_layers", "model")
    double, single = _layer_numbers(double_layers), _layer_numbers(single_layers)
    if not double and not single:
        return (model,)
    ms = sampling_of(model)
    fn = slg_simple_function(double, single, ms.percent_to_sigma(start_percent), ms.percent_to_sigma(end_percent))
    return (replace(model, calc_cond_batch_function=fn),)


register(NodeDef(
    "SkipLayerGuidanceDiTSimple", skip_layer_guidance_dit_simple,
    {"model": ("MODEL", {}), "double_layers": _layers(), "single_layers": _layers(),
     "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001}),
     "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001})},
    ("MODEL",), category="advanced/guidance", module="comfy_extras.nodes_slg", experimental=True,
    description="Simple version of the SkipLayerGuidanceDiT node that only modifies the uncond pass."))


def skip_layer_guidance_sd3(call, model, layers, scale, start_percent, end_percent):
    return skip_layer_guidance_dit(call, model, layers, "", scale, start_percent, end_percent)


register(NodeDef(
    "SkipLayerGuidanceSD3", skip_layer_guidance_sd3, {"model": ("MODEL", {}), "layers": _layers(), **_SLG},
    ("MODEL",), category="advanced/guidance", module="comfy_extras.nodes_sd3", experimental=True,
    description=_SLG_DESCRIPTION))
