"""Z-Image Fun ControlNets (alibaba-pai's Z-Image-Turbo-Fun-Controlnet-Union 1.0/2.0/2.1) applied through
the same ControlSpec / ControlApplier as SD's (controlnet.py), as diffusers' ZImageControlNetPipeline
applies them: the control image encoded by the pipeline's VAE in [-1, 1] and scaled as the model's
latents (once per image and size); a 2.x ControlNet's further 17 channels (the inpaint mask and
image latent) zero, as that pipeline gives them; the weight is its conditioning scale. The residuals
are computed inside the model's call (they need its refined tokens): a lazy ZImageControl whose
per-row gates carry the weight (and guess mode's unconditional zeros)."""
from __future__ import annotations

import weakref
from pathlib import Path

import torch
import torch.nn.functional as F

from ..checkpoints.z_image_controlnet_files import compatible_z_image_controlnet, read_z_image_controlnet
from ..errors import CheckpointError
from ..models.z_image_controlnet import ZImageControl, ZImageControlNet
from .flux_controlnet import encode_hint


def load_z_image_controlnet(path: Path, sd, base, built):
    """(network, pipeline reference) of a Fun ControlNet file for `base` (a Pipeline or ModelConfig);
    `built(cls, cfg, sd)` makes the frozen network."""
    config = base.config if hasattr(base, "config") else base
    z_image = getattr(config, "z_image", None)
    if z_image is None:
        raise CheckpointError(path, "is a Z-Image ControlNet (Z-Image-Turbo-Fun-Controlnet-Union); the loaded "
                                    "model is not Z-Image")
    sd, cfg = read_z_image_controlnet(sd, path)
    cfg = compatible_z_image_controlnet(cfg, z_image, path)
    pipe = weakref.ref(base) if hasattr(base, "encode_tensor") else None
    return built(ZImageControlNet, cfg, sd), pipe


def control_latent(net: ZImageControlNet, latent: torch.Tensor) -> torch.Tensor:
    """The control image's latent padded with zero channels to the ControlNet's input (2.x: 33)."""
    extra = net.config.in_channels - latent.shape[1]
    if extra < 0:
        raise CheckpointError("<controlnet>", f"this Z-Image ControlNet takes {net.config.in_channels} channels; "
                                              f"the VAE gives {latent.shape[1]}")
    return F.pad(latent, (0, 0, 0, 0, 0, extra))


def z_image_residuals(loaded, x, hint, scales, cache, encoder=None) -> ZImageControl:
    net: ZImageControlNet = loaded.net
    latent = control_latent(net, encode_hint(loaded, hint, cache, encoder))
    dtype = next(net.parameters()).dtype
    gate = torch.full((len(x),), (scales or [1.0])[0], device=x.device)
    return ZImageControl([(net, latent.to(x.device, dtype), gate)])
