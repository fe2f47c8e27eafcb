"""Qwen3, the decoder-only language model whose hidden states condition Z-Image (Qwen3-4B) and
FLUX.2 [klein] (Qwen3-4B for klein 4B, Qwen3-8B for klein 9B); with two switches also Qwen2, the
language model of Qwen2.5-VL-7B that conditions Qwen-Image (`qkv_bias` on, `qk_norm` off), and
Mistral (Llama-style: neither; its own theta and epsilon), the language model of Mistral Small 3.1
that conditions FLUX.2 [dev].

Only the part conditioning needs: token ids in, hidden states out; no language-model head, no
generation, no key/value cache. Attribute names equal the keys of transformers' Qwen3 files
(`model.embed_tokens.weight`, `model.layers.N.self_attn.q_proj.weight`, ..., `model.norm.weight`),
which is also how the single text-encoder file ComfyUI users download (qwen_3_4b.safetensors) is
stored, so it loads without renaming.

The architecture, as transformers' Qwen3Model runs it:

* pre-norm blocks: x + attn(rms(x)), then x + mlp(rms(x)); a final RMS norm after the last block;
* grouped-query attention: `num_key_value_heads` key/value heads, each shared by
  num_attention_heads / num_key_value_heads query heads; no biases (Qwen2: q/k/v biases, none on
  the output projection);
* an RMS norm over each head's channels of the queries and of the keys (q_norm, k_norm), before
  the rotary embedding (Qwen3 only; Qwen2 has none);
* rotary embedding in the "rotate half" layout (channel i pairs with channel i + head_dim / 2),
  angle position * theta ** (-2i / head_dim), computed in fp32 and applied in the activations' dtype;
  positions count from 0 at the first token of the padded sequence, pads included;
* a causal mask, and a padding mask: no token attends to a padding token;
* SwiGLU feed-forward: down(silu(gate(x)) * up(x)).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import attention
from .norms import RMSNorm


@dataclass(frozen=True)
class Qwen3Config:
    """Field names as in transformers' Qwen3Config; the defaults are Qwen3-4B's."""
    vocab_size: int = 151936
    hidden_size: int = 2560
    intermediate_size: int = 9728
    num_hidden_layers: int = 36
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    head_dim: int = 128
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    qkv_bias: bool = False  # Qwen2 (Qwen2.5-VL's language model): biases on q/k/v
    qk_norm: bool = True  # Qwen3's per-head q/k RMS norms; Qwen2 and Mistral have none
    # whether the last layer's output goes through the final norm: False for a file cut short of
    # its model's depth (ComfyUI's 30-layer Mistral for FLUX.2 [dev]), whose last state is a middle
    # one of the whole model's
    final_norm: bool = True


QWEN3_4B = Qwen3Config()
# transformers' Qwen/Qwen3-8B config: 36 layers 4096 wide, 32 query and 8 key/value heads of 128,
# feed-forward 12288, an untied language-model head (not kept here)
QWEN3_8B = Qwen3Config(hidden_size=4096, intermediate_size=12288)
# transformers' Qwen/Qwen2.5-VL-7B-Instruct text config (Qwen-Image's text encoder): 28 layers 3584
# wide, 28 query and 4 key/value heads of 128, feed-forward 18944, q/k/v biases, no q/k norms. Its
# multimodal rotary embedding (mrope_section 16/24/24) gives every section the same position on
# text alone, so it is the plain 1-D one here.
QWEN25_VL_7B = Qwen3Config(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                           num_attention_heads=28, num_key_value_heads=4, head_dim=128, qkv_bias=True,
                           qk_norm=False)
# transformers' mistralai/Mistral-Small-3.1-24B-Instruct-2503 text config (FLUX.2 [dev]'s text encoder):
# 40 layers 5120 wide, 32 query and 8 key/value heads of 128 (4096 < 5120), feed-forward 32768,
# vocabulary 131072 (tekken), rope theta 1e9, RMS epsilon 1e-5; no biases, no q/k norms.
MISTRAL_SMALL_31 = Qwen3Config(vocab_size=131072, hidden_size=5120, intermediate_size=32768, num_hidden_layers=40,
                               num_attention_heads=32, num_key_value_heads=8, head_dim=128, rope_theta=1e9,
                               rms_norm_eps=1e-5, qk_norm=False)


def rope_cos_sin(length: int, head_dim: int, theta: float, device: torch.device,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (length, head_dim), for positions 0..length-1: the angles of the first half
    of the channels repeated for the second half. Angles in fp32 (as the model was trained), then
    cast to `dtype`."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)
    angles = torch.arange(length, device=device, dtype=torch.float32)[:, None] * inv_freq[None]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, L, heads, head_dim) turned by the rotary angles, cos and sin (L, head_dim), or
    (B, L, head_dim) when each sequence has its own positions (models.qwen25vl_mrope)."""
    first, second = x.chunk(2, dim=-1)
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


