"""Z-Image Fun ControlNets (alibaba-pai's Z-Image-Turbo-Fun-Controlnet-Union 1.0/2.0/2.1) applied through
the same ControlSpec / ControlApplier as SD's (controlnet.py), as diffusers' ZImageControlNetPipeline
applies them: the control image encoded by the pipeline's VAE in [-1, 1] and scaled as the model's
latents (once per image and size); a 2.x ControlNet's further 17 channels (the inpaint mask and
image latent) zero, as that pipeline gives them, or, given a mask (and the image to inpaint), as
ZImageControlNetInpaintPipeline makes them: 1 - the mask at the latent's size and the latent of the
image with its masked pixels grey; the weight is its conditioning scale. The residuals
are computed inside the model's call (they need its refined tokens): a lazy ZImageControl whose
per-row gates carry the weight (and guess mode's unconditional zeros)."""
from __future__ import annotations

import weakref
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from ..checkpoints.z_image_controlnet_files import compatible_z_image_controlnet, read_z_image_controlnet
from ..errors import CheckpointError, InvalidArgument
from ..models.z_image_controlnet import ZImageControl, ZImageControlNet
from .controlnet_inpaint import fit_mask
from .flux_controlnet import encode_hint
from .preprocessors import control_image


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


# A 2.x inpainting hint (1, 7, H, W) in 0..1: the control image, the image to inpaint, the mask (1 = repaint)
INPAINT_HINT_CHANNELS = 7
CONTROL_PIXELS = ("zimage-control", lambda h: h[:, :3] * 2 - 1)
# the image to inpaint with its masked pixels grey (0 in [-1, 1]), as ZImageControlNetInpaintPipeline
INPAINT_PIXELS = ("zimage-inpaint", lambda h: (h[:, 3:6] * 2 - 1) * (h[:, 6:7] < 0.5))


def inpaint_hint(control: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The 7-channel hint of a 2.x ControlNet's inpainting: control and inpaint images (1, 3, H, W) in
    0..1, mask (1, 1, H, W) 0/1 (1 = repaint)."""
    return torch.cat([control, image.to(control), mask.to(control)], dim=1)


def check_inpainting(net: ZImageControlNet, name: str) -> None:
    if net.config.in_channels <= net.config.base.in_channels:
        raise InvalidArgument(f"control mask: {name} is a Z-Image Fun ControlNet 1.0, which has no inpainting "
                              "channels; use the 2.x files")


def check_z_image_inpaint(spec) -> None:
    """A ControlSpec's mask / inpaint_image for a Z-Image ControlNet: PIL images, a 2.x file."""
    check_inpainting(spec.model.net, spec.model.name)
    if spec.mask is None:
        raise InvalidArgument("control inpaint_image: a mask is required with it (white = repaint)")
    if spec.inpaint_image is not None and not isinstance(spec.inpaint_image, Image.Image):
        raise InvalidArgument("control inpaint_image: a PIL image is required")
    if spec.inpaint is not None:
        raise InvalidArgument(f"control inpaint {spec.inpaint!r}: sd-webui-controlnet's inpaint modes are for SD "
                              "ControlNets; a Z-Image ControlNet takes the mask and inpaint_image")


def z_image_inpaint_hint(spec, hint: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """The 7-channel hint of a ControlSpec with a mask: its image to inpaint (grey when none) and mask
    fitted to the output as the control image is."""
    image = torch.full((1, 3, height, width), 0.5) if spec.inpaint_image is None else \
        control_image(spec.inpaint_image, width, height, spec.resize_mode)
    return inpaint_hint(hint, image, fit_mask(spec.mask, width, height, spec.resize_mode))


def _inpaint_latent(loaded, hint, cache, encoder) -> torch.Tensor:
    """[control latent, 1 - mask at the latent's size (nearest), the masked image's latent]."""
    control = encode_hint(loaded, hint, cache, encoder, CONTROL_PIXELS)
    image = encode_hint(loaded, hint, cache, encoder, INPAINT_PIXELS)
    keep = F.interpolate(1 - (hint[:, 6:7].float() >= 0.5).float(), size=control.shape[-2:], mode="nearest")
    return torch.cat([control, keep.to(control), image], dim=1)


def z_image_residuals(loaded, x, hint, scales, cache, encoder=None, in_model: bool = False) -> ZImageControl:
    """`in_model`: alibaba-pai's and ComfyUI's order (a 2.x file's refiner residuals to the model's
    refiner), else diffusers' (models/z_image_controlnet.py)."""
    net: ZImageControlNet = loaded.net
    if hint.shape[1] == INPAINT_HINT_CHANNELS:
        check_inpainting(net, loaded.name)
        latent = _inpaint_latent(loaded, hint, cache, encoder)
    else:
        latent = control_latent(net, encode_hint(loaded, hint, cache, encoder))
    dtype = next(net.parameters()).dtype
    gate = torch.full((len(x),), (scales or [1.0])[0], device=x.device)
    return ZImageControl([(net, latent.to(x.device, dtype), gate, in_model)])
