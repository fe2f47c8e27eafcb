"""CLIP text encoders of SD1 / SD2 / SDXL.

Two layouts of the same pre-LayerNorm causal transformer, each with attribute names equal to the
keys the original checkpoints store, so those keys load without renaming:

* ``CLIPTextModel`` -- OpenAI CLIP in transformers' naming. SD1 stores it under
  ``cond_stage_model.transformer.``, SDXL's first encoder under ``conditioner.embedders.0.transformer.``.
* ``OpenCLIPTextModel`` -- OpenCLIP naming. SD2 stores it under ``cond_stage_model.model.``, SDXL's
  second encoder under ``conditioner.embedders.1.model.`` (the refiner's only one under
  ``conditioner.embedders.0.model.``).

``HFEmbedder`` / ``OpenCLIPEmbedder`` add the ``transformer.`` / ``model.`` level, so a model built with
``build_text_encoder`` and registered as ``cond_stage_model`` or ``conditioner.embedders.N`` reproduces
the whole original key.

Semantics shared by both:

* Attention is causal only. Neither SD nor open_clip masks padding tokens; positions after the end of
  text see the prompt and the padding before them, and that is what the UNets were trained with.
* ``hidden`` is the output of layer ``layers - skip + 1`` (skip=1: last layer, skip=2: penultimate),
  with the final LayerNorm applied iff ``cfg.final_norm``.
* ``pooled`` is final-LayerNorm(last layer output) taken at the end-of-text token, found as the argmax
  of the ids per row (end-of-text, 49407, is the highest id in the CLIP vocabulary, and argmax returns
  the first maximum, so padding with end-of-text as OpenAI does or with 0 as open_clip does both pick
  the first one). It goes through the text projection when the model has one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import InvalidArgument
from .attention import attention
from .config import TextEncoderConfig

LN_EPS = 1e-5
# CLIP's initial logit scale, log(1 / 0.07). Only used to fill ``logit_scale`` when a file lacks it.
DEFAULT_LOGIT_SCALE = math.log(1 / 0.07)


@dataclass
class TextEncoderOutput:
    hidden: torch.Tensor  # (B, T, width): the hidden state that conditions the UNet
    pooled: torch.Tensor | None  # (B, projection_dim or width), or None when not computed


def _activation(name: str):
    if name == "quick_gelu":
        return lambda x: x * torch.sigmoid(1.702 * x)
    if name == "gelu":
        return F.gelu  # exact (erf) GELU, as nn.GELU() in open_clip and "gelu" in transformers
    raise InvalidArgument(f"text encoder act: unknown activation {name!r}")


def causal_mask(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive (n, n) mask: 0 on and below the diagonal, -inf above it."""
    return torch.full((n, n), float("-inf"), dtype=dtype, device=device).triu_(1)


def _resolve_skip(cfg: TextEncoderConfig, skip: int | None) -> int:
    skip = cfg.skip if skip is None else skip
    if not 1 <= skip <= cfg.layers:
        raise InvalidArgument(f"clip skip must be between 1 and {cfg.layers}, got {skip}")
    return skip


def _layers_to_run(cfg: TextEncoderConfig, skip: int) -> tuple[int, bool]:
    """How many layers to compute, and whether the pooled output is computed."""
    want_pooled = cfg.pooled or skip == 1
    return (cfg.layers if want_pooled else cfg.layers - skip + 1), want_pooled


def _eos_pool(x: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    eos = input_ids.argmax(dim=-1)
    return x[torch.arange(x.shape[0], device=x.device), eos.to(x.device)]


# --- OpenAI CLIP, transformers naming --------------------------------------------------------


class _HFAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.heads, mask)
        return self.out_proj(out)


