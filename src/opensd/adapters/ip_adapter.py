"""Apply an IP-Adapter (image prompt) during sampling.

    from opensd.adapters.ip_adapter import IPAdapterSpec, load_ip_adapter_for
    spec = IPAdapterSpec(load_ip_adapter_for("ip-adapter_sd15.safetensors", pipe),
                         load_clip_vision("clip_vision_h.safetensors"), image, scale=0.8)
    pipe.txt2img("a cat", ip_adapter=spec)

As h94's and diffusers' pipelines do, the center-cropped image is encoded by CLIP vision and the
adapter's projection reads the output it was trained on: the base variant the projected pooled
embedding (``image_embeds``), Plus and Full Face the penultimate layer's hidden states. The
negative (unconditional) rows get the projection of an all-zero embedding (base) or of the hidden
states of an all-zero (normalised) pixel input (Plus, Full Face). The UNet is patched for one
sampling pass at a time and left as it was after it (models/ip_adapter.patched).

FaceID adapters (models/ip_adapter_faceid.py) read the largest face's InsightFace embedding instead
(``IPAdapterSpec(..., faces=insightface.load(...))``, adapters/ip_adapter_faceid.py); FaceID Plus also
CLIP vision's hidden states of the aligned face, and v2 files add the id tokens back (``faceid_scale``).
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
from ..checkpoints.ip_adapter_files import is_v2, load_ip_adapter
from ..errors import CheckpointError, InvalidArgument
from ..models.clip_vision import VisionModel, preprocess
from ..models.ip_adapter import HIDDEN, POOLED, IPAdapter, cross_attentions, encoder_width, patched
from ..models.ip_adapter_faceid import is_faceid, project_faces

MAX_SCALE = 2.0  # A1111's ControlNet extension's weight slider goes to 2


@dataclass
class LoadedIPAdapter:
    adapter: IPAdapter
    path: Path

    @property
    def v2(self) -> bool:
        """FaceID Plus v2 (its tokens added back to the perceiver's: the "shortcut")."""
        return is_faceid(self.adapter) and self.adapter.image_proj.clip_dim is not None and is_v2(self.path)

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
    faces: object | None = None  # FaceID: the InsightFace FaceAnalysis (adapters/insightface.load)
    faceid_scale: float = 1.0    # FaceID Plus v2: how much of the perceiver is added to the id tokens
    _tokens: tuple | None = field(default=None, repr=False)  # (cond, uncond) once computed

    def validate(self) -> None:
        if not isinstance(self.model, LoadedIPAdapter):
            raise InvalidArgument("ip-adapter: model must be loaded with load_ip_adapter_for()")
        if is_faceid(self.model.adapter):
            self._validate_faceid()
            return
        if self.encoder is None:
            raise InvalidArgument(f"clip_vision: an IP-Adapter needs its CLIP image encoder ({ENCODERS})")
        if not isinstance(self.image, Image.Image):
            raise InvalidArgument("ip_adapter_image: a PIL image is required")
        _check_number("ip_adapter_scale", self.scale, 0, MAX_SCALE)
        adapter = self.model.adapter
        check_encoder(adapter.source, adapter.image_dim, self.encoder.config, self.model.name, "clip_vision")

    def _validate_faceid(self) -> None:
        from .insightface import FaceAnalysis

        if not isinstance(self.faces, FaceAnalysis):
            raise InvalidArgument(f"insightface: {self.model.name} is an IP-Adapter FaceID: it needs InsightFace's face "
                                  "analysis (the buffalo_l model pack in models/insightface/models)")
        if not isinstance(self.image, Image.Image):
            raise InvalidArgument("ip_adapter_image: a PIL image (the face) is required")
        _check_number("ip_adapter_scale", self.scale, 0, MAX_SCALE)
        _check_number("faceid_v2_weight", self.faceid_scale, -1, 5)  # cubiq's weight_faceidv2 range
        clip_dim = self.model.adapter.image_proj.clip_dim
        if clip_dim is not None:
            if self.encoder is None:
                raise InvalidArgument(f"clip_vision: {self.model.name} (FaceID Plus) also reads the face through CLIP "
                                      "vision: it needs the ViT-H/14 image encoder")
            check_encoder(HIDDEN, clip_dim, self.encoder.config, self.model.name, "clip_vision")

    @torch.no_grad()
    def _faceid_tokens(self) -> tuple[torch.Tensor, torch.Tensor]:
        from .ip_adapter_faceid import crop_size, face_inputs

        adapter = self.model.adapter
        plus = adapter.image_proj.clip_dim is not None
        ids, crop = face_inputs(self.faces, np.asarray(self.image.convert("RGB")), crop_size(adapter) if plus else None,
                                "ip_adapter_image")
        if not plus:
            return project_faces(adapter, ids), project_faces(adapter, torch.zeros_like(ids))
        weight = next(self.encoder.parameters())
        pixels = torch.from_numpy(crop.astype(np.float32) / 255.0)[None].to(weight.device)
        hidden = image_features(self.encoder, pixels, HIDDEN)
        size = self.encoder.config.image_size
        negative = getattr(self.encoder(weight.new_zeros(1, 3, size, size)), HIDDEN)
        scale, v2 = float(self.faceid_scale), self.model.v2
        return (project_faces(adapter, ids, hidden, scale, v2),
                project_faces(adapter, torch.zeros_like(ids), negative, scale, v2))

    @torch.no_grad()
    def tokens(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(cond, uncond) image tokens, each (1, tokens, width): the image's and the negative's."""
        if self._tokens is None and is_faceid(self.model.adapter):
            self._tokens = self._faceid_tokens()
        if self._tokens is None:
            weight = next(self.encoder.parameters())
            pixels = torch.from_numpy(np.asarray(self.image.convert("RGB"), dtype=np.float32) / 255.0)[None]
            adapter = self.model.adapter
            features = image_features(self.encoder, pixels.to(weight.device), adapter.source)
            if adapter.source == POOLED:
                negative = torch.zeros_like(features)
            else:  # h94's get_image_embeds: the encoder run on zero (normalised) pixel values
                size = self.encoder.config.image_size
                negative = getattr(self.encoder(weight.new_zeros(1, 3, size, size)), adapter.source)
            self._tokens = (adapter.project(features), adapter.project(negative))
        return self._tokens


def _check_number(name: str, value, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise InvalidArgument(f"{name}: {value!r} must be a number in {low:g}..{high:g}")


ENCODERS = ("ViT-H/14 for ip-adapter_sd15, ip-adapter_sdxl_vit-h and the Plus / Full Face files, ViT-bigG/14 for "
            "ip-adapter_sdxl")


def check_encoder(source: str, width: int, cfg, name: str, field: str) -> None:
    """InvalidArgument (one line, naming `field`) unless an image encoder of config `cfg` gives what
    the adapter `name` reads: its `source` output (pooled embedding or hidden states), `width` wide."""
    have = encoder_width(cfg, source)
    if have != width:
        what = "image embeddings" if source == POOLED else "hidden states (penultimate layer)"
        gives = f"{have}-wide ones" if have else "none"
        label = cfg.label or f"the {cfg.kind} encoder"
        raise InvalidArgument(f"{field}: {name} takes {width}-wide CLIP {what}, {label} gives {gives} "
                              f"({ENCODERS})")


def image_features(encoder: VisionModel, pixels: torch.Tensor, source: str = POOLED) -> torch.Tensor:
    """An IP-Adapter's input from (B, H, W, 3) pixels in 0..1: CLIP vision's `source` output (the
    projected pooled embedding (B, projection_dim), or the penultimate hidden states (B, N, hidden))."""
    weight = next(encoder.parameters())
    x = preprocess(pixels, encoder.config, crop=True).to(weight)
    return getattr(encoder(x), source)


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
