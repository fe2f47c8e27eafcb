"""SaveLatent and LoadLatent (ComfyUI core): a LATENT's samples as ComfyUI's ``.latent`` files --
safetensors holding the raw samples under "latent_tensor" and an empty "latent_format_version_0"
tensor that marks the format, with the prompt and the workflow (JSON text) as metadata.

Saving numbers files as SaveImage does (``latents/ComfyUI_00001_.latent``), inside the output folder
only. Loading reads a file of the input folder through safetensors only, never a pickle. A file
without the version marker comes from ComfyUI's first format, which stored the latent multiplied by
SD 1.x's scaling factor: its samples are divided by 0.18215, as ComfyUI does."""
from __future__ import annotations

import json

import torch

from ..checkpoints.files import read_state_dict, sniff_format
from ..errors import CheckpointError, InvalidArgument
from .nodes_image import (
    SAVE_HIDDEN,
    check_prefix,
    input_file_check,
    input_file_fingerprint,
    input_path,
    save_numbered_safetensors,
    save_path,
)
from .types import Choices, NodeDef, register

SAMPLES, VERSION_0 = "latent_tensor", "latent_format_version_0"
FIRST_FORMAT_SCALE = 0.18215


def save_latent(call, samples, filename_prefix="latents/ComfyUI", prompt=None, extra_pnginfo=None):
    target, sub, name, counter = save_path(call.ctx.outputs_dir, filename_prefix, 0, 0)  # %width%: 0, as ComfyUI
    metadata = {"prompt": "" if prompt is None else json.dumps(prompt)}
    metadata.update({key: json.dumps(value) for key, value in (extra_pnginfo or {}).items()})
    tensors = {SAMPLES: samples["samples"].detach().float().cpu().contiguous(), VERSION_0: torch.tensor([])}
    filename = save_numbered_safetensors(target, name, counter, ".latent", tensors, metadata)
    return {"ui": {"latents": [{"filename": filename, "subfolder": sub, "type": "output"}]}, "result": ()}


register(NodeDef(
    "SaveLatent", save_latent,
    {"samples": ("LATENT", {}), "filename_prefix": ("STRING", {"default": "latents/ComfyUI"})},
    hidden=SAVE_HIDDEN, category="_for_testing", output_node=True, check=check_prefix))


def load_latent(call, latent):
    path = input_path(call.ctx, latent)
    if path is None:
        raise FileNotFoundError(f"Invalid latent file: {latent}")
    try:
        if sniff_format(path) != "safetensors":
            raise InvalidArgument(f"latent: {latent} is not a safetensors .latent file (only those are read)")
        tensors = read_state_dict(path)
    except CheckpointError as e:  # its message names the server's path; the client knows the file by name
        raise InvalidArgument(f"latent: {latent}: {e.problem}") from None
    if SAMPLES not in tensors:
        raise InvalidArgument(f"latent: {latent} holds no '{SAMPLES}' tensor")
    samples = tensors[SAMPLES]
    if samples.dim() != 4 or samples.numel() == 0:  # what every LATENT user expects: (B, C, h, w)
        raise InvalidArgument(f"latent: {latent} holds a latent of shape {tuple(samples.shape)}, not "
                              "(batch, channels, height, width)")
    scale = 1.0 if VERSION_0 in tensors else 1.0 / FIRST_FORMAT_SCALE
    return ({"samples": samples.float() * scale},)


register(NodeDef(
    "LoadLatent", load_latent, {"latent": (Choices("input_latents", strict=False), {})}, ("LATENT",),
    category="_for_testing", check=input_file_check("latent"), fingerprint=input_file_fingerprint("latent")))
