"""InstantX's Qwen-Image ControlNets applied through the same ControlSpec / ControlApplier as SD's
(controlnet.py), as diffusers' QwenImageControlNetPipeline applies them: the control image in
[-1, 1] encoded by the pipeline's VAE and normalised as the model's latents (once per image and
size), the ControlNet run on the step's latents, sigma and each row's text, its residuals scaled by
the weight and added inside the base network (models/qwen_image.py). ComfyUI's ControlNetApplyAdvanced
(with its vae) runs the same (comfy/controlnet.py: the Wan 2.1 latent format, compression 1).

One difference from diffusers under true CFG: its pipeline runs the ControlNet once, on the prompt's
text, and adds those residuals to the negative prompt's pass too; here (as in ComfyUI) each row's
residuals come from that row's own text.
"""
from __future__ import annotations

import weakref
from pathlib import Path

from ..checkpoints.diffusers_folder import model_folder
from ..checkpoints.files import read_state_dict
from ..checkpoints.qwen_image_controlnet_files import qwen_image_controlnet_config
from ..errors import CheckpointError
from ..families.chroma import text_mask
from ..models.qwen_image_controlnet import QwenImageControl, QwenImageControlNet
from .flux_controlnet import encode_hint


def load_qwen_image_controlnet(path: Path, sd, base, built):
    """(network, pipeline reference) of an InstantX Qwen-Image ControlNet file or diffusers folder for
    `base` (a Pipeline or ModelConfig); `built(cls, cfg, sd)` makes the frozen network."""
    config = base.config if hasattr(base, "config") else base
    qwen = getattr(config, "qwen_image", None)
    if qwen is None:
        raise CheckpointError(path, "is a Qwen-Image ControlNet (InstantX's); the loaded model is not Qwen-Image")
    if sd is None:
        _, weights = model_folder(path, "Qwen-Image ControlNet")
        sd = read_state_dict(weights)
    cfg = qwen_image_controlnet_config({k: tuple(v.shape) for k, v in sd.items()}, qwen, path)
    pipe = weakref.ref(base) if hasattr(base, "encode_tensor") else None
    return built(QwenImageControlNet, cfg, sd), pipe


def qwen_image_residuals(loaded, x, hint, t, context, scales, cache, encoder=None) -> QwenImageControl:
    """The residuals of a loaded Qwen-Image ControlNet for the batch x (the model's latents) at sigma
    `t`, `hint` the control image at the output size (encode_hint)."""
    net: QwenImageControlNet = loaded.net
    latent = encode_hint(loaded, hint, cache, encoder)
    dtype = next(net.parameters()).dtype
    mask = text_mask(context)
    out = net(x.to(dtype), t.to(dtype), context.to(dtype), None if bool(mask.all()) else mask,
              latent.to(x.device, dtype).expand(len(x), -1, -1, -1))
    s = scales or [1.0] * len(out)
    return QwenImageControl([[r.float() * w for r, w in zip(out, s)]])
