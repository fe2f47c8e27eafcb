"""Pieces every sampler family shares: the ODE slope, the ancestral split of a step, and noise.

They live apart from samplers.py so that the sampler files beside it (res_multistep.py, er_sde.py,
...) use the same pieces without importing the registry that imports them.
"""
from __future__ import annotations

import torch


def noise_fn(noise_sampler, x: torch.Tensor):
    """The noise sampler to call: the caller's, or fresh standard normal noise shaped like x."""
    return noise_sampler if noise_sampler is not None else (lambda sigma, sigma_next: torch.randn_like(x))


def to_d(x, sigma, denoised):
    """The probability-flow ODE's slope dx/dsigma."""
    return (x - denoised) / sigma


def ancestral_step(sigma, sigma_next, eta):
    """Split a step sigma -> sigma_next into a deterministic step to sigma_down and fresh noise of
    std sigma_up (sigma_down**2 + sigma_up**2 = sigma_next**2); eta=1 is the DDPM posterior."""
    if not eta:
        return sigma_next, sigma_next * 0
    sigma_up = torch.minimum(sigma_next, eta * (sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / sigma ** 2) ** 0.5)
    return (sigma_next ** 2 - sigma_up ** 2) ** 0.5, sigma_up


def add_noise(x, noise, sigma, sigma_next, sigma_up, s_noise):
    """x plus sigma_up * s_noise of fresh noise, unless the step ends at 0 or adds none."""
    if sigma_next > 0 and sigma_up > 0 and s_noise:
        x = x + noise(sigma, sigma_next) * s_noise * sigma_up
    return x


def churn(x, sigma, steps, noise, s_churn, s_tmin, s_tmax, s_noise):
    """Karras et al. (2022) Alg. 2: raise the noise level to sigma_hat = sigma * (1 + gamma)."""
    gamma = min(s_churn / steps, 2 ** 0.5 - 1) if s_churn > 0 and s_tmin <= sigma <= s_tmax else 0.0
    if gamma <= 0:
        return x, sigma
    sigma_hat = sigma * (gamma + 1)
    return x + noise(sigma, sigma_hat) * s_noise * (sigma_hat ** 2 - sigma ** 2) ** 0.5, sigma_hat
