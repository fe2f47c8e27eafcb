"""IP-Adapter nodes of ComfyUI_IPAdapter_plus (cubiq), with its names and inputs, over opensd's
IP-Adapter engine (adapters/ip_adapter.py: the base, Plus and Full Face variants): IPAdapterModelLoader,
IPAdapter, IPAdapterAdvanced, IPAdapterEncoder, IPAdapterCombineEmbeds and IPAdapterEmbeds (what
Krita AI Diffusion sends).

EMBEDS are what the adapter reads from CLIP vision: the projected pooled image embeddings (images,
dim) for the base variant, the penultimate layer's hidden states (images, tokens, hidden) for Plus
and Full Face; the adapter projects them to tokens, several images' tokens side by side ("concat").
The MODEL gets a network patch that adds the image attention to each cross-attention for the steps
whose sigma lies between start_at's and end_at's, with the weight spread over the layers by
weight_type (adapters/ip_adapter_weights.py); rows from the negative conditioning see the tokens of
neg_embed / image_negative, else, as cubiq's, of an all-zero embedding (base) or of a black image's
hidden states (Plus, Full Face). FaceID files load here and run through IPAdapterFaceID
(nodes_ip_adapter_faceid). Not available here: embeds_scaling other than "V only" and attention masks. The nodes take the image encoder from
their clip_vision input, else from an IPADAPTER of IPAdapterUnifiedLoader (nodes_ip_adapter_presets).
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..adapters.ip_adapter import cached, check_encoder, image_features
from ..adapters.ip_adapter_weights import WEIGHT_TYPES, layer_places, layer_weights
from ..checkpoints.ip_adapter_files import describe_ip_adapter
from ..errors import InvalidArgument
from ..models.ip_adapter import POOLED, patched
from ..models.ip_adapter_faceid import FACE
from .ksampler import sampling_of
from .nodes_clip_vision import CHUNK, ClipVisionRef
from .types import Choices, ModelRef, NodeDef, check_size, register

_MODULE = "custom_nodes.ComfyUI_IPAdapter_plus"
COMBINE = ["concat", "add", "subtract", "average", "norm average"]
SCALING = ["V only", "K+V", "K+V w/ C penalty", "K+mean(V) w/ C penalty"]


@dataclass(frozen=True)
class IPAdapterRef:
    """IPADAPTER: an IP-Adapter file (loaded for a model when applied, through the engine's cache) and
    what it reads: its CLIP output (`source`, models.ip_adapter.POOLED or HIDDEN) and that output's width."""
    path: Path
    name: str
    source: str
    image_dim: int
    clip_vision: ClipVisionRef | None = None  # the encoder IPAdapterUnifiedLoader found with it
    insightface: object = None  # the INSIGHTFACE IPAdapterUnifiedLoaderFaceID loaded with it (for IPAdapterFaceID)


def ipadapter_model_loader(call, ipadapter_file):
    path = call.ctx.folders.resolve("ipadapter", ipadapter_file)
    adapter = describe_ip_adapter(path)  # .safetensors from its header; .bin through the restricted loader
    return (IPAdapterRef(path, ipadapter_file, adapter.source, adapter.image_dim),)


def not_faceid(ipadapter) -> None:
    """FaceID adapters read faces, not CLIP images: they run in IPAdapterFaceID."""
    if isinstance(ipadapter, IPAdapterRef) and ipadapter.source == FACE:
        raise InvalidArgument(f"ipadapter: {ipadapter.name} is an IP-Adapter FaceID: use the IPAdapterFaceID node "
                              "(with IPAdapterInsightFaceLoader)")


register(NodeDef(
    "IPAdapterModelLoader", ipadapter_model_loader, {"ipadapter_file": (Choices("ipadapter"), {})},
    ("IPADAPTER",), category="ipadapter/loaders", display_name="IPAdapter Model Loader", module=_MODULE))


def _encode(clip_vision, image, ipadapter) -> torch.Tensor:
    """What `ipadapter` reads from CLIP vision, per image (CHUNK images at a time)."""
    if not isinstance(ipadapter, IPAdapterRef):
        raise InvalidArgument("ipadapter: expected an IPADAPTER from IPAdapterModelLoader")
    not_faceid(ipadapter)
    clip_vision = clip_vision if clip_vision is not None else ipadapter.clip_vision
    if not isinstance(clip_vision, ClipVisionRef):
        raise InvalidArgument("clip_vision: this IP-Adapter node needs a CLIP_VISION from CLIPVisionLoader (the "
                              "image encoder the adapter was trained with)")
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] < 3 or min(image.shape) < 1:
        raise InvalidArgument("image: expected an RGB IMAGE (batch, height, width, 3)")
    encoder = clip_vision.model
    check_encoder(ipadapter.source, ipadapter.image_dim, encoder.config, ipadapter.name, "clip_vision")
    size = encoder.config.image_size
    check_size("image: resized for the CLIP vision model", min(CHUNK, image.shape[0]), 3, size, size)
    device = next(encoder.parameters()).device
    with torch.inference_mode():
        parts = [image_features(encoder, chunk[..., :3].float().to(device), ipadapter.source).float().cpu()
                 for chunk in image.split(CHUNK)]
    return torch.cat(parts)


