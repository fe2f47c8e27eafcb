"""Patches on a MODEL that rescale the guided prediction, with ComfyUI's names and formulas:

* Epsilon Scaling (comfy_extras.nodes_eps; Ning et al. 2023, "Elucidating the Exposure Bias in
  Diffusion Models", uniform schedule): after CFG the predicted noise x - denoised is divided by
  `scaling_factor`.
* TemporalScoreRescaling (nodes_eps; arXiv 2510.01184 eq. 6): after CFG, with snr the model's
  signal-to-noise ratio at sigma and v = tsr_sigma^2, r = (snr v + 1) / (snr v / k + 1) (k where
  snr is infinite) and denoised becomes lerp(x / alpha, denoised, r); alpha is 1 for
  variance-exploding models and 1 - sigma for rectified-flow ones.
* RenormCFG (comfy_extras.nodes_lumina2): a sampler_cfg_function doing CFG while sigma is below
  `cfg_trunc` (the positive alone from there on), the guided prediction's norm per image
  capped at renorm_cfg times the positive's. ComfyUI leaves channels past the network's input
  channels unguided; the networks here output no such channels, so the whole prediction is guided.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from .guiders import CfgArgs, PostCfgArgs
from .ksampler import sampling_of
from .types import NodeDef, register

_EPS_MODULE = "comfy_extras.nodes_eps"


def epsilon_scaling_function(scaling_factor: float):
    def fn(args: PostCfgArgs) -> torch.Tensor:
        x = args.input
        return x - (x - args.denoised) / scaling_factor
    return fn


def epsilon_scaling(call, model, scaling_factor):
    factor = scaling_factor if scaling_factor != 0 else 1e-9  # ComfyUI's guard against dividing by 0
    return (replace(model, post_cfg_functions=model.post_cfg_functions + (epsilon_scaling_function(factor),)),)


register(NodeDef(
    "Epsilon Scaling", epsilon_scaling,
    {"model": ("MODEL", {}),
     "scaling_factor": ("FLOAT", {"default": 1.005, "min": 0.5, "max": 1.5, "step": 0.001, "display": "number",
                                  "advanced": True})},
    ("MODEL",), category="model/patch/unet", module=_EPS_MODULE))


def half_log_snr(sigma: torch.Tensor, flow: bool) -> torch.Tensor:
    """log(alpha / sigma): -logit(sigma) for rectified flow (alpha = 1 - sigma), else -log(sigma)."""
    return -torch.logit(sigma) if flow else -torch.log(sigma)


def tsr_factor(snr: torch.Tensor, k: float, variance: float) -> torch.Tensor:
    r = (snr * variance + 1) / (snr * variance / k + 1)
    return torch.where(torch.isposinf(snr), torch.full_like(r, k), r)


def tsr_function(k: float, sigma_scale: float, flow: bool):
    variance = sigma_scale ** 2

    def fn(args: PostCfgArgs) -> torch.Tensor:
        sigma = args.sigma.reshape(-1)[0].double()
        if k == 1 or float(sigma) == 0:
            return args.denoised
        h = half_log_snr(sigma, flow)
        snr = (2 * h).exp()
        if float(snr) == 0:
            return args.denoised
        r = tsr_factor(snr, k, variance)
        alpha = sigma * h.exp()
        return torch.lerp(args.input / alpha.to(args.input), args.denoised, r.to(args.denoised))
    return fn


def temporal_score_rescaling(call, model, tsr_k, tsr_sigma):
    flow = getattr(sampling_of(model), "prediction", None) == "flow"
    return (replace(model, post_cfg_functions=model.post_cfg_functions + (tsr_function(tsr_k, tsr_sigma, flow),)),)


_TSR_K_TIP = ("Controls the rescaling strength.\nLower k produces more detailed results; higher k produces smoother "
              "results in image generation. Setting k = 1 disables rescaling.")
_TSR_SIGMA_TIP = "Controls how early rescaling takes effect.\nLarger values take effect earlier."

register(NodeDef(
    "TemporalScoreRescaling", temporal_score_rescaling,
    {"model": ("MODEL", {}),
     "tsr_k": ("FLOAT", {"default": 0.95, "min": 0.01, "max": 100.0, "step": 0.001, "display": "number",
                         "tooltip": _TSR_K_TIP, "advanced": True}),
     "tsr_sigma": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 100.0, "step": 0.001, "display": "number",
                             "tooltip": _TSR_SIGMA_TIP, "advanced": True})},
    ("MODEL",), output_names=("patched_model",), category="model/patch/unet",
    display_name="TSR - Temporal Score Rescaling", module=_EPS_MODULE,
    description="[Post-CFG Function]\nTSR - Temporal Score Rescaling (2510.01184)\n\n"
                "Rescaling the model's score or noise to steer the sampling diversity.\n"))


def _norm(t: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(t, dim=tuple(range(1, t.ndim)), keepdim=True)


def renorm_cfg_function(cfg_trunc: float, renorm: float):
    """CFG while sigma < cfg_trunc (ComfyUI's "timestep" in a sampler_cfg_function's arguments is the
    sigma), the positive alone from there on."""
    def fn(args: CfgArgs) -> torch.Tensor:
        cond, uncond = args.cond_denoised, args.uncond_denoised
        if float(args.sigma.reshape(-1)[0]) < cfg_trunc:
            guided = uncond + args.cond_scale * (cond - uncond)
            if renorm > 0.0:
                cap = _norm(cond) * renorm
                length = _norm(guided)
                guided = torch.where(length >= cap, guided * (cap / length), guided)
        else:
            guided = cond
        return args.input - guided
    return fn


def renorm_cfg(call, model, cfg_trunc, renorm_cfg):
    return (replace(model, cfg_function=renorm_cfg_function(cfg_trunc, renorm_cfg)),)


register(NodeDef(
    "RenormCFG", renorm_cfg,
    {"model": ("MODEL", {}),
     "cfg_trunc": ("FLOAT", {"default": 100, "min": 0.0, "max": 100.0, "step": 0.01, "advanced": True}),
     "renorm_cfg": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01, "advanced": True})},
    ("MODEL",), category="model/patch", module="comfy_extras.nodes_lumina2"))
