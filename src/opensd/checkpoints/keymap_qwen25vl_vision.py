"""Qwen2.5-VL's vision tower from the text-encoder files that carry it (Qwen-Image-Edit reads the
condition image through it): the keys under `visual.` (ComfyUI's qwen_2.5_vl_7b*.safetensors, Qwen's
own release) or `model.visual.` (transformers >= 4.52), or `visual.` of a Qwen2_5_VLModel, are
already models.qwen25vl_vision's names once the prefix is dropped. llama.cpp ships the tower as a
separate mmproj GGUF with other names, not read here."""
from __future__ import annotations

from typing import Mapping

from ..errors import CheckpointError
from ..models.qwen25vl_vision import QwenVisionConfig

_VISUAL = ("model.visual.", "visual.")
_MARK = "patch_embed.proj.weight"
HEAD_DIM = 80  # Qwen2.5-VL's vision heads (1280 / 16)


def _under(d: Mapping, prefix: str) -> dict:
    out = {}
    for k, v in d.items():
        if k.startswith(prefix):
            rest = k[len(prefix):]
            head = next((p for p in _VISUAL if rest.startswith(p)), None)
            if head:
                out[rest[len(head):]] = v
    return out


def _shape(v) -> tuple:
    """A tensor's shape, or a shape given as such."""
    return tuple(getattr(v, "shape", v))


def has_qwen25vl_vision(shapes: Mapping, prefix: str = "") -> bool:
    """Whether the file under `prefix` carries the vision tower."""
    return _MARK in _under(shapes, prefix)


def qwen25vl_vision_state_dict(sd: Mapping, prefix: str = "") -> dict:
    """The vision tower's entries, for QwenVisionTower.load_state_dict(strict=True)."""
    return _under(sd, prefix)


def qwen25vl_vision_config(shapes: Mapping, prefix: str = "", path: str = "<state dict>") -> QwenVisionConfig:
    """The tower's config from its shapes. What the shapes do not hold follows Qwen2.5-VL's layout
    (the 7B's, the only size Qwen-Image-Edit uses): heads of 80 channels, 112-pixel windows, full
    attention in every (depth / 4)-th layer (7, 15, 23, 31 of 32)."""
    v = _under(shapes, prefix)
    if _MARK not in v:
        raise CheckpointError(path, "no Qwen2.5-VL vision tower in this file (visual.* keys); "
                                    "Qwen-Image-Edit needs the text encoder file that has it")
    if len(_shape(v[_MARK])) != 5:  # a damaged file: left out as any other tower opensd cannot build
        raise CheckpointError(path, f"visual.{_MARK} is {_shape(v[_MARK])}, not a 3-D patch convolution's weight")
    hidden, channels, frames, patch, _ = _shape(v[_MARK])
    depth = len({k.split(".")[1] for k in v if k.startswith("blocks.")})
    if hidden % HEAD_DIM or depth % 4 or not depth:
        raise CheckpointError(path, f"a vision tower {hidden} wide and {depth} deep is not Qwen2.5-VL's layout")
    step = depth // 4
    try:
        widths = _shape(v["blocks.0.mlp.gate_proj.weight"])[0], _shape(v["merger.mlp.2.weight"])[0]
    except (KeyError, IndexError) as e:
        raise CheckpointError(path, f"an incomplete or damaged vision tower ({type(e).__name__}: {e})") from None
    return QwenVisionConfig(depth=depth, hidden_size=hidden, num_heads=hidden // HEAD_DIM, in_channels=channels,
                            temporal_patch_size=frames, patch_size=patch, intermediate_size=widths[0],
                            out_hidden_size=widths[1], fullatt_block_indexes=tuple(range(step - 1, depth, step)))
