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


def _under(d: Mapping, prefix: str) -> dict:
    out = {}
    for k, v in d.items():
        if k.startswith(prefix):
            rest = k[len(prefix):]
            head = next((p for p in _VISUAL if rest.startswith(p)), None)
            if head:
                out[rest[len(head):]] = v
    return out


def has_qwen25vl_vision(shapes: Mapping, prefix: str = "") -> bool:
    """Whether the file under `prefix` carries the vision tower."""
    return _MARK in _under(shapes, prefix)


def qwen25vl_vision_state_dict(sd: Mapping, prefix: str = "") -> dict:
    """The vision tower's entries, for QwenVisionTower.load_state_dict(strict=True)."""
    return _under(sd, prefix)


def qwen25vl_vision_config(shapes: Mapping, prefix: str = "", path: str = "<state dict>") -> QwenVisionConfig:
    """The tower's config from its shapes. The head count, window and full-attention layers are not
    in the shapes: Qwen2.5-VL's (16 heads of 80, 112-pixel windows, layers 7/15/23/31) for a 32-deep
    1280-wide tower, the only size Qwen-Image-Edit uses; other sizes are refused."""
    v = _under(shapes, prefix)
    if _MARK not in v:
        raise CheckpointError(path, "no Qwen2.5-VL vision tower in this file (visual.* keys); "
                                    "Qwen-Image-Edit needs the text encoder file that has it")
    hidden, channels, frames, patch, _ = tuple(v[_MARK].shape)
    depth = len({k.split(".")[1] for k in v if k.startswith("blocks.")})
    cfg = QwenVisionConfig(depth=depth, hidden_size=hidden, in_channels=channels, temporal_patch_size=frames,
                           patch_size=patch, intermediate_size=tuple(v["blocks.0.mlp.gate_proj.weight"].shape)[0],
                           out_hidden_size=tuple(v["merger.mlp.2.weight"].shape)[0])
    if (depth, hidden) != (32, 1280):
        raise CheckpointError(path, f"a Qwen2.5-VL vision tower {depth} deep and {hidden} wide: only the 7B's "
                                    "(32 deep, 1280 wide) is known")
    return cfg
