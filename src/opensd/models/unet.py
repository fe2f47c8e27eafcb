"""The Stable Diffusion UNet (LDM `openaimodel.UNetModel`) for SD1, SD2, SDXL and smaller configs.

Attribute names equal the original checkpoint keys after `model.diffusion_model.`, so an
original-layout state dict loads with no renaming.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import attention
from .config import UNetConfig
from .conv import Conv2d


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding, cosines first (the LDM layout; diffusers' flip_sin_to_cos=True)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


# CFG scales our guidance-distilled models are trained on; outside it the pipeline runs plain CFG.
GUIDANCE_RANGE = (1.0, 13.0)


def guidance_embedding(scale: torch.Tensor, dim: int) -> torch.Tensor:
    """The "y" of a guidance-distilled UNet: the CFG scale embedded like a timestep (scale 1 -> t 1000)."""
    return timestep_embedding(scale * 1000.0, dim)


def group_norm(channels: int, eps: float = 1e-5) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=eps)


def add_embeddings(model: nn.Module, cfg: UNetConfig) -> int:
    """Give `model` the timestep MLP `time_embed` and, for SDXL-style configs, the `label_emb` MLP of
    the 'y' vector, under the original key names (UNet and ControlNet share them). Returns their width."""
    mc = cfg.model_channels
    emb_dim = mc * 4
    model.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
    if cfg.adm_in_channels:
        model.label_emb = nn.Sequential(nn.Sequential(
            nn.Linear(cfg.adm_in_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)))
    return emb_dim


def embed(model: nn.Module, cfg: UNetConfig, timesteps: torch.Tensor, y: torch.Tensor | None,
          dtype: torch.dtype) -> torch.Tensor:
    """The per-sample embedding every ResBlock receives: time MLP (+ label MLP of 'y')."""
    emb = model.time_embed(timestep_embedding(timesteps, cfg.model_channels).to(dtype))
    if cfg.adm_in_channels:
        if y is None and cfg.guidance_embed:
            y = guidance_embedding(torch.ones(len(emb), device=emb.device), cfg.adm_in_channels)
        if y is None and cfg.unclip:  # no image: zeros (ComfyUI's SD21UNCLIP)
            y = torch.zeros(len(emb), cfg.adm_in_channels, device=emb.device)
        if y is None:
            raise ValueError(f"this {type(model).__name__} needs the SDXL 'y' vector "
                             "(pooled text + size conditioning)")
        emb = emb + model.label_emb(y.to(dtype))
    return emb


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_channels: int, out_channels: int):
        super().__init__()
        self.in_layers = nn.Sequential(group_norm(channels), nn.SiLU(),
                                       Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        # Index 2 is the original's dropout; kept as Identity so the conv stays at index 3.
        self.out_layers = nn.Sequential(group_norm(out_channels), nn.SiLU(), nn.Identity(),
                                        Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = (nn.Identity() if channels == out_channels
                                else Conv2d(channels, out_channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb)[:, :, None, None].to(h.dtype)
        return self.skip_connection(x) + self.out_layers(h)


class CrossAttention(nn.Module):
    def __init__(self, query_dim: int, heads: int, dim_head: int, context_dim: int | None = None):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim))
        self.kv_cache: list | None = None  # set inside reuse_context_kv()

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if context is None:
            k, v = self.to_k(x), self.to_v(x)
        else:
            k, v = self._context_kv(context)
        return self.to_out(attention(self.to_q(x), k, v, self.heads))

    def _context_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the text context; within reuse_context_kv() they are computed once
        per context tensor, since the prompt does not change between sampling steps."""
        if self.kv_cache is None or torch.is_grad_enabled():
            return self.to_k(context), self.to_v(context)
        wk, wv = self.to_k.weight, self.to_v.weight
        # hook ids too: a hook on to_k / to_v (a hypernetwork) changes what they compute
        stamp = (wk, wk._version, wv, wv._version, context._version,
                 tuple(self.to_k._forward_pre_hooks), tuple(self.to_v._forward_pre_hooks))
        if self.kv_cache and self.kv_cache[0] is context and self.kv_cache[1] == stamp:
            return self.kv_cache[2]
        kv = (self.to_k(context), self.to_v(context))
        self.kv_cache[:] = [context, stamp, kv]  # holds `context`, so its identity cannot be reused
        return kv


