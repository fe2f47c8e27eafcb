"""Flux.1 ControlNets applied through the same ControlSpec / ControlApplier as SD's (controlnet.py).

What differs from a UNet ControlNet: the control image is encoded by the pipeline's VAE (in [-1, 1],
scaled and shifted as the model's latents; once per image and size), the residuals are the
FluxControl of models/flux_controlnet.py, the ControlNet takes the same distilled guidance as the
model (diffusers' FluxControlNetPipeline; ignored by ControlNets without a guidance embedding), and
a Union ControlNet's type is a Flux Union mode (union_types.FLUX_MODES).

XLabs' and MistoLine's ControlNets take the control image itself (in [-1, 1], at the output size;
ComfyUI's `hint * 2 - 1`), need no VAE, and their residuals are tiled over the model's blocks.
"""
from __future__ import annotations

import weakref
from pathlib import Path

import torch

from ..checkpoints.diffusers_folder import model_folder
from ..checkpoints.files import read_state_dict
from ..checkpoints.flux_controlnet_files import compatible_flux_controlnet, read_flux_controlnet
from ..checkpoints.xlabs_controlnet_files import is_xlabs_controlnet, read_xlabs_controlnet
from ..errors import CheckpointError, InvalidArgument
from ..models.flux_controlnet import FluxControl, FluxControlNet, tiled

DEFAULT_GUIDANCE = 3.5  # Flux dev's distilled guidance when the generation gives none
FOLDER_CLASS = "FluxControlNetModel"


def load_flux_controlnet(path: Path, sd, base, device, dtype, built):
    """(network, encoder reference) of a Flux ControlNet file or folder for `base` (a Pipeline or a
    ModelConfig); `built(cls, cfg, sd)` makes the frozen network."""
    config = base.config if hasattr(base, "config") else base
    flux = getattr(config, "flux", None)
    if flux is None:
        raise CheckpointError(path, "is a Flux.1 ControlNet; the loaded model is not Flux.1")
    config_json = None
    if sd is None:
        config_json, weights = model_folder(path, "Flux ControlNet")
        sd = read_state_dict(weights)
    if is_xlabs_controlnet(sd):
        sd, cfg = read_xlabs_controlnet(path, sd)
    else:
        sd, cfg = read_flux_controlnet(path, sd, config_json)
    cfg = compatible_flux_controlnet(cfg, flux, path)
    pipe = weakref.ref(base) if hasattr(base, "encode_tensor") and not cfg.pixel_hint else None
    return built(FluxControlNet, cfg, sd), pipe


def encode_hint(loaded, hint, cache, encoder=None, pixels=None) -> torch.Tensor:
    """The control image (1, 3, H, W) in [0, 1] as a latent scaled as the model's (cached per hint and
    `pixels`), encoded by `encoder`'s VAE (a Pipeline; default the pipeline the ControlNet was loaded
    for). `pixels`: (name, hint -> the VAE's input) where a ControlNet wants other than [-1, 1]."""
    name, to_pixels = pixels or ("", lambda h: h * 2 - 1)
    key = ("latent", id(hint), name)
    latent = None if cache is None else cache.get(key)
    if latent is None:
        model = loaded.pipe() if loaded.pipe is not None else None
        pipe = encoder or model
        if pipe is None:
            raise CheckpointError(loaded.path, "a DiT ControlNet needs the pipeline's VAE for its control image; "
                                               "load it with the pipeline (load_controlnet(path, pipe))")
        if next(pipe.model.vae.parameters()).is_meta:
            raise InvalidArgument("vae: this ControlNet's image is encoded by a VAE and the model has none "
                                  "loaded; connect the VAE to Apply ControlNet's vae input")
        latent = pipe.encode_tensor(to_pixels(hint.float()))
        if model is not None and pipe is not model:  # another VAE's pipe: scaled as the model's latents
            latent = model.config.vae.scaled(pipe.config.vae.unscaled(latent))
        if cache is not None:
            cache[key] = latent
    return latent


def flux_residuals(loaded, x, hint, t, context, y, control_type, scales, cache, guidance, encoder=None) -> FluxControl:
    """The residuals of a loaded Flux ControlNet for the batch x (the model's latents; Fill's extra
    channels cut off), `hint` the control image at the output size (encode_hint)."""
    net: FluxControlNet = loaded.net
    pixels = net.config.pixel_hint
    latent = hint.float() * 2 - 1 if pixels else encode_hint(loaded, hint, cache, encoder)
    dtype = next(net.parameters()).dtype
    c = net.config.flux.out_channels // 4
    g = None if guidance is None or guidance == float("-inf") else torch.full((len(x),), float(guidance), device=x.device)
    double, single = net(x[:, :c].to(dtype), t.to(dtype), context.to(dtype), None if y is None else y.to(dtype),
                         g, latent.to(x.device, dtype).expand(len(x), -1, -1, -1), control_type)
    n = len(double) + len(single)
    s = scales or [1.0] * n
    double = [r.float() * w for r, w in zip(double, s)]
    single = [r.float() * w for r, w in zip(single, s[len(double):])]
    if pixels:  # one per block of the model (Flux.forward_tokens' run rule then gives each block its own)
        double, single = tiled(double, net.config.base_blocks[0]), tiled(single, net.config.base_blocks[1])
    return FluxControl([(double, single)])
