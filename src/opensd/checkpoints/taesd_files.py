"""Tiny-autoencoder (TAESD family) files in their published layouts, as madebyollin's numbering.

- madebyollin's separate files (`taesd_decoder.safetensors`/`.pth`, `taesdxl_encoder...`): bare
  `nn.Sequential` keys, e.g. `1.conv.0.weight`; a decoder file has no `0.*` keys (index 0 is the
  parameter-free clamp), an encoder file's `0.weight` reads 3 image channels.
- diffusers' `AutoencoderTiny` (`diffusion_pytorch_model.safetensors`): `encoder.layers.N.*` with
  the same numbers, `decoder.layers.N.*` one lower (diffusers applies the clamp outside the list).
- ComfyUI's combined module: `taesd_encoder.*` / `taesd_decoder.*` plus scale/shift scalars.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import CheckpointError
from .files import read_state_dict

_DIFFUSERS = re.compile(r"^(encoder|decoder)\.layers\.(\d+)\.(.+)$")
_COMFY = re.compile(r"^taesd_(encoder|decoder)\.(.+)$")
_SCALARS = ("vae_scale", "vae_shift")


def read_tiny_vae(path) -> tuple[dict[str, dict[str, torch.Tensor]], int]:
    """{"encoder": state dict, "decoder": state dict} (the parts the file has, madebyollin keys)
    and the number of latent channels."""
    path = Path(path)
    sd = {k: v for k, v in read_state_dict(path).items() if k not in _SCALARS}
    parts: dict[str, dict[str, torch.Tensor]] = {}
    if sd and all(_DIFFUSERS.match(k) for k in sd):
        for k, v in sd.items():
            part, index, rest = _DIFFUSERS.match(k).groups()
            parts.setdefault(part, {})[f"{int(index) + (part == 'decoder')}.{rest}"] = v
    elif sd and all(_COMFY.match(k) for k in sd):
        for k, v in sd.items():
            part, rest = _COMFY.match(k).groups()
            parts.setdefault(part, {})[rest] = v
    elif sd and all(k[:1].isdigit() for k in sd):
        first = sd.get("0.weight")
        parts["encoder" if first is not None and first.ndim == 4 and first.shape[1] == 3 else "decoder"] = sd
    else:
        raise CheckpointError(path, "not a tiny autoencoder (TAESD) file: expected madebyollin's numbered keys "
                                    "(e.g. 1.conv.0.weight) or diffusers' encoder.layers.* / decoder.layers.*")
    channels = {_latent_channels(path, part, p) for part, p in parts.items()}
    if len(channels) != 1:
        raise CheckpointError(path, f"its encoder and decoder disagree on the latent channels ({sorted(channels)})")
    return parts, channels.pop()


def _latent_channels(path: Path, part: str, sd: dict[str, torch.Tensor]) -> int:
    key = "1.weight" if part == "decoder" else max((k for k in sd if k.endswith(".weight")),
                                                     key=lambda k: int(k.split(".")[0]))
    if key not in sd or sd[key].ndim != 4:
        raise CheckpointError(path, f"not a TAESD {part}: no {key} convolution")
    return int(sd[key].shape[1 if part == "decoder" else 0])
