"""Qwen2.5-VL text-encoder files (Qwen-Image's) -> the language model as opensd.models.qwen3's
Qwen3TextEncoder with Qwen2's switches (q/k/v biases, no q/k norms).

The layouts in circulation:
* ComfyUI's split_files/text_encoders/qwen_2.5_vl_7b*.safetensors and Qwen's own release
  (transformers before 4.52): the language model under `model.` (`model.layers.N...`), the vision
  tower under `visual.`, the head as `lm_head.weight`;
* a Qwen2_5_VLForConditionalGeneration saved by transformers 4.52 and later (a diffusers folder's
  text_encoder/ may be one): `model.language_model.`, `model.visual.`, `lm_head.weight`; a
  Qwen2_5_VLModel: `language_model.` and `visual.`;
* llama.cpp's GGUF of the language model (arch qwen2vl: `token_embd`, `blk.N.attn_q` with biases,
  ...), which keymap_qwen3 already renames; its vision tower ships as a separate mmproj file.

The vision tower is not loaded (Qwen-Image's text-to-image prompts are text alone): its keys are
handed back, for the caller to report. The language-model head is dropped as for Qwen3.
"""
from __future__ import annotations

from typing import Mapping

from ..errors import CheckpointError
from ..models.qwen3 import Qwen3Config
from .keymap_qwen3 import MODEL, qwen3_config, qwen3_state_dict, split_language

_VISUAL = ("visual.", "model.visual.")
_LANGUAGE = ("model.language_model.", "language_model.")
_MARK = "layers.0.self_attn.k_proj.bias"


def _split(d: Mapping, prefix: str) -> tuple[dict, list[str]]:
    """(the entries under `prefix`, prefix dropped, the language model under `model.`; the vision
    tower's names)."""
    return split_language(d, prefix, _VISUAL, {p: MODEL for p in _LANGUAGE})


def qwen25vl_state_dict(sd: Mapping, prefix: str = "") -> tuple[dict, list[str]]:
    """(Qwen3TextEncoder's state dict of the language model under `prefix`, the vision-tower keys
    left out). Missing or unknown keys are left to the strict load that follows."""
    kept, visual = _split(sd, prefix)
    return qwen3_state_dict(kept), visual


def is_qwen25vl(shapes: Mapping, prefix: str = "") -> bool:
    """Whether the keys under `prefix` are a Qwen2 language model (q/k/v biases, no q/k norms), in
    any of the layouts above."""
    kept = qwen3_state_dict(_split(shapes, prefix)[0])
    return MODEL + _MARK in kept and MODEL + "layers.0.self_attn.q_norm.weight" not in kept


def qwen25vl_config(shapes: Mapping, prefix: str = "", path: str = "<state dict>",
                    head_dim: int = 128) -> Qwen3Config:
    """The language model's config from its shapes (`head_dim`: see keymap_qwen3.qwen3_config)."""
    kept = qwen3_state_dict(_split(shapes, prefix)[0])
    if MODEL + _MARK not in kept:
        raise CheckpointError(path, "not a Qwen2.5-VL text encoder (no q/k/v biases in its first layer)")
    return qwen3_config(kept, path=path, head_dim=head_dim)