def _negative(clip_vision, ipadapter, pos: torch.Tensor) -> torch.Tensor:
    """cubiq's negative when none is given: zeros for the base variant's pooled embeddings, a black
    image's hidden states for Plus / Full Face (which then needs the encoder)."""
    if ipadapter.source == POOLED:
        return torch.zeros_like(pos)
    clip_vision = clip_vision if clip_vision is not None else ipadapter.clip_vision
    if clip_vision is None:
        raise InvalidArgument(f"clip_vision: {ipadapter.name} reads hidden states; its negative is a black image's, "
                              "so connect the CLIP vision model (or a neg_embed from IPAdapterEncoder)")
    size = clip_vision.model.config.image_size if isinstance(clip_vision, ClipVisionRef) else 224
    return _encode(clip_vision, torch.zeros(1, size, size, 3), ipadapter)


def combined(embeds: torch.Tensor, method: str) -> torch.Tensor:
    """Several images' embeddings as cubiq combines them (concat keeps them all)."""
    if method == "concat" or len(embeds) == 1:
        return embeds
    if method == "add":
        return embeds.sum(0, keepdim=True)
    if method == "subtract":
        return (embeds[0] - embeds[1:].mean(0))[None]
    if method == "average":
        return embeds.mean(0, keepdim=True)
    if method == "norm average":
        return (embeds / embeds.norm(dim=0, keepdim=True)).mean(0, keepdim=True)
    if method == "max":
        return embeds.max(0).values[None]
    if method == "min":
        return embeds.min(0).values[None]
    raise InvalidArgument(f"method: {method!r} is not one of {', '.join(COMBINE + ['max', 'min'])}")


def check_options(model, ipadapter, weight_type, embeds_scaling, attn_mask):
    """The MODEL's pipeline, after the checks every applying node makes."""
    if not isinstance(model, ModelRef):
        raise InvalidArgument("model: expected a MODEL")
    if not isinstance(ipadapter, IPAdapterRef):
        raise InvalidArgument("ipadapter: expected an IPADAPTER from IPAdapterModelLoader")
    if embeds_scaling != "V only":
        raise InvalidArgument(f"embeds_scaling: {embeds_scaling!r} is not available in opensd; use 'V only' (the "
                              "IP-Adapter's own: the image attention times the weight)")
    if attn_mask is not None:
        raise InvalidArgument("attn_mask: attention masks for IP-Adapters are not available in opensd yet; "
                              "leave attn_mask unconnected")
    if weight_type not in WEIGHT_TYPES:
        raise InvalidArgument(f"weight_type: {weight_type!r} is not one of {', '.join(WEIGHT_TYPES)}")
    model.pipe.family.require("ip_adapter", "model")
    return model.pipe


