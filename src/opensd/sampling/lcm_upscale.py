"""LCM sampling that enlarges the latent between steps (ComfyUI's SamplerLCMUpscale): each step
jumps to the model's estimate, resizes it towards `total_upscale` times the starting size, then
re-noises it to the next sigma with fresh noise of the new size. The size grows linearly over the
first `upscale_steps` steps (by default about half of them), so the later steps refine the
enlarged image at full size.

The resize and the noise are the caller's (the resize method is a workflow choice; the noise must
come in any shape), which keeps this a pure function over `denoise(x, sigma)`."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

Resize = Callable[[torch.Tensor, int, int], torch.Tensor]  # (x, width, height) -> resized x
NoiseLike = Callable[[torch.Tensor], torch.Tensor]  # standard normal noise shaped like its argument


def upscale_factors(n_sigmas: int, total_upscale: float, upscale_steps: int | None) -> list[float]:
    """The factor (of the starting size) after each of the first steps; later steps keep the size."""
    if upscale_steps is None:
        points = max(n_sigmas // 2 + 1, 2)
    else:
        points = min(upscale_steps + 1, n_sigmas + 1)
    return [float(f) for f in np.linspace(1.0, total_upscale, points)[1:]]


@torch.no_grad()
def sample_lcm_upscale(denoise, x: torch.Tensor, sigmas: torch.Tensor, callback=None, *, resize: Resize,
                       noise_like: NoiseLike, total_upscale: float = 2.0,
                       upscale_steps: int | None = None) -> torch.Tensor:
    height, width = x.shape[-2:]
    factors = upscale_factors(len(sigmas), total_upscale, upscale_steps)
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[i])
        if callback is not None:
            callback(i, x, denoised)
        x = denoised
        if i < len(factors):
            size = (round(width * factors[i]), round(height * factors[i]))
            if size != (x.shape[-1], x.shape[-2]):
                x = resize(x, *size)
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * noise_like(x)
    return x
