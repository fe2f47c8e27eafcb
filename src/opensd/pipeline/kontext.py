"""Flux.1 Kontext's reference images in the pipeline (txt2img/img2img `references`): each image is
fitted as diffusers' FluxKontextPipeline fits it (sides cut down to multiples of 16, the Kontext
training size nearest that aspect ratio, Lanczos) and VAE-encoded (posterior mean, model-scaled);
the Flux network appends the latents' tokens after the image's (models/flux.py)."""
from __future__ import annotations

import torch
from PIL import Image

from ..errors import InvalidArgument
from ..families.flux import kontext_size

SIDE = 16  # pixels per packed token (8x VAE, 2x2 patches)


def reference_latents(pipe, images: list) -> list[torch.Tensor]:
    if not images:
        return []
    if not getattr(pipe.family, "reference_latents", False):
        raise InvalidArgument(f"reference-image: only Flux.1 (Kontext) models take reference images, "
                              f"not {pipe.family.label}")
    fitted = []
    for image in images:
        if not isinstance(image, Image.Image):
            raise InvalidArgument("reference-image: a reference must be an image")
        w, h = image.width - image.width % SIDE, image.height - image.height % SIDE
        if not w or not h:
            raise InvalidArgument(f"reference-image: {image.width}x{image.height} is too small "
                                  f"(at least {SIDE}x{SIDE} pixels)")
        fitted.append(image.convert("RGB").resize(kontext_size(w, h), Image.LANCZOS))
    # Kontext's sizes are about 1 MP, most just above the automatic tiling's threshold: encoding them
    # whole costs what a 1024x1024 image does and keeps the latent exact (tiles only when asked for)
    tiling, pipe.vae_tiling = pipe.vae_tiling, bool(pipe.vae_tiling)
    try:
        return [pipe.encode(image) for image in fitted]
    finally:
        pipe.vae_tiling = tiling
