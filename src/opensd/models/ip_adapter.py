"""IP-Adapter (Tencent AI Lab, h94/IP-Adapter): an image prompt for SD1 and SDXL UNets.

A CLIP image encoding is turned into extra context tokens by the adapter's image projection
(``image_proj``), and every cross-attention layer of the UNet gets a second, "decoupled" attention
over them with its own keys and values (``to_k_ip``, ``to_v_ip``):

    to_out( attention(q, k_text, v_text) + scale * attention(q, to_k_ip(tokens), to_v_ip(tokens)) )

The variants differ in the projection only, and in which CLIP output it reads (its ``source``, a
field of models.clip_vision.VisionOutput):

* base (ip-adapter_sd15, _sdxl, _sdxl_vit-h): :class:`ImageProjection`, the projected pooled
  embedding (``image_embeds``) -> a linear to ``tokens * width`` and a LayerNorm (4 tokens);
* Plus (ip-adapter-plus*, plus-face*): :class:`Resampler`, a perceiver over the encoder's
  penultimate hidden states: 16 learned latents attend to the projected states and themselves in
  4 blocks of attention (heads of 64) and feed-forward, then a linear and a LayerNorm to ``width``;
* Full Face (ip-adapter-full-face_sd15): :class:`MLPProjection`, linear-GELU-linear-LayerNorm on
  every penultimate hidden state (257 tokens for a ViT-H/14 at 224 px).

Attribute names equal the released files' keys (``image_proj.proj.weight``, ``image_proj.layers.0.0.to_kv.weight``,
``ip_adapter.1.to_k_ip.weight``). The adapter's layer numbers count every attention of diffusers' UNet, self-
and cross-, in its module order (down blocks, then up blocks, then the middle block), so
cross-attention k is number 2k + 1; :func:`cross_attentions` lists our UNet's cross-attention layers
in that order.

:func:`patched` adds the second attention to a UNet with forward hooks for one sampling run and
removes them after: the loaded UNet's weights are never touched.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .attention import attention
from .unet import CrossAttention, SpatialTransformer

TOKENS = 4  # the base IP-Adapter's image tokens (Plus variants use 16, which their Resampler makes)
DIM_HEAD = 64  # the Resampler's head width in every release (h94's, diffusers' and cubiq's code fix it)
POOLED, HIDDEN = "image_embeds", "penultimate_hidden_states"  # the CLIP outputs the projections read


class ImageProjection(nn.Module):
    """The base variant's: one pooled embedding (B, image_dim) -> (B, tokens, width)."""
    source = POOLED

    def __init__(self, image_dim: int, width: int, tokens: int = TOKENS):
        super().__init__()
        self.image_dim, self.tokens = image_dim, tokens
        self.proj = nn.Linear(image_dim, tokens * width)
        self.norm = nn.LayerNorm(width)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """(B, image_dim) pooled image embeddings -> (B, tokens, width) context tokens."""
        x = self.proj(image_embeds.to(self.proj.weight.dtype))
        return self.norm(x.reshape(len(x), self.tokens, -1))