def _patched_model(model, ipadapter, pos, neg, weight, weight_type, start_at, end_at, embeds_scaling, attn_mask,
                   clip_vision=None):
    pipe = check_options(model, ipadapter, weight_type, embeds_scaling, attn_mask)
    not_faceid(ipadapter)
    loaded = cached("adapter", ipadapter.path, pipe)
    adapter = loaded.adapter
    ndim = 2 if adapter.source == POOLED else 3
    if not isinstance(pos, torch.Tensor) or pos.ndim != ndim or pos.shape[-1] != adapter.image_dim:
        have = "nothing" if not isinstance(pos, torch.Tensor) else f"{tuple(pos.shape)}"
        what = "image embeddings (images, width)" if ndim == 2 else "hidden states (images, tokens, width)"
        raise InvalidArgument(f"clip_vision: {ipadapter.name} takes {adapter.image_dim}-wide CLIP {what}, the "
                              f"image encoder gave {have} (ViT-H/14: 1024 pooled, 1280 hidden; ViT-bigG/14: 1280 "
                              "pooled, 1664 hidden)")
    neg = _negative(clip_vision, ipadapter, pos) if neg is None else neg
    if not isinstance(neg, torch.Tensor) or neg.shape[1:] != pos.shape[1:]:
        raise InvalidArgument("neg_embed: expected EMBEDS of pos_embed's shape")
    neg = neg.repeat(-(-len(pos) // len(neg)), *(1,) * (ndim - 1))[:len(pos)]
    with torch.no_grad():
        cond, uncond = (adapter.project(e).reshape(1, -1, adapter.width) for e in (pos, neg))
    return with_patch(model, adapter, cond, uncond, weight, weight_type, start_at, end_at)


def with_patch(model, adapter, cond, uncond, weight, weight_type, start_at, end_at):
    """The MODEL with a network patch adding `adapter`'s attention over the tokens `cond` / `uncond`
    (1, tokens, width) for the steps between start_at and end_at, spread over the layers by weight_type."""
    pipe = model.pipe
    unet = pipe.family.network(pipe.model)
    scales = layer_weights(weight_type, float(weight), layer_places(unet), adapter.width == 2048)
    ms = sampling_of(model)
    sigma_start, sigma_end = ms.percent_to_sigma(start_at), ms.percent_to_sigma(end_at)

    def patch(network, sigma: float, image: int = 0, negative: tuple = ()):
        if not sigma_end <= sigma <= sigma_start or not any(scales):
            return nullcontext()
        return patched(network, adapter, cond, uncond, scales, negative_rows=negative)
    patch.per_image = True  # guiders.ModelRun names the negative rows
    return replace(model, network_patches=model.network_patches + (patch,))


_WEIGHT = ("FLOAT", {"default": 1.0, "min": -1, "max": 5, "step": 0.05})
_START = ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001})
_END = ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001})


def ipadapter_advanced(call, model, ipadapter, image, weight, weight_type, combine_embeds, start_at, end_at,
                       embeds_scaling, image_negative=None, attn_mask=None, clip_vision=None):
    pos = combined(_encode(clip_vision, image, ipadapter), combine_embeds)
    neg = None if image_negative is None else _encode(clip_vision, image_negative, ipadapter)
    return (_patched_model(model, ipadapter, pos, neg, weight, weight_type, start_at, end_at, embeds_scaling,
                           attn_mask, clip_vision),)


register(NodeDef(
    "IPAdapterAdvanced", ipadapter_advanced,
    {"model": ("MODEL", {}), "ipadapter": ("IPADAPTER", {}), "image": ("IMAGE", {}), "weight": _WEIGHT,
     "weight_type": (WEIGHT_TYPES, {}), "combine_embeds": (COMBINE, {}), "start_at": _START, "end_at": _END,
     "embeds_scaling": (SCALING, {})},
    ("MODEL",), optional={"image_negative": ("IMAGE", {}), "attn_mask": ("MASK", {}), "clip_vision": ("CLIP_VISION", {})},
    category="ipadapter", display_name="IPAdapter Advanced", module=_MODULE))

# IPAdapter (simple)'s three weight types, as cubiq maps them
_SIMPLE_TYPES = {"standard": "linear", "prompt is more important": "ease out", "style transfer": "style transfer"}


