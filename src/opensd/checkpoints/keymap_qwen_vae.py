"""Qwen-Image VAE files -> the state dict and config of opensd.models.qwen_vae.QwenImageVAE.

Two layouts of the same weights circulate:
* Wan's (ComfyUI's split_files/vae/qwen_image_vae.safetensors, the Wan 2.1 VAE's naming): `conv1` /
  `conv2` (the quant convs) at the top level; `encoder.conv1`, `encoder.downsamples.N` (residual
  blocks `residual.{0,2,3,6}` + `shortcut`, resamplers `resample.1` + `time_conv`), `encoder.middle.
  {0,1,2}`, `encoder.head.{0,2}`; the decoder alike with `decoder.upsamples.N`. These are our names.
* diffusers' (a QwenImagePipeline folder's vae/): `quant_conv`, `post_quant_conv`, `encoder.conv_in`,
  `encoder.down_blocks.N` (numbered as Wan's), `encoder.mid_block.{resnets.0, attentions.0,
  resnets.1}`, `encoder.norm_out`, `encoder.conv_out`, `decoder.up_blocks.I.resnets.J` and
  `decoder.up_blocks.I.upsamplers.0`; residual blocks `norm1`, `conv1`, `norm2`, `conv2`,
  `conv_shortcut`.

Reading either one: causal 3-D kernels (B, C, T, kh, kw) become their last time slice (see
models/qwen_vae.py for why that is exact on a still image), RMS-norm gammas (C, 1, 1[, 1]) become
(C, 1, 1), and the temporal resamplers (`time_conv`) are dropped: they never run on one frame.
The config comes from the shapes; the latent statistics are not in the weights (Qwen-Image's, which
equal Wan 2.1's, unless a diffusers config says otherwise).

Told apart from the other VAEs by `decoder.middle.0.residual.0.gamma` (Wan) or
`decoder.mid_block.resnets.0.norm1.gamma` (diffusers; SD/Flux VAEs have GroupNorm `norm1.weight`).
The Wan 2.2 VAE (48 channels, `decoder.upsamples.0.upsamples...`) is refused by name.
"""
from __future__ import annotations

import re
from typing import Mapping

import torch

from ..errors import CheckpointError
from ..models.qwen_vae import QwenVAEConfig

WAN_MARK = "decoder.middle.0.residual.0.gamma"
DIFFUSERS_MARK = "decoder.mid_block.resnets.0.norm1.gamma"
_WAN22_MARK = "decoder.upsamples.0.upsamples.0.residual.2.weight"

_RESNET = {"norm1.gamma": "residual.0.gamma", "conv1.": "residual.2.", "norm2.gamma": "residual.3.gamma",
           "conv2.": "residual.6.", "conv_shortcut.": "shortcut."}
_TOP = {"quant_conv.": "conv1.", "post_quant_conv.": "conv2.",
        "encoder.conv_in.": "encoder.conv1.", "decoder.conv_in.": "decoder.conv1.",
        "encoder.norm_out.": "encoder.head.0.", "decoder.norm_out.": "decoder.head.0.",
        "encoder.conv_out.": "encoder.head.2.", "decoder.conv_out.": "decoder.head.2."}
_MID = {"resnets.0.": "0.", "attentions.0.": "1.", "resnets.1.": "2."}
_BLOCK = re.compile(r"^(encoder|decoder)\.(down_blocks\.(\d+)|up_blocks\.(\d+)\.(resnets\.(\d+)|upsamplers\.0)"
                    r"|mid_block\.(resnets\.[01]|attentions\.0))\.(.*)$")


def _resnet_rest(rest: str) -> str:
    return next((new + rest[len(old):] for old, new in _RESNET.items() if rest.startswith(old)), rest)


def wan_key(key: str, per_level: int) -> str:
    """Our (Wan) name of a diffusers key; `per_level`: the decoder's entries per level (its
    num_res_blocks + 1 residual blocks and an upsampler). Unknown names come back unchanged."""
    top = next((old for old in _TOP if key.startswith(old)), None)
    if top is not None:
        return _TOP[top] + key[len(top):]
    m = _BLOCK.match(key)
    if m is None:
        return key
    side, _, down, level, up_part, resnet, mid, rest = m.groups()
    if down is not None:
        return f"{side}.downsamples.{down}.{_resnet_rest(rest)}"
    if mid is not None:
        return f"{side}.middle.{_MID[mid + '.']}{_resnet_rest(rest)}"
    index = int(level) * per_level + (int(resnet) if resnet is not None else per_level - 1)
    return f"{side}.upsamples.{index}.{_resnet_rest(rest) if resnet is not None else rest}"


def count(keys, prefix: str) -> int:
    """1 + the highest N of the keys `prefix + N.…` (0 when there are none); imported by detect.py, so
    not taken from detect_dit (which imports detect)."""
    tails = (k[len(prefix):].partition(".") for k in keys if k.startswith(prefix))
    return 1 + max((int(n) for n, dot, _ in tails if dot and n.isdigit()), default=-1)


def is_qwen_vae(shapes: Mapping, prefix: str = "") -> bool:
    """Whether the keys under `prefix` are a Wan 2.1 / Qwen-Image VAE, in either layout (the Wan 2.2
    VAE too, which qwen_vae_config refuses)."""
    return prefix + WAN_MARK in shapes or prefix + DIFFUSERS_MARK in shapes


