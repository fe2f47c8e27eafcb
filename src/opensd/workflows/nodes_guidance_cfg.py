"""Guidance patches on a MODEL around the CFG combination, with ComfyUI's names, inputs and arithmetic:

* APG (Sadat et al. 2024, comfy_extras.nodes_apg), a pre-CFG function: the guidance cond - uncond
  (optionally a running average over the steps, its norm capped) split into the part along the
  positive prediction, scaled by eta, and the part orthogonal to it; the positive is replaced so
  that plain CFG yields uncond + that guidance + (cond - uncond) / cfg.
* TCFG (Tangential Damping CFG, arXiv 2503.18137, comfy_extras.nodes_tcfg), a pre-CFG function: the
  negative's score (x - uncond) kept only along the first right-singular vector of the [uncond,
  cond] score matrix.
* Mahiro (comfy_extras.nodes_mahiro), a post-CFG function: the CFG result blended with the
  positive prediction times the scale, by how alike the signed square roots of the negative's
  leap and of the mean of the two are.
* FreSca (frequency-selective guidance scaling, comfy_extras.nodes_fresca), a pre-CFG function: the
  guidance cond - uncond scaled by one factor in a centred square of its shifted 2-D spectrum (the
  low frequencies, ``freq_cutoff`` bins each side of the centre) and by another outside it.

Pre-CFG functions run in CFGGuider (KSampler's) only, as ComfyUI's do.
"""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from .guiders import PostCfgArgs, PreCfgArgs
from .types import NodeDef, register

_DIMS = (-1, -2, -3)


def project(v0: torch.Tensor, v1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """v0's parts along and orthogonal to v1, over each image's (C, H, W)."""
    v1 = F.normalize(v1, dim=_DIMS)
    along = (v0 * v1).sum(dim=_DIMS, keepdim=True) * v1
    return along, v0 - along


def apg_function(eta: float, norm_threshold: float, momentum: float):
    """The pre-CFG function; the running average is kept per image of the batch and restarts when
    sigma goes up (a new sampling), as ComfyUI's batch-wide one does."""
    state: dict[int, tuple] = {}  # image -> (running average or None, previous sigma)

    def fn(args: PreCfgArgs) -> list:
        cond, uncond = args.conds_out[0], args.conds_out[1]
        sigma = float(args.sigma.reshape(-1)[0])
        average, previous = state.get(args.image, (None, None))
        if previous is not None and sigma > previous:
            average = None
        guidance = cond - uncond
        if momentum > 0:
            average = guidance if average is None else momentum * average + guidance
            guidance = average
        state[args.image] = (average, sigma)
        if norm_threshold > 0:
            norm = guidance.norm(p=2, dim=_DIMS, keepdim=True)
            guidance = guidance * torch.minimum(torch.ones_like(norm), norm_threshold / norm)
        along, orthogonal = project(guidance, cond)
        modified = orthogonal + eta * along
        return [uncond + modified + (cond - uncond) / args.cond_scale, uncond] + list(args.conds_out[2:])
    return fn


def apg(call, model, eta, norm_threshold, momentum):
    return (replace(model, pre_cfg_functions=model.pre_cfg_functions + (apg_function(eta, norm_threshold, momentum),)),)


register(NodeDef(
    "APG", apg,
    {"model": ("MODEL", {}),
     "eta": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01,
                       "tooltip": "Controls the scale of the parallel guidance vector. Default CFG behavior at a "
                                  "setting of 1."}),
     "norm_threshold": ("FLOAT", {"default": 5.0, "min": 0.0, "max": 50.0, "step": 0.1,
                                  "tooltip": "Normalize guidance vector to this value, normalization disable at a "
                                             "setting of 0."}),
     "momentum": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                            "tooltip": "Controls a running average of guidance during diffusion, disabled at a "
                                       "setting of 0."})},
    ("MODEL",), category="sampling/custom_sampling", display_name="Adaptive Projected Guidance",
    module="comfy_extras.nodes_apg"))


def tangential_damping(cond_score: torch.Tensor, uncond_score: torch.Tensor) -> torch.Tensor:
    """uncond_score projected on the first right-singular vector of each image's 2 x n matrix
    [uncond_score; cond_score]."""
    b = cond_score.shape[0]
    uncond_flat = uncond_score.reshape(b, 1, -1).float()
    matrix = torch.cat((uncond_flat, cond_score.reshape(b, 1, -1).float()), dim=1)
    _, _, vh = torch.linalg.svd(matrix, full_matrices=False)
    v1 = vh[:, 0:1, :]
    return ((uncond_flat @ v1.transpose(-2, -1)) * v1).reshape_as(uncond_score).to(uncond_score.dtype)


