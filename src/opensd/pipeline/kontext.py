"""Reference images in the pipeline (txt2img/img2img `references`) for the models that edit with them,
Flux.1 Kontext, FLUX.2 [klein] and Qwen-Image-Edit (whose prompts also see the fitted image): each image is fitted as the model's diffusers pipeline fits it
(the family's fit_reference: Kontext's training size nearest its aspect ratio; klein's at most 1 MP,
centre-cropped to whole tokens) and VAE-encoded (posterior mean, the model's latent); the network
appends the latents' tokens after the image's (models/flux.py, models/flux2.py)."""
from __future__ import annotations

import torch
from PIL import Image

from ..errors import InvalidArgument
from ..families import reference_families, takes_references


def reference_latents(pipe, images: list) -> list[torch.Tensor]:
    """The references' latents; the images the prompts see stay on the pipeline as
    `_reference_images` (for the families whose prompts see them, Qwen-Image-Edit: the fitted images,
    or what the family's prompt_image makes of each original)."""
    pipe._reference_images = []
    if not images:
        return []
    if not takes_references(pipe.family):
        raise InvalidArgument(f"reference-image: {pipe.family.label} models take no reference images; only "
                              f"{reference_families()} models do")
    check = getattr(pipe.family, "check_references", None)
    if check is not None:  # the family's own limit (Qwen-Image-Edit: one; Edit-2509/2511: several)
        check(pipe.config, len(images))
    fitted = []
    for image in images:
        if not isinstance(image, Image.Image):
            raise InvalidArgument("reference-image: a reference must be an image")
        side = pipe.config.size_multiple
        if image.width < side or image.height < side:
            raise InvalidArgument(f"reference-image: {image.width}x{image.height} is too small "
                                  f"(at least {side}x{side} pixels)")
        fit = pipe.family.fit_reference(pipe, image.convert("RGB"))
        if fit.width < side or fit.height < side:  # klein scales a thin image past 1 MP to under one step
            raise InvalidArgument(f"reference-image: {image.width}x{image.height} is too narrow for the model "
                                  f"(fitted to {fit.width}x{fit.height})")
        fitted.append(fit)
    own = getattr(pipe.family, "prompt_image", None)
    pipe._reference_images = fitted if own is None else [own(pipe, i.convert("RGB"), f) for i, f in zip(images, fitted)]
    # the fitted sizes are about 1 MP, most just above the automatic tiling's threshold: encoding them
    # whole costs what a 1024x1024 image does and keeps the latent exact (tiles only when asked for)
    tiling, pipe.vae_tiling = pipe.vae_tiling, bool(pipe.vae_tiling)
    try:
        return [pipe.encode(image) for image in fitted]
    finally:
        pipe.vae_tiling = tiling