def attention_bias(attention_mask: torch.Tensor | None, batch: int, length: int, device: torch.device,
                   dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(the additive (B, 1, L, L) logits bias, the (B, L, 1) multiplier of the attention outputs or
    None): causal, and padding keys (mask 0) hidden from every query. A padding query that sees no
    key at all (left padding) gets attention output 0, as torch's scaled_dot_product_attention gives
    transformers for a row its boolean mask hides entirely (FLUX.2 keeps every row, pads included);
    its logits see itself, as a row with every logit at the dtype's minimum could overflow to -inf
    in fp16 and make NaNs."""
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    allowed = causal[None, None].expand(batch, 1, length, length)
    if attention_mask is not None:
        allowed = allowed & attention_mask.to(device=device, dtype=torch.bool)[:, None, None, :]
        alone = ~allowed.any(-1, keepdim=True)
        allowed = allowed | (alone & torch.eye(length, dtype=torch.bool, device=device))
        live = None if not alone.any() else (~alone[:, 0]).to(dtype)
    else:
        live = None
    bias = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
    return bias, live


class Qwen3Attention(nn.Module):
    def __init__(self, cfg: Qwen3Config):
        super().__init__()
        self.cfg = cfg
        d, hq, hkv = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
        self.q_proj = nn.Linear(cfg.hidden_size, hq * d, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, hkv * d, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, hkv * d, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(hq * d, cfg.hidden_size, bias=False)
        # None (no keys) without q/k norms
        self.q_norm = RMSNorm(d, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(d, cfg.rms_norm_eps) if cfg.qk_norm else None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, bias: torch.Tensor,
                live: torch.Tensor | None = None) -> torch.Tensor:
        b, n, _ = x.shape
        d = self.cfg.head_dim
        groups = self.cfg.num_attention_heads // self.cfg.num_key_value_heads
        q, k = self.q_proj(x).view(b, n, -1, d), self.k_proj(x).view(b, n, -1, d)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        v = self.v_proj(x).view(b, n, -1, d)
        # each key/value head serves `groups` consecutive query heads
        k, v = (t.repeat_interleave(groups, dim=2).flatten(2) for t in (k, v))
        out = attention(q.flatten(2), k, v, self.cfg.num_attention_heads, mask=bias)
        return self.o_proj(out if live is None else out * live)


class Qwen3MLP(nn.Module):
    def __init__(self, cfg: Qwen3Config):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Qwen3DecoderLayer(nn.Module):
    def __init__(self, cfg: Qwen3Config):
        super().__init__()
        self.self_attn = Qwen3Attention(cfg)
        self.mlp = Qwen3MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, bias: torch.Tensor,
                live: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, bias, live)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen3Model(nn.Module):
    """transformers' Qwen3Model: embedding, decoder layers, final norm."""

    def __init__(self, cfg: Qwen3Config):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Qwen3DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Qwen3TextEncoder(nn.Module):
    """Keys `model.…`, as in the files. Hidden states are numbered as transformers'
    `output_hidden_states` numbers them: 0 is the token embedding, i (1..N) the output of layer
    i - 1, the last one (N) after the final norm; negative indices count from the end (Z-Image
    takes -2, the output of the next-to-last layer, so the last layer never runs)."""

    def __init__(self, cfg: Qwen3Config):
        super().__init__()
        self.cfg = cfg
        self.model = Qwen3Model(cfg)

    def _index(self, layer: int) -> int:
        n = self.cfg.num_hidden_layers + 1
        if not -n <= layer < n:
            raise IndexError(f"hidden state {layer} of a {self.cfg.num_hidden_layers}-layer model (0..{n - 1})")
        return layer % n

    def _states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, upto: int,
                inputs_embeds: torch.Tensor | None = None, rope: tuple | None = None):
        """Yields hidden states 0..`upto` (inclusive) one at a time. `inputs_embeds` (B, L, hidden)
        stand in for the ids' embeddings (image features placed in them); `rope` (cos, sin), each
        (B, L, head_dim), for positions other than 0..L-1 (Qwen2.5-VL's multimodal ones)."""
        last = self._index(upto)
        x = self.model.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        b, n = input_ids.shape
        cos, sin = rope if rope is not None else rope_cos_sin(n, self.cfg.head_dim, self.cfg.rope_theta, x.device,
                                                              x.dtype)
        bias, live = attention_bias(attention_mask, b, n, x.device, x.dtype)
        yield x
        for i, layer in enumerate(self.model.layers[:last], start=1):
            x = layer(x, cos, sin, bias, live)
            yield self.model.norm(x) if i == self.cfg.num_hidden_layers and self.cfg.final_norm else x

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      upto: int = -1) -> list[torch.Tensor]:
        """Hidden states 0..`upto` (inclusive), each (B, L, hidden_size).

        attention_mask (B, L): 1/True = a real token, 0/False = padding (either side)."""
        return list(self._states(input_ids, attention_mask, upto))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                layer: int | Sequence[int] = -2, inputs_embeds: torch.Tensor | None = None,
                rope: tuple | None = None) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """The hidden state `layer` (see the class), (B, L, hidden_size); or, for a sequence of
        indices (FLUX.2 [klein] takes (9, 18, 27)), a tuple of those states in the order asked.
        Layers past the last one asked for do not run. `inputs_embeds`, `rope`: see _states."""
        if isinstance(layer, int):
            for x in self._states(input_ids, attention_mask, layer, inputs_embeds, rope):
                pass
            return x
        wanted = [self._index(i) for i in layer]
        if not wanted:
            raise IndexError("no hidden states asked for")
        kept = {}
        for i, x in enumerate(self._states(input_ids, attention_mask, max(wanted), inputs_embeds, rope)):
            if i in wanted:
                kept[i] = x
        return tuple(kept[i] for i in wanted)
