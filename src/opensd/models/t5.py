"""The T5 v1.1 encoder (T5-XXL conditions SD3 and Flux).

Attribute names equal the keys of transformers' ``T5EncoderModel`` files, which is also how the
T5 files people share are stored (``t5xxl_fp16.safetensors``; SD3's bundled encoder under
``text_encoders.t5xxl.transformer.``), so they load without renaming.

What makes it T5 v1.1 rather than a textbook transformer:

* no position embeddings: a learned bias per head and per bucket of (key - query) offset is added
  to the attention logits; only the first block owns that table, every block adds the same bias;
* the logits are not scaled by 1/sqrt(head width);
* RMS layer norms (no mean subtraction, no bias), applied before each sublayer and at the end;
* a gated-GELU feed-forward: wo(gelu_tanh(wi_0 x) * wi_1 x); no biases anywhere.

In fp16 the activations of T5-XXL overflow; run it in bf16 or fp32.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .attention import attention
from .config_dit import T5Config
from .norms import RMSNorm


def relative_position_bucket(offset: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """T5's bidirectional bucket of each (key - query) offset.

    Half the buckets serve each direction. In each half, the first half of the buckets hold the
    small distances exactly; the rest cover distances up to `max_distance` on a log scale, and
    anything farther shares the last bucket.
    """
    half = num_buckets // 2
    exact = half // 2
    dist = offset.abs()
    log_scaled = exact + (torch.log(dist.clamp(min=1).float() / exact)
                          / math.log(max_distance / exact) * (half - exact)).long()
    far = log_scaled.clamp(max=half - 1)
    return (offset > 0).long() * half + torch.where(dist < exact, dist, far)


class T5Attention(nn.Module):
    def __init__(self, cfg: T5Config, has_relative_attention_bias: bool):
        super().__init__()
        self.cfg = cfg
        inner = cfg.inner_dim
        self.q = nn.Linear(cfg.d_model, inner, bias=False)
        self.k = nn.Linear(cfg.d_model, inner, bias=False)
        self.v = nn.Linear(cfg.d_model, inner, bias=False)
        self.o = nn.Linear(inner, cfg.d_model, bias=False)
        if has_relative_attention_bias:
            self.relative_attention_bias = nn.Embedding(cfg.relative_attention_num_buckets, cfg.num_heads)

    def position_bias(self, length: int, device: torch.device) -> torch.Tensor:
        """(1, heads, length, length) additive logits bias."""
        pos = torch.arange(length, device=device)
        buckets = relative_position_bucket(pos[None, :] - pos[:, None], self.cfg.relative_attention_num_buckets,
                                           self.cfg.relative_attention_max_distance)
        return self.relative_attention_bias(buckets).permute(2, 0, 1)[None]

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        out = attention(self.q(x), self.k(x), self.v(x), self.cfg.num_heads, mask=bias, scale=1.0)
        return self.o(out)


class T5LayerSelfAttention(nn.Module):
    def __init__(self, cfg: T5Config, has_relative_attention_bias: bool):
        super().__init__()
        self.SelfAttention = T5Attention(cfg, has_relative_attention_bias)
        self.layer_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return x + self.SelfAttention(self.layer_norm(x), bias)


class T5DenseGatedActDense(nn.Module):
    def __init__(self, cfg: T5Config):
        super().__init__()
        self.wi_0 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.wi_1 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.wo = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.wo(F.gelu(self.wi_0(x), approximate="tanh") * self.wi_1(x))


class T5LayerFF(nn.Module):
    def __init__(self, cfg: T5Config):
        super().__init__()
        self.DenseReluDense = T5DenseGatedActDense(cfg)
        self.layer_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.DenseReluDense(self.layer_norm(x))


class T5Block(nn.Module):
    def __init__(self, cfg: T5Config, first: bool):
        super().__init__()
        self.layer = nn.ModuleList([T5LayerSelfAttention(cfg, first), T5LayerFF(cfg)])

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.layer[1](self.layer[0](x, bias))


class T5Stack(nn.Module):
    def __init__(self, cfg: T5Config):
        super().__init__()
        self.block = nn.ModuleList(T5Block(cfg, first=i == 0) for i in range(cfg.num_layers))
        self.final_layer_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)


class T5EncoderModel(nn.Module):
    def __init__(self, cfg: T5Config):
        super().__init__()
        self.cfg = cfg
        self.shared = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.encoder = T5Stack(cfg)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids (B, L) -> last hidden state after the final norm, (B, L, d_model).

        attention_mask (B, L), 1 = real token, 0 = padding that no token attends to. SD3 and Flux
        run T5 without one: their padding is attended to, as in training.
        """
        x = self.shared(input_ids)
        first = self.encoder.block[0].layer[0].SelfAttention
        bias = first.position_bias(input_ids.shape[1], x.device).to(x.dtype)
        if attention_mask is not None:
            hidden = (attention_mask[:, None, None, :] == 0) * torch.finfo(x.dtype).min
            bias = bias + hidden.to(x.dtype)
        for block in self.encoder.block:
            x = block(x, bias)
        return self.encoder.final_layer_norm(x)
