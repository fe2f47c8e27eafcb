"""InstantX's Qwen-Image ControlNets applied through the same ControlSpec / ControlApplier as SD's
(controlnet.py), as diffusers' QwenImageControlNetPipeline applies them: the control image in
[-1, 1] encoded by the pipeline's VAE and normalised as the model's latents (once per image and
size), the ControlNet run on the step's latents, sigma and each row's text, its residuals scaled by
the weight and added inside the base network (models/qwen_image.py). ComfyUI's ControlNetApplyAdvanced
(with its vae) runs the same (comfy/controlnet.py: the Wan 2.1 latent format, compression 1).

One difference from diffusers under true CFG: its pipeline runs the ControlNet once, on the prompt's
text, and adds those residuals to the negative prompt's pass too; here (as in ComfyUI) each row's
residuals come from that row's own text.

DiffSynth's blockwise ControlNets (models/qwen_image_blockwise.py) load and apply the same way, as
ComfyUI's QwenImageDiffsynthControlnet runs them: the control latent (normalised as the model's; the
Inpaint file's keep channel: 1 - the node's mask, all ones without one) embedded once per image, the
weight a per-row gate on their residuals, which are computed inside the base network's call.
"""
from __future__ import annotations

import weakref
from pathlib import Path

import torch
import torch.nn.functional as F

from ..checkpoints.diffusers_folder import model_folder
from ..checkpoints.files import read_state_dict
from ..checkpoints.qwen_image_controlnet_files import blockwise_config, qwen_image_controlnet_config
from ..errors import CheckpointError
from ..families.chroma import text_mask
from ..models.flux import pack
from ..models.qwen_image_blockwise import Blockwise, QwenImageBlockwiseControlNet
from ..models.qwen_image_controlnet import QwenImageControl, QwenImageControlNet
from .flux_controlnet import encode_hint
from .z_image_controlnet import CONTROL_PIXELS, INPAINT_HINT_CHANNELS


def load_qwen_image_controlnet(path: Path, sd, base, built, blockwise: bool = False):
    """(network, pipeline reference) of an InstantX Qwen-Image ControlNet file or diffusers folder (or
    `blockwise`: a DiffSynth blockwise file) for `base` (a Pipeline or ModelConfig); `built(cls, cfg,
    sd)` makes the frozen network."""
    config = base.config if hasattr(base, "config") else base
    qwen = getattr(config, "qwen_image", None)
    if qwen is None:
        what = "DiffSynth's blockwise" if blockwise else "InstantX's"
        raise CheckpointError(path, f"is a Qwen-Image ControlNet ({what}); the loaded model is not Qwen-Image")
    if sd is None:
        _, weights = model_folder(path, "Qwen-Image ControlNet")
        sd = read_state_dict(weights)
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    pipe = weakref.ref(base) if hasattr(base, "encode_tensor") else None
    if blockwise:
        return built(QwenImageBlockwiseControlNet, blockwise_config(shapes, qwen, path), sd), pipe
    return built(QwenImageControlNet, qwen_image_controlnet_config(shapes, qwen, path), sd), pipe


def qwen_image_residuals(loaded, x, hint, t, context, scales, cache, encoder=None) -> QwenImageControl:
    """The residuals of a loaded Qwen-Image ControlNet for the batch x (the model's latents) at sigma
    `t`, `hint` the control image at the output size (encode_hint)."""
    net = loaded.net
    masked = hint.shape[1] == INPAINT_HINT_CHANNELS  # a blockwise Inpaint file's hint with its mask
    latent = encode_hint(loaded, hint, cache, encoder, CONTROL_PIXELS if masked else None)
    dtype = next(net.parameters()).dtype
    if isinstance(net, QwenImageBlockwiseControlNet):
        return QwenImageControl([_blockwise(net, latent, hint if masked else None, cache, len(x), scales, dtype)])
    mask = text_mask(context)
    out = net(x.to(dtype), t.to(dtype), context.to(dtype), None if bool(mask.all()) else mask,
              latent.to(x.device, dtype).expand(len(x), -1, -1, -1))
    s = scales or [1.0] * len(out)
    return QwenImageControl([[r.float() * w for r, w in zip(out, s)]])


def blockwise_latent(net: QwenImageBlockwiseControlNet, latent: torch.Tensor, hint: torch.Tensor | None) -> torch.Tensor:
    """The blockwise file's input: the control latent, for the Inpaint file with a keep channel: 1 -
    the hint's mask (channel 6 of the 7-channel hint, 1 = repaint) resized bilinearly to the latent,
    or all ones without a mask (ComfyUI's DiffSynthCnetPatch)."""
    if not net.config.extra_channels:
        return latent
    if hint is None:
        return torch.cat([latent, torch.ones_like(latent[:, :1])], dim=1)
    mask = F.interpolate(hint[:, 6:7].float(), size=latent.shape[-2:], mode="bilinear", align_corners=False)
    return torch.cat([latent, (1 - mask).to(latent)], dim=1)


def _blockwise(net: QwenImageBlockwiseControlNet, latent, hint, cache, rows: int, scales, dtype) -> Blockwise:
    """The control latent's tokens embedded once (cached with the latent), the weight as the gate."""
    key = ("blockwise", id(net), id(latent), id(hint))
    tokens = None if cache is None else cache.get(key)
    if tokens is None:
        with torch.no_grad():
            tokens = net.img_in(pack(blockwise_latent(net, latent, hint).to(dtype)))
        if cache is not None:
            cache[key] = tokens
    return Blockwise(net, tokens, torch.full((rows,), (scales or [1.0])[0], device=latent.device))
