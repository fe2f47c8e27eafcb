"""Heun++ 2 (ComfyUI's heunpp2, from Carzit's sd-webui-samplers-scheduler): Euler predictions one
and two sigmas ahead, their slopes blended with the current one by weights that grow with how much
noise remains, so early steps lean on the look-ahead slopes and late ones are plain Euler.

    three ahead left:  d' = w1 d + w2 d(x2, sigma[i+1]) + w3 d(x3, sigma[i+2]),
                       w2 = sigma[i+1] / (3 sigma[0]), w3 = sigma[i+2] / (3 sigma[0]), w1 = 1 - w2 - w3
    one step before the end: Heun with w2 = sigma[i+1] / (2 sigma[0]), w1 = 1 - w2
    the last step: Euler

where x2 = x + d (sigma[i+1] - sigma_hat) and x3 = x2 + d2 (sigma[i+2] - sigma[i+1]); the weights
sum to 1, so it is consistent (first order). Karras churn as Heun's; "the end" is the last sigma.
"""
from __future__ import annotations

import torch

from .steps import churn, noise_fn, to_d


@torch.no_grad()
def sample_heunpp2(denoise, x: torch.Tensor, sigmas: torch.Tensor, callback=None, *, noise_sampler=None,
                   s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0) -> torch.Tensor:
    """Heun++ 2: up to three slope evaluations per step (see the module doc)."""
    noise = noise_fn(noise_sampler, x)
    end, n = sigmas[-1], len(sigmas) - 1
    for i in range(n):
        x, sigma_hat = churn(x, sigmas[i], n, noise, s_churn, s_tmin, s_tmax, s_noise)
        denoised = denoise(x, sigma_hat)
        d = to_d(x, sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] != end:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], denoise(x_2, sigmas[i + 1]))
            if sigmas[i + 2] == end:
                w2 = sigmas[i + 1] / (2 * sigmas[0])
                d = (1 - w2) * d + w2 * d_2
            else:
                x_3 = x_2 + d_2 * (sigmas[i + 2] - sigmas[i + 1])
                d_3 = to_d(x_3, sigmas[i + 2], denoise(x_3, sigmas[i + 2]))
                w2, w3 = sigmas[i + 1] / (3 * sigmas[0]), sigmas[i + 2] / (3 * sigmas[0])
                d = (1 - w2 - w3) * d + w2 * d_2 + w3 * d_3
        x = x + d * dt
        if callback is not None:
            callback(i, x, denoised)
    return x