class PerceiverAttention(nn.Module):
    """The latents attend to the image states and to themselves (keys and values of both)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        inner = heads * DIM_HEAD
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        latents = self.norm2(latents)
        k, v = self.to_kv(torch.cat([self.norm1(x), latents], dim=1)).chunk(2, dim=-1)
        return self.to_out(attention(self.to_q(latents), k, v, self.heads))


def feed_forward(dim: int, inner: int) -> nn.Sequential:
    # keys .0 (norm), .1 and .3 (the linears; .2 is the GELU), as the files name them
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, inner, bias=False), nn.GELU(),
                         nn.Linear(inner, dim, bias=False))


class Resampler(nn.Module):
    """Plus: penultimate hidden states (B, N, image_dim) -> (B, tokens, width) through `depth` blocks
    over `tokens` learned latents of width `dim` (SD1.5: 768 with 12 heads; SDXL: 1280 with 20)."""
    source = HIDDEN

    def __init__(self, image_dim: int, width: int, dim: int, depth: int, heads: int, ff_inner: int,
                 tokens: int = 16):
        super().__init__()
        self.image_dim, self.tokens = image_dim, tokens
        self.latents = nn.Parameter(torch.empty(1, tokens, dim))
        self.proj_in = nn.Linear(image_dim, dim)
        self.proj_out = nn.Linear(dim, width)
        self.norm_out = nn.LayerNorm(width)
        self.layers = nn.ModuleList(nn.ModuleList([PerceiverAttention(dim, heads), feed_forward(dim, ff_inner)])
                                    for _ in range(depth))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = self.proj_in(hidden.to(self.proj_in.weight.dtype))
        latents = self.latents.expand(len(x), -1, -1)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


class MLPProjection(nn.Module):
    """Full Face: every penultimate hidden state (B, N, image_dim) -> a token (B, N, width)."""
    source = HIDDEN

    def __init__(self, image_dim: int, width: int):
        super().__init__()
        self.image_dim = image_dim
        self.proj = nn.Sequential(nn.Linear(image_dim, image_dim), nn.GELU(), nn.Linear(image_dim, width),
                                  nn.LayerNorm(width))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj(hidden.to(self.proj[0].weight.dtype))


class IPLayer(nn.Module):
    def __init__(self, width: int, inner: int):
        super().__init__()
        self.to_k_ip = nn.Linear(width, inner, bias=False)
        self.to_v_ip = nn.Linear(width, inner, bias=False)


class IPAdapter(nn.Module):
    def __init__(self, image_dim: int, width: int, inners: list[int], tokens: int = TOKENS,
                 image_proj: nn.Module | None = None):
        """`inners`: the inner (heads x head width) size of each cross-attention layer, in order.
        `image_proj`: a Resampler or MLPProjection (taking `image_dim`-wide states) instead of the
        base ImageProjection."""
        super().__init__()
        self.image_dim, self.width = image_dim, width
        self.image_proj = ImageProjection(image_dim, width, tokens) if image_proj is None else image_proj
        if self.image_proj.image_dim != image_dim:
            raise ValueError(f"the image projection takes {self.image_proj.image_dim}-wide input, not {image_dim}")
        self.ip_adapter = nn.ModuleDict({str(2 * k + 1): IPLayer(width, inner) for k, inner in enumerate(inners)})

    @property
    def source(self) -> str:
        """The CLIP vision output the projection reads: POOLED or HIDDEN (a VisionOutput field)."""
        return self.image_proj.source

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """CLIP features of one or more images ((B, image_dim) pooled, (B, N, image_dim) hidden
        states) -> their context tokens (B, tokens, width)."""
        param = next(self.image_proj.parameters())
        return self.image_proj(features.to(device=param.device, dtype=param.dtype))

    def layers(self) -> list[IPLayer]:
        return [self.ip_adapter[str(2 * k + 1)] for k in range(len(self.ip_adapter))]


def encoder_width(cfg, source: str) -> int | None:
    """How wide the `source` output of a CLIP vision model of config `cfg` is (None: it has none:
    SigLIP has no projected pooled output, and the IP-Adapters were trained on CLIP's states)."""
    if cfg.kind != "clip":
        return None
    return cfg.projection_dim if source == POOLED else cfg.hidden_size


def cross_attentions(unet: nn.Module) -> list[CrossAttention]:
    """The UNet's cross-attention layers (attn2) in diffusers' order: input (down) blocks, output (up)
    blocks, then the middle block; within a block, its transformer blocks in order."""
    out = []
    for part in (unet.input_blocks, unet.output_blocks, unet.middle_block):
        for module in part.modules():
            if isinstance(module, SpatialTransformer):
                out += [block.attn2 for block in module.transformer_blocks]
    return out


@contextmanager
def patched(unet: nn.Module, adapter: IPAdapter, cond: torch.Tensor, uncond: torch.Tensor,
            scale: float | Sequence[float], n_uncond: int | Callable[[], int] = 0,
            negative_rows: Sequence[bool] | None = None):
    """Within the block, each cross-attention of `unet` also attends to the image tokens. Rows of a
    UNet batch before `n_uncond` (the negative ones; a callable: asked at each call, for passes whose
    calls leave the negative rows out) see the `uncond` tokens, the rest `cond` (each (1, tokens,
    width)); `negative_rows` instead names each row's side (for batches that put them elsewhere).
    `scale` is one for all layers or one per layer (cross_attentions' order); a layer of scale 0
    adds nothing (no hook)."""
    layers = cross_attentions(unet)
    if len(layers) != len(adapter.ip_adapter):
        raise ValueError(f"the IP-Adapter has {len(adapter.ip_adapter)} cross-attention layers, the UNet {len(layers)}")
    scales = [float(scale)] * len(layers) if isinstance(scale, (int, float)) else [float(s) for s in scale]
    if len(scales) != len(layers):
        raise ValueError(f"{len(scales)} IP-Adapter scales for {len(layers)} cross-attention layers")
    kv_cache: dict = {}  # (layer, which rows are negative) -> keys and values: the tokens stay the same all run

    def sides(rows: int) -> tuple[bool, ...]:
        if negative_rows is not None:
            if len(negative_rows) != rows:
                raise ValueError(f"{len(negative_rows)} rows named negative or not for a batch of {rows}")
            return tuple(bool(r) for r in negative_rows)
        n = min(n_uncond() if callable(n_uncond) else n_uncond, rows)
        return (True,) * n + (False,) * (rows - n)

    def hook_for(k: int, ip: IPLayer, layer_scale: float):
        def hook(attn: CrossAttention, args, out):
            x = args[0]
            key = (k, sides(len(x)))
            if key not in kv_cache or torch.is_grad_enabled():
                tokens = torch.cat([uncond if negative else cond for negative in key[1]]).to(x.dtype)
                kv_cache[key] = (ip.to_k_ip(tokens), ip.to_v_ip(tokens))
            ip_k, ip_v = kv_cache[key]
            # The query is computed again rather than threaded out of the layer: one linear per layer,
            # and the UNet's code stays unaware of adapters. to_out is linear, so adding its weight
            # times the image attention equals diffusers' to_out(text + scale * image).
            image = attention(attn.to_q(x), ip_k, ip_v, attn.heads)
            return out + layer_scale * F.linear(image, attn.to_out[0].weight)
        return hook

    handles = [attn.register_forward_hook(hook_for(k, ip, s))
               for k, (attn, ip, s) in enumerate(zip(layers, adapter.layers(), scales)) if s != 0]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
