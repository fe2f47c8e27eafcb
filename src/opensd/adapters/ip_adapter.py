"""Apply an IP-Adapter (image prompt) during sampling.

    from opensd.adapters.ip_adapter import IPAdapterSpec, load_ip_adapter_for
    spec = IPAdapterSpec(load_ip_adapter_for("ip-adapter_sd15.safetensors", pipe),
                         load_clip_vision("clip_vision_h.safetensors"), image, scale=0.8)
    pipe.txt2img("a cat", ip_adapter=spec)

As diffusers' pipelines do: the image's embedding is CLIP vision's projected pooled output
(``image_embeds``) of the center-cropped image; the negative (unconditional) rows get the
projection of an all-zero embedding. The UNet is patched for one sampling pass at a time and left
as it was after it (models/ip_adapter.patched).
"""
from __future__ import annotations

import math
import weakref
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..checkpoints.clip_vision_files import load_clip_vision
from ..checkpoints.ip_adapter_files import load_ip_adapter
from ..errors import CheckpointError, InvalidArgument
from ..models.clip_vision import VisionModel, preprocess
from ..models.ip_adapter import IPAdapter, cross_attentions, patched

MAX_SCALE = 2.0  # A1111's ControlNet extension's weight slider goes to 2


@dataclass
class LoadedIPAdapter:
    adapter: IPAdapter
    path: Path

    @property
    def name(self) -> str:
        return self.path.stem


def load_ip_adapter_for(path, pipe) -> LoadedIPAdapter:
    """An IP-Adapter file checked against `pipe`'s UNet (CheckpointError in one line if it was made
    for another model: SD1 files have 16 cross-attention layers of width 768, SDXL ones 70 of 2048)."""
    pipe.family.require("ip_adapter", "ip-adapter")
    path = Path(path)
    adapter = load_ip_adapter(path, pipe.device, pipe.dtype)
    unet = pipe.family.network(pipe.model)
    layers = cross_attentions(unet)
    inners = [attn.to_k.out_features for attn in layers]
    context = unet.config.context_dim
    if adapter.width != context or [ip.to_k_ip.out_features for ip in adapter.layers()] != inners:
        raise CheckpointError(path, f"this IP-Adapter ({len(adapter.ip_adapter)} layers, text width {adapter.width}) "
                                    f"was made for another model than {pipe.name} ({len(layers)} cross-attention "
                                    f"layers, text width {context})")
    return LoadedIPAdapter(adapter.requires_grad_(False), path)


_CACHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cached(kind: str, path, pipe, keep: int = 2):
    """The IP-Adapter (`kind` "adapter") or CLIP vision encoder ("encoder") at `path` for `pipe`, through
    a small per-pipeline cache keyed by path, size and mtime (the server loads them per request;
    a ViT-H encoder is 2.5 GB)."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as e:
        raise InvalidArgument(f"ip-adapter: cannot read {path.name} ({e})") from None
    key = (kind, str(path.resolve()), st.st_size, st.st_mtime_ns)
    cache = _CACHES.setdefault(pipe, {})
    if key not in cache:
        cache[key] = (load_ip_adapter_for(path, pipe) if kind == "adapter"
                      else load_clip_vision(path, pipe.device, pipe.dtype))
        while sum(k[0] == kind for k in cache) > keep:
            cache.pop(next(k for k in cache if k[0] == kind))
    cache[key] = cache.pop(key)  # most recently used last
    return cache[key]


@dataclass
class IPAdapterSpec:
    model: LoadedIPAdapter
    encoder: VisionModel | None  # the CLIP vision model the adapter was trained with
    image: Image.Image
    scale: float = 1.0
    _tokens: tuple | None = field(default=None, repr=False)  # (cond, uncond) once computed

    def validate(self) -> None:
        if not isinstance(self.model, LoadedIPAdapter):
            raise InvalidArgument("ip-adapter: model must be loaded with load_ip_adapter_for()")
        if self.encoder is None:
            raise InvalidArgument("clip_vision: an IP-Adapter needs its CLIP image encoder (ViT-H/14 for "
                                  "ip-adapter_sd15 and ip-adapter_sdxl_vit-h, ViT-bigG/14 for ip-adapter_sdxl)")
        if not isinstance(self.image, Image.Image):
            raise InvalidArgument("ip_adapter_image: a PIL image is required")
        value = self.scale
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not 0 <= value <= MAX_SCALE:
            raise InvalidArgument(f"ip_adapter_scale: {value!r} must be a number in 0..{MAX_SCALE:g}")
        dim = self.encoder.config.projection_dim
        if dim != self.model.adapter.image_dim:
            have = self.encoder.config.label or f"an encoder of {dim}-wide embeddings"
            raise InvalidArgument(f"clip_vision: {self.model.name} takes {self.model.adapter.image_dim}-wide image "
                                  f"embeddings, {have} gives {dim} (ViT-H/14: 1024, ViT-bigG/14: 1280)")

    @torch.no_grad()
    def tokens(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(cond, uncond) image tokens, each (1, tokens, width): the image's and an all-zero embedding's."""
        if self._tokens is None:
            weight = next(self.encoder.parameters())
            pixels = torch.from_numpy(np.asarray(self.image.convert("RGB"), dtype=np.float32) / 255.0)[None]
            embeds = image_embeds(self.encoder, pixels.to(weight.device))
            proj = self.model.adapter.image_proj
            param = proj.proj.weight
            embeds = embeds.to(device=param.device, dtype=param.dtype)
            self._tokens = (proj(embeds), proj(torch.zeros_like(embeds)))
        return self._tokens


def image_embeds(encoder: VisionModel, pixels: torch.Tensor) -> torch.Tensor:
    """The projected pooled embedding (B, projection_dim) of (B, H, W, 3) pixels in 0..1."""
    weight = next(encoder.parameters())
    x = preprocess(pixels, encoder.config, crop=True).to(weight)
    return encoder(x).image_embeds


def validated(spec: IPAdapterSpec | None) -> IPAdapterSpec | None:
    if spec is not None:
        if not isinstance(spec, IPAdapterSpec):
            raise InvalidArgument("ip_adapter: an IPAdapterSpec is required")
        spec.validate()
    return spec


def applied(spec: IPAdapterSpec | None, unet, n_uncond):
    """A context manager patching `unet` with the spec's adapter for one sampling pass whose batches
    put `n_uncond` negative rows first (an int, or a callable asked at each UNet call; nothing
    without a spec)."""
    if spec is None:
        return nullcontext()
    cond, uncond = spec.tokens()
    return patched(unet, spec.model.adapter, cond, uncond, float(spec.scale), n_uncond)
