"""Mistral Small 3.1 text-encoder files (FLUX.2 [dev]'s) -> the language model as
opensd.models.qwen3's Qwen3TextEncoder with Mistral's switches (no biases, no q/k norms, theta 1e9,
epsilon 1e-5).

The layouts in circulation:
* ComfyUI's split_files/text_encoders/mistral_3_small_flux2_{bf16,fp8}.safetensors: the language
  model under `model.` (`model.layers.N...`), cut to the 30 layers FLUX.2 [dev] reads, beside the
  vision tower (`vision_tower.`), the projector (`multi_modal_projector.`) and the tokenizer kept
  as a tensor (`tekken_model`);
* a Mistral3ForConditionalGeneration saved by transformers before 4.52 (a diffusers folder's
  text_encoder/): `language_model.model.`, `language_model.lm_head.`, `vision_tower.`,
  `multi_modal_projector.`; from 4.52 on: `model.language_model.`, `model.vision_tower.`,
  `model.multi_modal_projector.`, `lm_head.`;
* a MistralForCausalLM / MistralModel save: `model.` + `lm_head.`, or the bare names.

Only the language model is loaded (FLUX.2's prompts are text): the other keys are handed back, for
the caller to report. The config comes from the shapes as for Qwen (keymap_qwen3.qwen3_config),
with Mistral's rotary theta and epsilon, which no shape holds. A file with fewer layers than the
released 40 is a cut one: its last layer's output is a middle state of the whole model, so no final
norm is applied to it (Qwen3Config.final_norm).

llama.cpp's GGUF files of Mistral (arch llama: `token_embd`, `blk.N.attn_q`, ...) are renamed by
keymap_qwen3; llama.cpp stores a Llama's q and k projections with the rows of each head permuted
for its interleaved rotary layout (its converter's `permute`: the head's rows taken as (2, half),
transposed), so their rows are put back here (`unpermute`; a quantised tensor's rows of blocks
move whole, so nothing is dequantised).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Mapping

import torch

from ..errors import CheckpointError
from ..models.qwen3 import MISTRAL_SMALL_31, Qwen3Config
from ..models.stored_weights import Quantized
from .keymap_qwen3 import MODEL, qwen3_config, qwen3_state_dict, split_language

_OTHER = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.",
          "tekken_model")
_LANGUAGE = {"model.language_model.": MODEL, "language_model.model.": MODEL, "language_model.": ""}
_ATTN = MODEL + "layers.0.self_attn."
GGUF_MARK = "token_embd.weight"


def _split(d: Mapping, prefix: str) -> tuple[dict, list[str]]:
    """(the language model's entries under `prefix`, under `model.` (+ `lm_head.`); the other names)."""
    return split_language(d, prefix, _OTHER, _LANGUAGE)


def unpermute(t, heads: int):
    """The weight (rows: `heads` heads) llama.cpp permuted, in transformers' row order: row
    h*2r + i*r + j comes from h*2r + 2j + i (r: half a head's rows). `t`: a tensor or a GGUF
    Quantized (its rows of blocks)."""
    rows = t.shape[0]
    order = torch.arange(rows).view(heads, rows // heads // 2, 2).transpose(1, 2).reshape(-1)
    if isinstance(t, Quantized):
        return Quantized(t.data.reshape(rows, -1)[order].reshape(t.data.shape), t.qtype, t.shape)
    return t[order]


def mistral_state_dict(sd: Mapping, prefix: str = "", head_dim: int = MISTRAL_SMALL_31.head_dim
                       ) -> tuple[dict, list[str]]:
    """(Qwen3TextEncoder's state dict of the language model under `prefix`, the names left out:
    vision tower, projector, tokenizer). The language-model head is dropped; missing or unknown
    keys are left to the strict load that follows. A GGUF's q/k rows are put back (heads of `head_dim`)."""
    if prefix + GGUF_MARK not in sd:
        kept, other = _split(sd, prefix)
        return qwen3_state_dict(kept), other
    out = qwen3_state_dict(sd, prefix)
    for k in out:
        if k.endswith(("self_attn.q_proj.weight", "self_attn.k_proj.weight")):
            out[k] = unpermute(out[k], out[k].shape[0] // head_dim)
    return out, []


def is_mistral(shapes: Mapping, prefix: str = "") -> bool:
    """Whether the keys under `prefix` are a Llama-style language model (q/k/v without biases, no
    q/k norms: neither Qwen3 nor Qwen2), in any of the layouts above (a GGUF's too)."""
    if prefix + GGUF_MARK in shapes:
        return prefix + "blk.0.attn_q.weight" in shapes and prefix + "blk.0.attn_q_norm.weight" not in shapes \
            and prefix + "blk.0.attn_k.bias" not in shapes
    kept = qwen3_state_dict(_split(shapes, prefix)[0])
    return (_ATTN + "q_proj.weight" in kept and _ATTN + "q_norm.weight" not in kept
            and _ATTN + "k_proj.bias" not in kept)


def mistral_config(shapes: Mapping, prefix: str = "", path="<state dict>",
                   head_dim: int = MISTRAL_SMALL_31.head_dim) -> Qwen3Config:
    """The language model's config from its shapes, Mistral's theta and epsilon; the head width no
    shape holds (Mistral Small's 128 is not hidden / heads) is `head_dim`."""
    if not is_mistral(shapes, prefix):
        raise CheckpointError(path, "not a Mistral text encoder (a Llama-style language model: no q/k/v biases, "
                                    "no q/k norms)")
    gguf = prefix + GGUF_MARK in shapes
    cfg = qwen3_config(shapes if gguf else qwen3_state_dict(_split(shapes, prefix)[0]), prefix if gguf else "",
                       path=path, head_dim=head_dim)
    return replace(cfg, rope_theta=MISTRAL_SMALL_31.rope_theta, rms_norm_eps=MISTRAL_SMALL_31.rms_norm_eps,
                   final_norm=cfg.num_hidden_layers >= MISTRAL_SMALL_31.num_hidden_layers)
