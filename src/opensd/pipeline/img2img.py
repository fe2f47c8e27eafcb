"""A1111's img2img arithmetic: how denoising strength cuts the sampling schedule, and the latent mask
inpainting blends with."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image

from . import images as I


def steps_run(steps: int, strength: float) -> int:
    """img2img runs int(strength * steps) + 1 of a `steps`-long schedule (all of it at strength 1)."""
    return int(min(strength, 0.999) * steps) + 1 if strength < 1 else steps


def sigmas_from(sigmas: torch.Tensor, steps: int, strength: float) -> torch.Tensor:
    """The tail of a `steps`-step schedule that img2img at `strength` samples."""
    if strength >= 1:
        return sigmas
    t_enc = int(min(strength, 0.999) * steps)
    return sigmas[steps - t_enc - 1:]


def filled(source: Image.Image, mask: Image.Image | None, fill: str) -> Image.Image:
    """The init image as A1111 holds it after masking.fill, which it runs for every masked-content
    mode but "original": what colour correction matches and inpainting models are conditioned on."""
    return source if mask is None or fill == "original" else I.fill_masked(source, mask)


def latent_mask(mask: Image.Image, size: tuple[int, int], device) -> torch.Tensor:
    """Mask at latent resolution, rounded to 0/1 as A1111 does for the denoising blend."""
    m = F.interpolate(I.mask_to_tensor(mask), size=size, mode="area")
    return m.round().to(device)
