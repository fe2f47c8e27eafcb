"""Cheap latent previews: a linear map from the 4 latent channels to RGB (no VAE decode)."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

# Least-squares fits of RGB on the scaled SD 1.x/2.x and SDXL latents (published approximations).
_SD_FACTORS = [[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350], [-0.2829, 0.1762, 0.2721],
               [-0.2120, -0.2616, -0.7177]]
_SDXL_SCALING = 0.13025
_SDXL_FACTORS = [[0.3651, 0.4232, 0.4341], [-0.2533, -0.0042, 0.1068], [0.1076, 0.1111, -0.0362],
                 [-0.3165, -0.2492, -0.2188]]


def latent_preview(denoised: torch.Tensor, config, max_side: int = 512) -> Image.Image | None:
    """The first image of a (B, 4, h, w) scaled-latent estimate as a small RGB picture."""
    if denoised.ndim != 4 or denoised.shape[1] != 4:
        return None
    if config.vae.latents_mean:  # Playground v2.5's normalised latents: back to SDXL's scaled space first
        denoised = config.vae.unscaled(denoised[:1].float()) * _SDXL_SCALING
    factors = _SDXL_FACTORS if config.vae.scaling_factor == _SDXL_SCALING or config.vae.latents_mean else _SD_FACTORS
    rgb = torch.einsum("chw,cr->hwr", denoised[0].float().cpu(), torch.tensor(factors))
    arr = ((rgb + 1.0) / 2.0).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    image = Image.fromarray(np.ascontiguousarray(arr), "RGB")
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side))
    return image
