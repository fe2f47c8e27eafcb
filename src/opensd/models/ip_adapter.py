"""IP-Adapter (Tencent AI Lab, h94/IP-Adapter), the base variant: an image prompt for SD1 and SDXL UNets.

The pooled, projected CLIP image embedding is turned into a few extra context tokens (``image_proj``:
a linear to ``tokens * width`` and a LayerNorm), and every cross-attention layer of the UNet gets a
second, "decoupled" attention over them with its own keys and values (``to_k_ip``, ``to_v_ip``):

    to_out( attention(q, k_text, v_text) + scale * attention(q, to_k_ip(tokens), to_v_ip(tokens)) )

Attribute names equal the released file's keys (``image_proj.proj.weight``, ``ip_adapter.1.to_k_ip.weight``).
The adapter's layer numbers count every attention of diffusers' UNet, self- and cross-, in its
module order (down blocks, then up blocks, then the middle block), so cross-attention k is number
2k + 1; :func:`cross_attentions` lists our UNet's cross-attention layers in that order.

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


class ImageProjection(nn.Module):
    def __init__(self, image_dim: int, width: int, tokens: int = TOKENS):
        super().__init__()
        self.tokens = tokens
        self.proj = nn.Linear(image_dim, tokens * width)
        self.norm = nn.LayerNorm(width)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """(B, image_dim) pooled image embeddings -> (B, tokens, width) context tokens."""
        x = self.proj(image_embeds.to(self.proj.weight.dtype))
        return self.norm(x.reshape(len(x), self.tokens, -1))


class IPLayer(nn.Module):
    def __init__(self, width: int, inner: int):
        super().__init__()
        self.to_k_ip = nn.Linear(width, inner, bias=False)
        self.to_v_ip = nn.Linear(width, inner, bias=False)


class IPAdapter(nn.Module):
    def __init__(self, image_dim: int, width: int, inners: list[int], tokens: int = TOKENS):
        """`inners`: the inner (heads x head width) size of each cross-attention layer, in order."""
        super().__init__()
        self.image_dim, self.width = image_dim, width
        self.image_proj = ImageProjection(image_dim, width, tokens)
        self.ip_adapter = nn.ModuleDict({str(2 * k + 1): IPLayer(width, inner) for k, inner in enumerate(inners)})

    def layers(self) -> list[IPLayer]:
        return [self.ip_adapter[str(2 * k + 1)] for k in range(len(self.ip_adapter))]


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
