"""CFG++ (Chung et al. 2024, "CFG++: Manifold-constrained Classifier Free Guidance"): samplers that
step with the guided estimate but renoise with the unconditional one, as ComfyUI's euler_cfg_pp and
dpmpp_2m_cfg_pp do (use CFG scales around 0.5-2).

They need the unconditional estimate of each evaluation, which a plain `denoise(x, sigma)` does not
give: a guided denoiser is a :class:`Guided` (the pipeline's and ComfyUI's guidance build one), whose
`both(x, sigma)` returns (guided, unconditional). Any other denoiser counts as unguided, its
unconditional estimate being its own: then Euler CFG++ is Euler and DPM++ 2M CFG++ is DPM++ 2M.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from .steps import add_noise, ancestral_step, noise_fn

Pair = tuple[torch.Tensor, torch.Tensor]


class Guided:
    """`denoise(x, sigma)` over `both(x, sigma) -> (guided, unconditional)`."""

    def __init__(self, both: Callable[[torch.Tensor, torch.Tensor], Pair]):
        self.both = both

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.both(x, sigma)[0]


def with_uncond(denoise, x: torch.Tensor, sigma: torch.Tensor) -> Pair:
    """(guided, unconditional) estimates; an unguided denoiser's are the same."""
    if isinstance(denoise, Guided):
        return denoise.both(x, sigma)
    denoised = denoise(x, sigma)
    return denoised, denoised


@torch.no_grad()
def sample_euler_cfg_pp(denoise, x: torch.Tensor, sigmas: torch.Tensor, callback=None, *,
                        noise_sampler=None) -> torch.Tensor:
    """Euler CFG++: x_next = denoised + sigma_next * (x - uncond) / sigma."""
    for i in range(len(sigmas) - 1):
        denoised, uncond = with_uncond(denoise, x, sigmas[i])
        x = denoised if sigmas[i + 1] == 0 else denoised + sigmas[i + 1] * (x - uncond) / sigmas[i]
        if callback is not None:
            callback(i, x, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_2m_cfg_pp(denoise, x: torch.Tensor, sigmas: torch.Tensor, callback=None, *,
                           noise_sampler=None) -> torch.Tensor:
    """DPM++ 2M CFG++: DPM-Solver++(2M) whose decay term uses the unconditional estimate and whose
    second-order correction the difference between this guided estimate and the last unconditional one."""
    old_uncond = None
    for i in range(len(sigmas) - 1):
        denoised, uncond = with_uncond(denoise, x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = (sigmas[i] / sigmas[i + 1]).log()
            decay = torch.exp(-h)
            x = denoised + decay * (x - uncond)
            if old_uncond is not None:
                r = (sigmas[i - 1] / sigmas[i]).log() / h
                x = x - torch.expm1(-h) / (2 * r) * (denoised - old_uncond)
        old_uncond = uncond
        if callback is not None:
            callback(i, x, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_2s_ancestral_cfg_pp(denoise, x: torch.Tensor, sigmas: torch.Tensor, callback=None, *,
                                     noise_sampler=None, eta=1.0, s_noise=1.0) -> torch.Tensor:
    """DPM++ 2S a CFG++ (ComfyUI's dpmpp_2s_ancestral_cfg_pp): DPM++ 2S a run on the unconditional
    estimates (the midpoint's too), noise added, then this step's guidance (guided - unconditional
    at sigma) added to x; a step to 0 lands on the guided estimate."""
    noise = noise_fn(noise_sampler, x)
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i]
        denoised, uncond = with_uncond(denoise, x, sigma)
        sigma_down, sigma_up = ancestral_step(sigma, sigmas[i + 1], eta)
        if sigma_down == 0:
            x = uncond
        else:
            sigma_mid = (sigma * sigma_down) ** 0.5  # the midpoint in log sigma
            x_2 = uncond + (sigma_mid / sigma) * (x - uncond)
            uncond_2 = with_uncond(denoise, x_2, sigma_mid)[1]
            x = uncond_2 + (sigma_down / sigma) * (x - uncond_2)
        x = add_noise(x, noise, sigma, sigmas[i + 1], sigma_up, s_noise)
        x = x + (denoised - uncond)
        if callback is not None:
            callback(i, x, denoised)
    return x
