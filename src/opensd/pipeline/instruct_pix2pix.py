"""InstructPix2Pix ("edit") models: UNets with 8 input channels, the noisy latent followed by the
latent of the image being edited (timbrooks' instruct-pix2pix, SDXL edit models of the same shape).

* The image channels are the init image's VAE posterior mode, unscaled: what the model was trained
  on (`encode(x).mode()`), what diffusers' pipeline, ComfyUI's SD1 edit model and A1111 up to 1.5
  feed it (A1111 1.6+ passes it through its scaled encode; not followed). CosXL Edit (an SDXL
  edit model with continuous EDM v-prediction) takes it scaled instead. Without an image
  (txt2img) they are zeros, as ComfyUI does (A1111's txt2img builds inpainting channels, which an
  8-channel UNet cannot take).
* Guidance is three-way (diffusers, A1111's edit path): with u0 = negative prompt without the image,
  ui = negative prompt with the image, c = prompt with the image,
  u0 + cfg * (c - ui) + image_cfg * (ui - u0). This module computes it as plain CFG with the image in
  every row, plus (image_cfg - 1) * (ui - u0): one more row, the negative prompt on zero image
  channels. Image CFG scale None or 1 needs no such row (A1111 then runs plain CFG, the same result).
* Denoising strength is used as for any img2img (A1111 does not change it for edit models).
"""
from __future__ import annotations

import math

import torch
from ..errors import InvalidArgument
from ..sampling.cfg_pp import Guided, with_uncond
from . import guidance as G

DEFAULT_IMAGE_CFG = 1.5  # A1111's UI default and diffusers' image_guidance_scale default


def is_edit(config) -> bool:
    return config.edit


def takes_scaled_image(config) -> bool:
    """Whether the edit model's image channels take the scaled latent: CosXL Edit (a continuous EDM
    model) was trained so, as ComfyUI feeds it; InstructPix2Pix models take the raw one."""
    return getattr(config, "edm", None) is not None


def image_guided(pipe, p) -> bool:
    """Whether this generation runs the third (image-unconditional) row."""
    s = p.image_cfg_scale
    return is_edit(pipe.config) and s is not None and not math.isclose(s, 1.0)


def image_channels(pipe, latent: torch.Tensor | None, width: int = 0, height: int = 0) -> torch.Tensor:
    """The edit model's extra input channels: the init image's `latent` (as the pipeline encodes
    it, scaled) unscaled, as A1111 encodes the same (filled) init image; without one, zeros of the
    image's `width` x `height`."""
    if latent is not None:
        return latent if takes_scaled_image(pipe.config) else pipe.config.vae.unscaled(latent)
    down = pipe.config.vae.downscale
    return torch.zeros(1, pipe.config.latent_channels, height // down, width // down, device=pipe.device)


def with_image_guidance(pipe, p, denoise: Guided, g: G.Guidance, sigmas: torch.Tensor, image: torch.Tensor,
                        clip_skip, text: dict | None, pads, control=None) -> Guided:
    """`denoise` (plain CFG, its negative row always run, every row with the image) turned into
    the three-way edit guidance (module doc); `control`: the pass's ControlNets, in the new row too."""
    if g.scale is not None or not g.negatives:
        raise InvalidArgument("image_cfg_scale: the edit guidance needs plain CFG with a negative row")
    extra = p.image_cfg_scale - 1.0
    bare = pipe.denoiser(G.Guidance(g.negatives[-1], (), 1.0), sigmas, torch.zeros_like(image), clip_skip,
                         control, text=text, pads=pads)

    def both(x, sigma):
        guided, with_image = with_uncond(denoise, x, sigma)
        uncond = bare(x, sigma)
        return guided + extra * (with_image - uncond), uncond

    return Guided(both)
