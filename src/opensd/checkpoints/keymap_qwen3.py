"""Qwen3 text-encoder files -> the state dict and config of opensd.models.qwen3.Qwen3TextEncoder.

The files in circulation use transformers' key names: ComfyUI's text_encoders/qwen_3_4b*.safetensors
and a Qwen3ForCausalLM save keep the network under `model.`; a Qwen3Model save (a diffusers
folder's text_encoder/ may hold one) has the same keys without it. A language-model head
(`lm_head.weight`) is not needed for conditioning and is dropped. The config is read from the
shapes: hidden size and vocabulary from the embedding, head width from q_norm, the head counts
from the q/k projections, the depth from the numbered layers; the rotary theta and the norms'
epsilon are not in any shape and are Qwen3's (1e6, 1e-6).
"""
from __future__ import annotations

from typing import Mapping

from torch import Tensor

from ..errors import CheckpointError
from ..models.qwen3 import Qwen3Config
from .detect_dit import count

MODEL = "model."
_EMBED = "embed_tokens.weight"
_HEAD = "lm_head.weight"


def qwen3_state_dict(sd: Mapping[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    """The keys under `prefix`, without it, under `model.` (added where a file lacks it), without
    the language-model head. Keys outside `prefix` are ignored; missing or unknown keys are left to
    the strict load that follows."""
    out = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    out.pop(_HEAD, None)
    if MODEL + _EMBED in out:
        return out
    return {MODEL + k: v for k, v in out.items()}


def is_qwen3(shapes: Mapping[str, tuple[int, ...]], prefix: str = "") -> bool:
    """Whether the keys under `prefix` look like a Qwen3 model (with or without `model.`)."""
    return any(prefix + p + "layers.0.self_attn.q_norm.weight" in shapes for p in (MODEL, ""))


def qwen3_config(shapes: Mapping[str, tuple[int, ...]], prefix: str = "",
                 path: str = "<state dict>") -> Qwen3Config:
    """The config of the Qwen3 model under `prefix` (+ `model.` or not) from its shapes."""
    p = prefix + MODEL if prefix + MODEL + _EMBED in shapes else prefix
    try:
        vocab, hidden = shapes[p + _EMBED]
        attn = p + "layers.0.self_attn."
        head_dim = shapes[attn + "q_norm.weight"][0]
        return Qwen3Config(vocab_size=vocab, hidden_size=hidden, head_dim=head_dim,
                           intermediate_size=shapes[p + "layers.0.mlp.gate_proj.weight"][0],
                           num_hidden_layers=count(shapes, p + "layers."),
                           num_attention_heads=shapes[attn + "q_proj.weight"][0] // head_dim,
                           num_key_value_heads=shapes[attn + "k_proj.weight"][0] // head_dim)
    except KeyError as e:
        raise CheckpointError(path, f"an incomplete Qwen3 text encoder: no {e.args[0]}") from None