def ipadapter_simple(call, model, ipadapter, image, weight, start_at, end_at, weight_type, attn_mask=None,
                     clip_vision=None):
    if clip_vision is None and getattr(ipadapter, "clip_vision", None) is None:
        raise InvalidArgument("clip_vision: IPAdapter needs the image encoder: take the ipadapter from "
                              "IPAdapterUnifiedLoader, or connect a CLIPVisionLoader to this node's clip_vision input")
    (out,) = ipadapter_advanced(call, model, ipadapter, image, weight, _SIMPLE_TYPES[weight_type], "concat",
                                start_at, end_at, "V only", attn_mask=attn_mask, clip_vision=clip_vision)
    return (out,)


register(NodeDef(
    "IPAdapter", ipadapter_simple,
    {"model": ("MODEL", {}), "ipadapter": ("IPADAPTER", {}), "image": ("IMAGE", {}),
     "weight": ("FLOAT", {"default": 1.0, "min": -1, "max": 3, "step": 0.05}), "start_at": _START, "end_at": _END,
     "weight_type": (list(_SIMPLE_TYPES), {})},
    ("MODEL",), optional={"attn_mask": ("MASK", {}), "clip_vision": ("CLIP_VISION", {})},
    category="ipadapter", display_name="IPAdapter", module=_MODULE))


def ipadapter_encoder(call, ipadapter, image, weight, mask=None, clip_vision=None):
    if mask is not None:
        raise InvalidArgument("mask: masked image encoding is not available in opensd yet; leave mask unconnected")
    pos = _encode(clip_vision, image, ipadapter)
    return pos * weight if weight != 1 else pos, _negative(clip_vision, ipadapter, pos)


register(NodeDef(
    "IPAdapterEncoder", ipadapter_encoder,
    {"ipadapter": ("IPADAPTER", {}), "image": ("IMAGE", {}),
     "weight": ("FLOAT", {"default": 1.0, "min": -1.0, "max": 3.0, "step": 0.01})},
    ("EMBEDS", "EMBEDS"), output_names=("pos_embed", "neg_embed"),
    optional={"mask": ("MASK", {}), "clip_vision": ("CLIP_VISION", {})},
    category="ipadapter/embeds", display_name="IPAdapter Encoder", module=_MODULE))


def ipadapter_combine_embeds(call, embed1, method, embed2=None, embed3=None, embed4=None, embed5=None):
    embeds = [e for e in (embed1, embed2, embed3, embed4, embed5) if e is not None]
    if any(not isinstance(e, torch.Tensor) or e.ndim not in (2, 3) or e.shape[1:] != embed1.shape[1:]
           for e in embeds):
        raise InvalidArgument("embed: expected EMBEDS of one shape (from IPAdapterEncoder)")
    return (combined(torch.cat(embeds), method),)


register(NodeDef(
    "IPAdapterCombineEmbeds", ipadapter_combine_embeds,
    {"embed1": ("EMBEDS", {}), "method": (COMBINE + ["max", "min"], {})},
    ("EMBEDS",), optional={f"embed{i}": ("EMBEDS", {}) for i in range(2, 6)},
    category="ipadapter/embeds", display_name="IPAdapter Combine Embeds", module=_MODULE))


def ipadapter_embeds(call, model, ipadapter, pos_embed, weight, weight_type, start_at, end_at, embeds_scaling,
                     neg_embed=None, attn_mask=None, clip_vision=None):
    return (_patched_model(model, ipadapter, pos_embed, neg_embed, weight, weight_type, start_at, end_at,
                           embeds_scaling, attn_mask, clip_vision),)


register(NodeDef(
    "IPAdapterEmbeds", ipadapter_embeds,
    {"model": ("MODEL", {}), "ipadapter": ("IPADAPTER", {}), "pos_embed": ("EMBEDS", {}),
     "weight": ("FLOAT", {"default": 1.0, "min": -1, "max": 3, "step": 0.05}), "weight_type": (WEIGHT_TYPES, {}),
     "start_at": _START, "end_at": _END, "embeds_scaling": (SCALING, {})},
    ("MODEL",), optional={"neg_embed": ("EMBEDS", {}), "attn_mask": ("MASK", {}), "clip_vision": ("CLIP_VISION", {})},
    category="ipadapter/embeds", display_name="IPAdapter Embeds", module=_MODULE))
