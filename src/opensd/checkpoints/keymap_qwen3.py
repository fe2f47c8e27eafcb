"""Qwen3 text-encoder files -> the state dict and config of opensd.models.qwen3.Qwen3TextEncoder.

The files in circulation use transformers' key names: ComfyUI's text_encoders/qwen_3_4b*.safetensors
and a Qwen3ForCausalLM save keep the network under `model.`; a Qwen3Model save (a diffusers
folder's text_encoder/ may hold one) has the same keys without it. A language-model head
(`lm_head.weight`) is not needed for conditioning and is dropped. GGUF files of Qwen3 (llama.cpp's
names: `token_embd`, `blk.N.attn_q`, ...; what ComfyUI-GGUF's CLIPLoaderGGUF reads) are renamed to
transformers' names; llama.cpp stores Qwen's q/k projections unpermuted (Qwen's rotary embedding
is the "rotate half" layout llama.cpp calls NEOX), so no tensor changes. The config is read from the
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


# llama.cpp's per-block tensor names -> transformers' (under model.layers.N.)
_LLAMA_CPP_BLOCK = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_LLAMA_CPP_TOP = {"token_embd": MODEL + "embed_tokens", "output_norm": MODEL + "norm", "output": "lm_head"}
_LLAMA_CPP_EMBED = "token_embd.weight"


def _from_llama_cpp(name: str) -> str:
    """transformers' name of a llama.cpp tensor name (unknown names are kept, for the strict load
    to report)."""
    stem, dot, suffix = name.rpartition(".")
    if stem in _LLAMA_CPP_TOP:
        return _LLAMA_CPP_TOP[stem] + dot + suffix
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _LLAMA_CPP_BLOCK:
        return f"{MODEL}layers.{parts[1]}.{_LLAMA_CPP_BLOCK[parts[2]]}{dot}{suffix}"
    return name


def _renamed(d: Mapping, prefix: str) -> tuple[dict, str]:
    """`d` with llama.cpp names under `prefix` renamed (prefix dropped), else `d` itself."""
    if prefix + _LLAMA_CPP_EMBED not in d and prefix + "blk.0.attn_q_norm.weight" not in d:
        return d, prefix
    return {_from_llama_cpp(k[len(prefix):]): v for k, v in d.items() if k.startswith(prefix)}, ""


def split_language(d: Mapping, prefix: str, other: tuple[str, ...],
                   renames: Mapping[str, str]) -> tuple[dict, list[str]]:
    """(the entries under `prefix`, prefix dropped, each name starting with a key of `renames` given
    its value instead (the first that matches); the names starting with one of `other`, left out):
    a multimodal file's language model apart from its vision parts."""
    kept, left = {}, []
    for k, v in d.items():
        if not k.startswith(prefix):
            continue
        k = k[len(prefix):]
        if k.startswith(other):
            left.append(k)
            continue
        old = next((p for p in renames if k.startswith(p)), None)
        kept[renames[old] + k[len(old):] if old is not None else k] = v
    return kept, left


def qwen3_state_dict(sd: Mapping[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    """The keys under `prefix`, without it, under `model.` (added where a file lacks it), without
    the language-model head. Keys outside `prefix` are ignored; missing or unknown keys are left to
    the strict load that follows. Float8 weights pass as they are (plain casts, or the scaled ones
    files.read_state_dict made Scaled)."""
    sd, prefix = _renamed(sd, prefix)
    out = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    out.pop(_HEAD, None)
    if MODEL + _EMBED in out:
        return out
    return {MODEL + k: v for k, v in out.items()}


def is_qwen3(shapes: Mapping[str, tuple[int, ...]], prefix: str = "") -> bool:
    """Whether the keys under `prefix` look like a Qwen3 model (with or without `model.`, or in
    llama.cpp's names)."""
    shapes, prefix = _renamed(shapes, prefix)
    return any(prefix + p + "layers.0.self_attn.q_norm.weight" in shapes for p in (MODEL, ""))


def qwen3_config(shapes: Mapping[str, tuple[int, ...]], prefix: str = "",
                 path: str = "<state dict>", head_dim: int = 128) -> Qwen3Config:
    """The config of the Qwen3 model under `prefix` (+ `model.` or not, or llama.cpp's names) from
    its shapes; also of a Qwen2 model (Qwen2.5-VL's language model: q/k/v biases, no q/k norms),
    whose head width no shape holds: `head_dim` (128 in every Qwen2.5) is taken for it."""
    shapes, prefix = _renamed(shapes, prefix)
    p = prefix + MODEL if prefix + MODEL + _EMBED in shapes else prefix
    try:
        vocab, hidden = shapes[p + _EMBED]
        attn = p + "layers.0.self_attn."
        qk_norm = attn + "q_norm.weight" in shapes
        head_dim = shapes[attn + "q_norm.weight"][0] if qk_norm else head_dim
        q, k = shapes[attn + "q_proj.weight"][0], shapes[attn + "k_proj.weight"][0]
        if q % head_dim or k % head_dim:
            raise CheckpointError(path, f"a Qwen text encoder whose projections ({q}, {k}) are not heads of {head_dim}")
        return Qwen3Config(vocab_size=vocab, hidden_size=hidden, head_dim=head_dim,
                           intermediate_size=shapes[p + "layers.0.mlp.gate_proj.weight"][0],
                           num_hidden_layers=count(shapes, p + "layers."),
                           num_attention_heads=q // head_dim, num_key_value_heads=k // head_dim,
                           qkv_bias=attn + "k_proj.bias" in shapes, qk_norm=qk_norm)
    except KeyError as e:
        raise CheckpointError(path, f"an incomplete Qwen text encoder: no {e.args[0]}") from None
