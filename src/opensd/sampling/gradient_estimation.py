"""Gradient estimation (Permenter & Yuan 2024, "Interpreting and Improving Diffusion Models from an
Optimization Perspective"): ComfyUI's gradient_estimation and gradient_estimation_cfg_pp.

Denoising read as gradient descent on the distance to the data: each step is Euler, then a
momentum-like correction that extrapolates the slope d = (x - denoised) / sigma from the last one,
x += (ge_gamma - 1) (d - d_old) (sigma_next - sigma), from the second step on and never on the step
to 0. ge_gamma = 1 is Euler; the paper's (and ComfyUI's) default is 2. Under CFG++ the slope uses the
unconditional estimate and the Euler step starts from the guided one (Euler CFG++).
"""
from __future__ import annotations

import torch

from .cfg_pp import with_uncond
from .steps import to_d


def _gradient_estimation(denoise, x, sigmas, callback, ge_gamma, cfg_pp):
    old_d = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        if cfg_pp:
            denoised, uncond = with_uncond(denoise, x, sigma)
        else:
            denoised = uncond = denoise(x, sigma)
        d = to_d(x, sigma, uncond)
        if sigma_next == 0:
            x = denoised
        else:
            x = denoised + d * sigma_next  # = x + d (sigma_next - sigma) without CFG++
            if old_d is not None:
                x = x + (ge_gamma - 1) * (d - old_d) * (sigma_next - sigma)
        old_d = d
        if callback is not None:
            callback(i, x, denoised)
    return x


@torch.no_grad()
def sample_gradient_estimation(denoise, x, sigmas, callback=None, *, noise_sampler=None,
                               ge_gamma: float = 2.0) -> torch.Tensor:
    """Euler with the gradient-estimation correction (deterministic)."""
    return _gradient_estimation(denoise, x, sigmas, callback, ge_gamma, cfg_pp=False)


@torch.no_grad()
def sample_gradient_estimation_cfg_pp(denoise, x, sigmas, callback=None, *, noise_sampler=None,
                                      ge_gamma: float = 2.0) -> torch.Tensor:
    """Gradient estimation with CFG++."""
    return _gradient_estimation(denoise, x, sigmas, callback, ge_gamma, cfg_pp=True)
