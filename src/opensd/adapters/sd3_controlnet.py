"""SD3 ControlNets (InstantX's, diffusers' SD3ControlNetModel layout) applied through the same
ControlSpec / ControlApplier as SD's (controlnet.py), as diffusers' StableDiffusion3ControlNetPipeline
applies them: the control image VAE-encoded and scaled without the VAE's shift (InstantX's training),
the model's timestep and text tokens, a zero pooled vector (InstantX's), one residual per block.
Stability's SD3.5 ControlNets take the base model's image tokens, the model's timestep and pooled
vector, no text, and the control latent scaled as the model's latents (with the shift); their file's
tag picks how the image becomes the VAE's input (below).
"""
from __future__ import annotations

import weakref
from pathlib import Path

import torch

from ..checkpoints.diffusers_folder import model_folder
from ..checkpoints.files import read_state_dict
from ..checkpoints.sd3_controlnet_files import compatible_sd3_controlnet, read_sd3_controlnet
from ..errors import CheckpointError
from ..models.sd3_controlnet import SD3Control, SD3ControlNet, SD35ControlNet
from .flux_controlnet import encode_hint

FOLDER_CLASS = "SD3ControlNetModel"


def load_sd3_controlnet(path: Path, sd, base, built):
    """(network, pipeline reference) of an SD3 ControlNet file or folder for `base` (a Pipeline or
    ModelConfig); `built(cls, cfg, sd)` makes the frozen network."""
    config = base.config if hasattr(base, "config") else base
    mmdit = getattr(config, "mmdit", None)
    if mmdit is None:
        raise CheckpointError(path, "is an SD3 ControlNet; the loaded model is not SD3/SD3.5")
    head = mmdit.head_dim
    if sd is None:
        config_json, weights = model_folder(path, "SD3 ControlNet")
        head = int(config_json.get("attention_head_dim", head))
        sd = read_state_dict(weights)
    sd, cfg = read_sd3_controlnet(sd, head, path)
    cfg = compatible_sd3_controlnet(cfg, mmdit, path)
    pipe = weakref.ref(base) if hasattr(base, "encode_tensor") else None
    return built(SD3ControlNet if cfg is getattr(cfg, "mmdit", cfg) else SD35ControlNet, cfg, sd), pipe


# The VAE input of an SD3.5 ControlNet's image per its file tag: canny edges as Stability's reference
# code (and diffusers' example) feed them, h * 127.5 + 0.5, not [-1, 1]; depth inverted as ComfyUI's
# loader does (the model wants near = dark; depth preprocessors draw near = bright); blur as usual.
SD35_PIXELS = {1: ("sd35-canny", lambda h: h * 127.5 + 0.5), 2: ("sd35-depth", lambda h: 1 - 2 * h)}


def sd35_residuals(loaded, x, hint, t, y, scales, cache, encoder=None) -> SD3Control:
    net: SD35ControlNet = loaded.net
    model = loaded.pipe() if loaded.pipe is not None else None
    if model is None:
        raise CheckpointError(loaded.path, "an SD3.5 ControlNet uses its model's patch embedding; load it with "
                                           "the pipeline (load_controlnet(path, pipe))")
    latent = encode_hint(loaded, hint, cache, encoder, SD35_PIXELS.get(net.config.control_type))
    dtype = next(net.parameters()).dtype
    with torch.no_grad():
        tokens = model.model.network.image_tokens(x.to(dtype))
    out = net(tokens, t.to(dtype), y.to(dtype), latent.to(x.device, dtype).expand(len(x), -1, -1, -1))
    s = scales or [1.0] * len(out)
    return SD3Control([[r.float() * w for r, w in zip(out, s)]])


def sd3_residuals(loaded, x, hint, t, context, y, scales, cache, encoder=None) -> SD3Control:
    if isinstance(loaded.net, SD35ControlNet):
        return sd35_residuals(loaded, x, hint, t, y, scales, cache, encoder)
    net: SD3ControlNet = loaded.net
    model = loaded.pipe() if loaded.pipe is not None else None
    latent = encode_hint(loaded, hint, cache, encoder)
    vae = (model or encoder).config.vae
    latent = latent + vae.shift_factor * vae.scaling_factor  # (z - 0) * scale: InstantX's control latent
    dtype = next(net.parameters()).dtype
    out = net(x.to(dtype), t.to(dtype), context.to(dtype), torch.zeros_like(y, dtype=dtype),
              latent.to(x.device, dtype).expand(len(x), -1, -1, -1))
    s = scales or [1.0] * len(out)
    return SD3Control([[r.float() * w for r, w in zip(out, s)]])