def _per_level(keys, prefix: str) -> int:
    """The decoder's entries per level in a diffusers file: its residual blocks + the upsampler."""
    return count(keys, prefix + "decoder.up_blocks.0.resnets.") + 1


def _ours(d: Mapping, prefix: str) -> dict:
    """`d`'s entries under `prefix`, prefix dropped, under our (Wan) names; time convs left out."""
    diffusers = prefix + DIFFUSERS_MARK in d
    per_level = _per_level(d, prefix) if diffusers else 0
    out = {}
    for k, v in d.items():
        if not k.startswith(prefix) or ".time_conv." in k:
            continue
        k = k[len(prefix):]
        out[wan_key(k, per_level) if diffusers else k] = v
    return out


def _still(key: str, shape) -> tuple:
    """The 2-D shape a tensor of `shape` takes (see `_still_tensor`)."""
    shape = tuple(shape)
    if key.endswith(".gamma"):
        return (shape[0], 1, 1)
    return shape[:2] + shape[3:] if len(shape) == 5 else shape


def _still_tensor(key: str, v):
    if key.endswith(".gamma"):
        return v.reshape(v.shape[0], 1, 1)
    return v[:, :, -1] if v.ndim == 5 else v


def qwen_vae_state_dict(sd: Mapping, prefix: str = "") -> dict:
    """The VAE under `prefix` (either layout) as QwenImageVAE's state dict: our names, 2-D shapes,
    no temporal resamplers. Missing or unknown keys are left to the strict load that follows."""
    return {k: _still_tensor(k, v) for k, v in _ours(sd, prefix).items()}


def qwen_vae_shapes(shapes: Mapping, prefix: str = "") -> dict[str, tuple]:
    """`qwen_vae_state_dict` on shapes: what the state dict's tensors' shapes will be."""
    return {k: _still(k, s) for k, s in _ours(shapes, prefix).items()}


def qwen_vae_config(shapes: Mapping, prefix: str = "", path: str = "<state dict>", **stats) -> QwenVAEConfig:
    """The config of the Qwen-Image VAE under `prefix` from its shapes (either layout). `stats`:
    latents_mean / latents_std where a diffusers config gives them."""
    if not is_qwen_vae(shapes, prefix):
        raise CheckpointError(path, "not a Qwen-Image (Wan 2.1) VAE: no RMS-normed mid block "
                                    f"({WAN_MARK} or {DIFFUSERS_MARK})")
    if prefix + _WAN22_MARK in shapes:
        raise CheckpointError(path, "a Wan 2.2 VAE (48 latent channels); Qwen-Image takes the Wan 2.1 / "
                                    "Qwen-Image VAE (16 channels, qwen_image_vae.safetensors)")
    s = qwen_vae_shapes(shapes, prefix)
    try:
        base, channels = s["encoder.conv1.weight"][:2]
        entries = count(s, "encoder.downsamples.")
        if any(f"encoder.downsamples.{i}.to_qkv.weight" in s for i in range(entries)):
            raise CheckpointError(path, "a Wan-style VAE with attention in its levels; Qwen-Image's has "
                                        "attention in the middle block only")
        n_levels = 1 + sum(f"encoder.downsamples.{i}.resample.1.weight" in s for i in range(entries))
        per_level, odd = divmod(entries - (n_levels - 1), n_levels)
        if odd or s["decoder.head.2.weight"][0] != channels:
            raise CheckpointError(path, "a Qwen-Image VAE whose encoder levels do not line up")
        mults = tuple(s[f"encoder.downsamples.{i * (per_level + 1)}.residual.2.weight"][0] // base
                      for i in range(n_levels))
        return QwenVAEConfig(base_dim=base, z_dim=s["conv2.weight"][0], dim_mult=mults,
                             num_res_blocks=per_level, input_channels=channels, **stats)
    except KeyError as e:
        raise CheckpointError(path, f"an incomplete Qwen-Image VAE: no {e.args[0]}") from None


def _causal(key: str) -> bool:
    """Whether our 2-D weight `key` is one of the original's causal 3-D convolutions (the resamplers'
    `resample.1` and the attention's 1x1 convolutions are 2-D there too)."""
    return key.endswith(".weight") and ".resample." not in key and ".to_qkv." not in key and ".proj." not in key


def qwen_vae_to_wan(sd: Mapping) -> dict:
    """QwenImageVAE's state dict in the Wan layout's shapes, for a file ComfyUI reads: each causal
    convolution's kernel as the last of 3 time taps (1 for the 1x1 ones) after zero taps, the residual
    and head norms' gammas (C, 1, 1, 1). Exact for still images; the temporal resamplers (`time_conv`)
    are not written, so the file is no video VAE."""
    out = {}
    for k, v in sd.items():
        if k.endswith(".gamma") and ".middle.1." not in k:  # the attention's norm stays (C, 1, 1)
            v = v.reshape(v.shape[0], 1, 1, 1)
        elif v.ndim == 4 and _causal(k):
            taps = 3 if v.shape[-1] == 3 else 1
            v = torch.cat([v.new_zeros((v.shape[0], v.shape[1], taps - 1) + v.shape[2:]), v[:, :, None]], dim=2)
        out[k] = v
    return out