class _HFMLP(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.act = _activation(cfg.act)
        self.fc1 = nn.Linear(cfg.width, cfg.mlp_width)
        self.fc2 = nn.Linear(cfg.mlp_width, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _HFLayer(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.self_attn = _HFAttention(cfg.width, cfg.heads)
        self.layer_norm1 = nn.LayerNorm(cfg.width, eps=LN_EPS)
        self.mlp = _HFMLP(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.width, eps=LN_EPS)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class _HFEmbeddings(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.position_embedding = nn.Embedding(cfg.max_length, cfg.width)
        # No position_ids buffer: models are built on the meta device and filled from files, and
        # a buffer absent from the file would stay empty. (Many SD1 files carry one; the loader
        # ignores it.)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(input_ids) + self.position_embedding.weight[: input_ids.shape[1]]


class _HFEncoder(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.layers = nn.ModuleList(_HFLayer(cfg) for _ in range(cfg.layers))


class _HFTextTransformer(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.embeddings = _HFEmbeddings(cfg)
        self.encoder = _HFEncoder(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.width, eps=LN_EPS)


class CLIPTextModel(nn.Module):
    """OpenAI CLIP text transformer; state dict keys equal transformers' ``CLIPTextModel`` files
    (``text_model.…``), plus ``text_projection.weight`` (no bias) iff ``cfg.projection_dim``."""

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.text_model = _HFTextTransformer(cfg)
        if cfg.projection_dim:
            self.text_projection = nn.Linear(cfg.width, cfg.projection_dim, bias=False)
        else:
            self.text_projection = None

    def forward(self, input_ids: torch.Tensor, skip: int | None = None) -> TextEncoderOutput:
        cfg, tm = self.cfg, self.text_model
        skip = _resolve_skip(cfg, skip)
        n_run, want_pooled = _layers_to_run(cfg, skip)
        x = tm.embeddings(input_ids)
        mask = causal_mask(x.shape[1], x.dtype, x.device)
        hidden = None
        for i, layer in enumerate(tm.encoder.layers[:n_run]):
            x = layer(x, mask)
            if i == cfg.layers - skip:
                hidden = x
        assert hidden is not None
        if cfg.final_norm:
            hidden = tm.final_layer_norm(hidden)
        pooled = None
        if want_pooled:
            pooled = _eos_pool(tm.final_layer_norm(x), input_ids)
            if self.text_projection is not None:
                pooled = self.text_projection(pooled)
        return TextEncoderOutput(hidden, pooled)


# --- OpenCLIP naming -------------------------------------------------------------------------


class FusedInProjection(nn.Module):
    """q, k and v stacked, from the weights its attention passes (they stay on the attention, where
    nn.MultiheadAttention's keys put them): a module of its own, with no parameters, so that a
    forward hook can see and scale the three projections as HF-named encoders' q/k/v_proj allow."""

    def forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight, bias)


class PackedQKVAttention(nn.Module):
    """Same parameters as nn.MultiheadAttention (fused q/k/v), computed through our attention; OpenCLIP's
    text encoder and the union ControlNet's type transformer store their attention this way."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.in_proj = FusedInProjection()
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self.in_proj(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        return self.out_proj(attention(q, k, v, self.heads, mask))


class _OpenCLIPMLP(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.act = _activation(cfg.act)
        self.c_fc = nn.Linear(cfg.width, cfg.mlp_width)
        self.c_proj = nn.Linear(cfg.mlp_width, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


class _ResBlock(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.width, eps=LN_EPS)
        self.attn = PackedQKVAttention(cfg.width, cfg.heads)
        self.ln_2 = nn.LayerNorm(cfg.width, eps=LN_EPS)
        self.mlp = _OpenCLIPMLP(cfg)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.resblocks = nn.ModuleList(_ResBlock(cfg) for _ in range(cfg.layers))


class OpenCLIPTextModel(nn.Module):
    """OpenCLIP text tower; state dict keys equal the ones SD2 / SDXL files store under their
    ``….model.`` prefix: token_embedding, positional_embedding, transformer.resblocks.*, ln_final,
    text_projection ([width, projection_dim], applied as ``x @ P``; only iff ``cfg.projection_dim``)
    and logit_scale (unused by the text encoder, present so real files load strictly)."""

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.max_length, cfg.width))
        self.transformer = _Transformer(cfg)
        self.ln_final = nn.LayerNorm(cfg.width, eps=LN_EPS)
        if cfg.projection_dim:
            self.text_projection = nn.Parameter(torch.empty(cfg.width, cfg.projection_dim))
            nn.init.normal_(self.text_projection, std=cfg.width ** -0.5)
        else:
            self.text_projection = None
        self.logit_scale = nn.Parameter(torch.full((), DEFAULT_LOGIT_SCALE))
        nn.init.normal_(self.positional_embedding, std=0.01)

    def forward(self, input_ids: torch.Tensor, skip: int | None = None) -> TextEncoderOutput:
        cfg = self.cfg
        skip = _resolve_skip(cfg, skip)
        n_run, want_pooled = _layers_to_run(cfg, skip)
        t = input_ids.shape[1]
        x = self.token_embedding(input_ids) + self.positional_embedding[:t]
        mask = causal_mask(t, x.dtype, x.device)
        hidden = None
        for i, block in enumerate(self.transformer.resblocks[:n_run]):
            x = block(x, mask)
            if i == cfg.layers - skip:
                hidden = x
        assert hidden is not None
        if cfg.final_norm:
            hidden = self.ln_final(hidden)
        pooled = None
        if want_pooled:
            pooled = _eos_pool(self.ln_final(x), input_ids)
            if self.text_projection is not None:
                pooled = pooled @ self.text_projection
        return TextEncoderOutput(hidden, pooled)


# --- Wrappers that reproduce the checkpoint prefixes -----------------------------------------


class HFEmbedder(nn.Module):
    """``cond_stage_model`` of SD1 / ``conditioner.embedders.0`` of SDXL: keys ``transformer.text_model.…``."""

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.transformer = CLIPTextModel(cfg)

    def forward(self, input_ids: torch.Tensor, skip: int | None = None) -> TextEncoderOutput:
        return self.transformer(input_ids, skip)


class OpenCLIPEmbedder(nn.Module):
    """``cond_stage_model`` of SD2 / ``conditioner.embedders.1`` of SDXL: keys ``model.…``."""

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.model = OpenCLIPTextModel(cfg)

    def forward(self, input_ids: torch.Tensor, skip: int | None = None) -> TextEncoderOutput:
        return self.model(input_ids, skip)


def build_text_encoder(cfg: TextEncoderConfig) -> nn.Module:
    if cfg.naming == "hf":
        return HFEmbedder(cfg)
    if cfg.naming == "openclip":
        return OpenCLIPEmbedder(cfg)
    raise InvalidArgument(f"text encoder naming: unknown {cfg.naming!r}")