def tcfg_function(args: PreCfgArgs) -> list:
    if len(args.conds_out) <= 1 or None in args.conds[:2]:  # no negative evaluated (cfg 1)
        return args.conds_out
    x, cond, uncond = args.input, args.conds_out[0], args.conds_out[1]
    return [cond, x - tangential_damping(x - cond, x - uncond)] + list(args.conds_out[2:])


def tcfg(call, model):
    return (replace(model, pre_cfg_functions=model.pre_cfg_functions + (tcfg_function,)),)


register(NodeDef(
    "TCFG", tcfg, {"model": ("MODEL", {})}, ("MODEL",), output_names=("patched_model",),
    category="advanced/guidance", display_name="Tangential Damping CFG", module="comfy_extras.nodes_tcfg",
    description="TCFG – Tangential Damping CFG (2503.18137)\n\nRefine the uncond (negative) to align with the cond "
                "(positive) for improving quality."))


def mahiro_function(args: PostCfgArgs) -> torch.Tensor:
    scale = args.cond_scale
    leap, uncond_leap, cfg = args.cond_denoised * scale, args.uncond_denoised * scale, args.denoised
    merge = (leap + cfg) / 2
    signed_root_u = torch.sqrt(uncond_leap.abs()) * uncond_leap.sign()
    signed_root_m = torch.sqrt(merge.abs()) * merge.sign()
    similarity = 2 * (F.cosine_similarity(signed_root_u, signed_root_m).mean() + 1)  # over channels, per pixel
    return (similarity * cfg + (4 - similarity) * leap) / 4


def mahiro(call, model):
    return (replace(model, post_cfg_functions=model.post_cfg_functions + (mahiro_function,)),)


register(NodeDef(
    "Mahiro", mahiro, {"model": ("MODEL", {})}, ("MODEL",), output_names=("patched_model",), category="_for_testing",
    display_name="Mahiro is so cute that she deserves a better guidance function!! (。・ω・。)",
    module="comfy_extras.nodes_mahiro",
    description="Modify the guidance to scale more on the 'direction' of the positive prompt rather than the "
                "difference between the negative prompt."))


def frequency_scaled(x: torch.Tensor, scale_low: float, scale_high: float, cutoff: int) -> torch.Tensor:
    """x (B, C, H, W) with its centred spectrum scaled: `scale_low` inside rows/columns [H//2 - cutoff,
    H//2 + cutoff), `scale_high` elsewhere. The bounds are used as Python slices, as ComfyUI uses them:
    a start below 0 counts from the end (a cutoff past the centre but short of the side leaves only the
    last rows/columns low)."""
    spectrum = torch.fft.fftshift(torch.fft.fft2(x.float()), dim=(-2, -1))
    h, w = x.shape[-2:]
    scale = torch.full(x.shape[-2:], float(scale_high), device=x.device)
    scale[h // 2 - cutoff:h // 2 + cutoff, w // 2 - cutoff:w // 2 + cutoff] = scale_low
    return torch.fft.ifft2(torch.fft.ifftshift(spectrum * scale, dim=(-2, -1))).real.to(x.dtype)


def fresca_function(scale_low: float, scale_high: float, cutoff: int):
    def fn(args: PreCfgArgs) -> list:
        if len(args.conds_out) <= 1 or None in args.conds[:2]:  # no negative evaluated (cfg 1)
            return args.conds_out
        cond, uncond = args.conds_out[0], args.conds_out[1]
        return [uncond + frequency_scaled(cond - uncond, scale_low, scale_high, cutoff), uncond] \
            + list(args.conds_out[2:])
    return fn


def fresca(call, model, scale_low, scale_high, freq_cutoff):
    patch = fresca_function(scale_low, scale_high, freq_cutoff)
    return (replace(model, pre_cfg_functions=model.pre_cfg_functions + (patch,)),)


register(NodeDef(
    "FreSca", fresca,
    {"model": ("MODEL", {}),
     "scale_low": ("FLOAT", {"default": 1.0, "min": 0, "max": 10, "step": 0.01,
                             "tooltip": "Scaling factor for low-frequency components"}),
     "scale_high": ("FLOAT", {"default": 1.25, "min": 0, "max": 10, "step": 0.01,
                              "tooltip": "Scaling factor for high-frequency components"}),
     "freq_cutoff": ("INT", {"default": 20, "min": 1, "max": 100, "step": 1,
                             "tooltip": "Number of frequency indices around center to consider as low-frequency"})},
    ("MODEL",), category="_for_testing", module="comfy_extras.nodes_fresca",
    description="Applies frequency-dependent scaling to the guidance"))