@contextmanager
def reuse_context_kv(model: nn.Module):
    """Within the block, cross-attention keys/values are reused while the same context tensor is
    passed again (and the weights were not changed in place, e.g. by a LoRA). Grad mode never reuses."""
    layers = [m for m in model.modules() if isinstance(m, CrossAttention)]
    for m in layers:
        m.kv_cache = []
    try:
        yield model
    finally:
        for m in layers:
            m.kv_cache = None


@contextmanager
def kv_reuse_suspended(layers: list):
    """Within the block the CrossAttention `layers` compute their K/V afresh, and their caches are
    as before afterwards (a CUDA graph replay would overwrite what a call cached)."""
    saved = [m.kv_cache for m in layers]
    for m in layers:
        m.kv_cache = None
    try:
        yield
    finally:
        for m, cache in zip(layers, saved):
            m.kv_cache = cache


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        # net.1 is the original's dropout.
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    # set for a run (a GLIGEN fuser): x -> x between the self- and the cross-attention (ComfyUI's middle_patch)
    between: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int):
        super().__init__()
        self.attn1 = CrossAttention(dim, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, heads, dim_head, context_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        if self.between is not None:
            x = self.between(x)
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    def __init__(self, channels: int, heads: int, depth: int, context_dim: int, linear: bool):
        super().__init__()
        self.linear = linear
        self.norm = group_norm(channels, eps=1e-6)
        proj = nn.Linear if linear else (lambda i, o: Conv2d(i, o, 1))
        self.proj_in = proj(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(channels, heads, channels // heads, context_dim) for _ in range(depth))
        self.proj_out = proj(channels, channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        if _as_matmul(self.proj_in):
            y = F.linear(y.flatten(2).transpose(1, 2), self.proj_in.weight.flatten(1), self.proj_in.bias)
        elif self.linear:
            y = self.proj_in(y.flatten(2).transpose(1, 2))
        else:
            y = self.proj_in(y).flatten(2).transpose(1, 2)
        for block in self.transformer_blocks:
            y = block(y, context)
        if self.linear:
            return x + self.proj_out(y).transpose(1, 2).reshape(b, c, h, w)
        if _as_matmul(self.proj_out):
            y = F.linear(y, self.proj_out.weight.flatten(1), self.proj_out.bias)
            return x + y.transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(y.transpose(1, 2).reshape(b, c, h, w))


def _as_matmul(layer: nn.Module) -> bool:
    """SD1's 1x1 proj convs can run as the same matrix product on the tokens: on CPU a 1x1 conv on a
    small latent (4x4, 8x8) costs several times a plain GEMM. Not when hooks (LoRA training) wrap it."""
    return isinstance(layer, nn.Conv2d) and not (layer._forward_hooks or layer._forward_pre_hooks)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        # Upsampling to the skip connection's size lets latents that are not a multiple of
        # 2**levels (e.g. 520 px images) line up with the encoder path.
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)


class TimestepBlock(nn.ModuleList):
    """One numbered entry of input_blocks / middle_block / output_blocks."""

    def forward(self, x, emb, context, size=None):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, Upsample):
                x = layer(x, size)
            else:
                x = layer(x)
        return x


def _transformer_factory(cfg: UNetConfig):
    def transformer(ch: int, depth: int) -> SpatialTransformer:
        return SpatialTransformer(ch, cfg.heads_for(ch), depth, cfg.context_dim, cfg.use_linear_in_transformer)
    return transformer


def build_encoder(cfg: UNetConfig) -> tuple[nn.ModuleList, TimestepBlock, list[int]]:
    """input_blocks, middle_block and the channels of each skip: the half the UNet and ControlNet share."""
    emb_dim = cfg.model_channels * 4
    mc = cfg.model_channels
    transformer = _transformer_factory(cfg)
    input_blocks = nn.ModuleList([TimestepBlock([Conv2d(cfg.in_channels, mc, 3, padding=1)])])
    skip_channels = [mc]
    ch = mc
    last = len(cfg.channel_mult) - 1
    for level, mult in enumerate(cfg.channel_mult):
        for _ in range(cfg.num_res_blocks):
            layers = [ResBlock(ch, emb_dim, mult * mc)]
            ch = mult * mc
            if cfg.transformer_depth[level]:
                layers.append(transformer(ch, cfg.transformer_depth[level]))
            input_blocks.append(TimestepBlock(layers))
            skip_channels.append(ch)
        if level != last:
            input_blocks.append(TimestepBlock([Downsample(ch)]))
            skip_channels.append(ch)
    middle = [ResBlock(ch, emb_dim, ch)]
    if cfg.transformer_depth_middle:
        middle.append(transformer(ch, cfg.transformer_depth_middle))
    middle.append(ResBlock(ch, emb_dim, ch))
    return input_blocks, TimestepBlock(middle), skip_channels


@dataclass
class Control:
    """What control networks add to one UNet call. `outputs` (ControlNets): one residual per skip, then
    the middle's, added to the skips and the middle block's output (LDM's ControlledUnetModel);
    `inner` (T2I-Adapters): one entry per input block, then the middle block (None: nothing), added
    to the hidden state right after that block, so the blocks after it see the sum too."""
    outputs: list[torch.Tensor] | None = None
    inner: list[torch.Tensor | None] | None = None

    def map(self, fn) -> Control:
        """fn applied to every tensor (scaling, row selection)."""
        return Control(None if self.outputs is None else [fn(t) for t in self.outputs],
                       None if self.inner is None else [None if t is None else fn(t) for t in self.inner])

    def __add__(self, other: Control) -> Control:
        def add(a, b):
            if a is None or b is None:
                return a if b is None else b
            return [p if q is None else q if p is None else p + q for p, q in zip(a, b)]
        return Control(add(self.outputs, other.outputs), add(self.inner, other.inner))


class UNetModel(nn.Module):
    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.config = cfg
        mc = cfg.model_channels
        emb_dim = add_embeddings(self, cfg)

        self.input_blocks, self.middle_block, skip_channels = build_encoder(cfg)
        ch = skip_channels[-1]
        transformer = _transformer_factory(cfg)

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), emb_dim, mult * mc)]
                ch = mult * mc
                if cfg.transformer_depth[level]:
                    layers.append(transformer(ch, cfg.transformer_depth[level]))
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(TimestepBlock(layers))

        self.out = nn.Sequential(group_norm(ch), nn.SiLU(), Conv2d(ch, cfg.out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                y: torch.Tensor | None = None, control: Control | list[torch.Tensor] | None = None) -> torch.Tensor:
        """x: (B, in_channels, h, w); timesteps: (B,) discrete model time; context: (B, T, context_dim);
        y: (B, adm_in_channels) for SDXL-style models; control: what ControlNets and T2I-Adapters add
        (a Control; a plain list is ControlNet residuals, Control.outputs)."""
        if isinstance(control, list):
            control = Control(outputs=control)
        dtype = self.time_embed[0].weight.dtype
        emb = embed(self, self.config, timesteps, y, dtype)
        h = x.to(dtype)
        context = context.to(dtype)
        inner = control.inner if control is not None else None
        if inner is not None and len(inner) != len(self.input_blocks) + 1:
            raise ValueError(f"control: {len(inner)} adapter slots for {len(self.input_blocks) + 1} UNet blocks")
        skips = []
        for i, block in enumerate(self.input_blocks):
            h = block(h, emb, context)
            if inner is not None and inner[i] is not None:
                h = h + inner[i].to(h.dtype)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        if inner is not None and inner[-1] is not None:
            h = h + inner[-1].to(h.dtype)
        outputs = control.outputs if control is not None else None
        if outputs is not None:
            if len(outputs) != len(skips) + 1:
                raise ValueError(f"control: {len(outputs)} residuals for {len(skips) + 1} UNet skips")
            h = h + outputs[-1].to(h.dtype)
            skips = [s + c.to(s.dtype) for s, c in zip(skips, outputs)]
        for block in self.output_blocks:
            h = torch.cat([h, skips.pop()], dim=1)
            size = skips[-1].shape[-2:] if skips else None
            h = block(h, emb, context, size)
        return self.out(h)
