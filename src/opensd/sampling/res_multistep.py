"""RES multistep (Zhang et al. 2023, "Improved order analysis and design of exponential integrator
for diffusion models", arXiv:2308.02157): ComfyUI's res_multistep family.

In lambda = -log sigma the probability-flow ODE is dx/dlambda = denoised - x, so over a step of
length h the exact update is x_next = e^-h x + integral of e^-(h - u) denoised(u). RES takes
denoised linear in lambda through this step's estimate and the last one:

    x_next = e^-h x + h (b1 denoised + b2 denoised_old),  b2 = phi2(-h) / c2,  b1 = phi1(-h) - b2,

with phi1(z) = (e^z - 1) / z, phi2(z) = (phi1(z) - 1) / z and c2 = (lambda_prev - lambda_old) / h
(negative: the last estimate lies behind), which is second order. The first step, and a step that
ends at 0, are Euler.

* ancestral: the step goes to sigma_down and fresh noise of std sigma_up follows (Euler a's split);
  as in ComfyUI, c2 then measures from the previous step's sigma to its sigma_down.
* cfg_pp: CFG++ (cfg_pp.py): the update runs on the unconditional estimates, and the guidance
  (guided - unconditional) is added to x first; its first step is Euler CFG++.
"""
from __future__ import annotations

import torch

from .cfg_pp import with_uncond
from .steps import add_noise, ancestral_step, noise_fn, to_d


def _phi1(z: torch.Tensor) -> torch.Tensor:
    return torch.expm1(z) / z


def _phi2(z: torch.Tensor) -> torch.Tensor:
    return (_phi1(z) - 1) / z


def _res_multistep(denoise, x, sigmas, callback, noise_sampler, eta, s_noise, cfg_pp):
    noise = noise_fn(noise_sampler, x)
    old, old_sigma_down = None, None  # the last step's estimate (unconditional under CFG++) and target
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i]
        if cfg_pp:
            denoised, uncond = with_uncond(denoise, x, sigma)
        else:
            denoised = uncond = denoise(x, sigma)
        sigma_down, sigma_up = ancestral_step(sigma, sigmas[i + 1], eta)
        if sigma_down == 0 or old is None:  # Euler (CFG++: from the guided estimate)
            x = denoised + to_d(x, sigma, uncond) * sigma_down
        else:
            h = (sigma / sigma_down).log()
            c2 = (old_sigma_down / sigmas[i - 1]).log() / h
            b2 = torch.nan_to_num(_phi2(-h) / c2, nan=0.0)
            b1 = torch.nan_to_num(_phi1(-h), nan=1.0) - b2
            x = x + (denoised - uncond)  # CFG++'s guidance; zero otherwise
            x = torch.exp(-h) * x + h * (b1 * uncond + b2 * old)
        x = add_noise(x, noise, sigma, sigmas[i + 1], sigma_up, s_noise)
        old, old_sigma_down = uncond, sigma_down
        if callback is not None:
            callback(i, x, denoised)
    return x


@torch.no_grad()
def sample_res_multistep(denoise, x, sigmas, callback=None, *, noise_sampler=None) -> torch.Tensor:
    """RES second-order multistep (deterministic)."""
    return _res_multistep(denoise, x, sigmas, callback, noise_sampler, 0.0, 1.0, cfg_pp=False)


@torch.no_grad()
def sample_res_multistep_cfg_pp(denoise, x, sigmas, callback=None, *, noise_sampler=None) -> torch.Tensor:
    """RES multistep with CFG++."""
    return _res_multistep(denoise, x, sigmas, callback, noise_sampler, 0.0, 1.0, cfg_pp=True)


@torch.no_grad()
def sample_res_multistep_ancestral(denoise, x, sigmas, callback=None, *, noise_sampler=None, eta=1.0,
                                   s_noise=1.0) -> torch.Tensor:
    """RES multistep to sigma_down, then noise up to sigma_next; eta=0 is res_multistep."""
    return _res_multistep(denoise, x, sigmas, callback, noise_sampler, eta, s_noise, cfg_pp=False)


@torch.no_grad()
def sample_res_multistep_ancestral_cfg_pp(denoise, x, sigmas, callback=None, *, noise_sampler=None, eta=1.0,
                                          s_noise=1.0) -> torch.Tensor:
    """RES multistep ancestral with CFG++; eta=0 is res_multistep_cfg_pp."""
    return _res_multistep(denoise, x, sigmas, callback, noise_sampler, eta, s_noise, cfg_pp=True)
