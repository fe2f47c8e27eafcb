"""ComfyUI's batching nodes with a growing list of inputs (comfy_extras.nodes_post_processing, ComfyUI's
Autogrow): BatchImagesNode (images.image0 .. image49), BatchMasksNode (masks.mask0 ..),
BatchLatentsNode (latents.latent0 ..) and BatchImagesMasksLatentsNode (inputs.input0 .., all images,
all masks or all latents). As ComfyUI's: every input after the first is resized (bilinear, centre
crop) to the first's size; an image with one channel fewer than the most gets an alpha of 1; the
latents' batch_index lists are joined so each keeps its noise, the first latent's other keys kept.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InvalidArgument
from .autogrow import Autogrow
from .nodes_image import upscale
from .nodes_logic import MATCH_TYPE
from .types import NodeDef, check_size, register

_MODULE = "comfy_extras.nodes_post_processing"
MAX_INPUTS = 50


def _resized(x: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """x (B, C, H, W) at first's height and width."""
    if x.shape[2:] == first.shape[2:]:
        return x
    return upscale(x, first.shape[3], first.shape[2], "bilinear", "center").to(x.dtype)


def _joined(what: str, parts: list[torch.Tensor]) -> torch.Tensor:
    check_size(what, sum(p.shape[0] for p in parts), *parts[0].shape[1:])
    return torch.cat(parts, dim=0)


def batch_images(images: list[torch.Tensor]) -> torch.Tensor:
    most = max(image.shape[-1] for image in images)
    padded = [F.pad(image, (0, 1), value=1.0) if image.shape[-1] < most else image for image in images]
    for i, image in enumerate(padded):
        if image.ndim != 4 or image.shape[-1] != most:
            raise InvalidArgument(f"images: input {i} of shape {tuple(images[i].shape)} is no (batch, height, width, "
                                  f"{most} or {most - 1} channels) image")
    first = padded[0].movedim(-1, 1)
    return _joined("BatchImagesNode", [_resized(p.movedim(-1, 1), first).movedim(1, -1) for p in padded])


def batch_masks(masks: list[torch.Tensor]) -> torch.Tensor:
    masks = [m.reshape(-1, *m.shape[-2:]) if m.ndim in (2, 3) else m for m in masks]
    for i, mask in enumerate(masks):
        if mask.ndim != 3:
            raise InvalidArgument(f"masks: input {i} of shape {tuple(mask.shape)} is no (batch, height, width) mask")
    first = masks[0].unsqueeze(1)
    return _joined("BatchMasksNode", [_resized(m.unsqueeze(1), first).squeeze(1) for m in masks])


def batch_latents(latents: list[dict]) -> dict:
    first = latents[0]["samples"]
    parts, index = [], []
    for i, latent in enumerate(latents):
        samples = latent["samples"]
        if samples.ndim != first.ndim or samples.shape[1] != first.shape[1]:
            raise InvalidArgument(f"latents: input {i} has samples of shape {tuple(samples.shape)}, which cannot "
                                  f"join those of shape {tuple(first.shape)} (the channels differ)")
        if samples.shape[2:] != first.shape[2:] and samples.ndim != 4:
            raise InvalidArgument(f"latents: input {i}'s samples {tuple(samples.shape)} differ in size from the "
                                  f"first's {tuple(first.shape)}; only image latents are resized to match")
        parts.append(_resized(samples, first))
        index.extend(latent.get("batch_index", range(samples.shape[0])))
    return dict(latents[0], samples=_joined("BatchLatentsNode", parts), batch_index=index)


def _batch_images(call, images):
    return (batch_images(list(images.values())),)


def _batch_masks(call, masks):
    return (batch_masks(list(masks.values())),)


def _batch_latents(call, latents):
    return (batch_latents(list(latents.values())),)


def _batch_any(call, inputs):
    values = list(inputs.values())
    if all(isinstance(v, dict) for v in values):
        return (batch_latents(values),)
    if not all(isinstance(v, torch.Tensor) for v in values):
        raise InvalidArgument("inputs: all must be images, all masks or all latents")
    if all(v.ndim == 4 for v in values):
        return (batch_images(values),)
    if all(v.ndim == 3 for v in values):
        return (batch_masks(values),)
    raise InvalidArgument("inputs: all must be images, all masks or all latents, not a mix")


def _group(slot: str, spec: tuple) -> dict:
    return {slot + "s": (Autogrow(slot, spec, prefix=slot, min=1, max=MAX_INPUTS),)}


for _name, _fn, _slot, _kind, _category, _display in (
        ("BatchImagesNode", _batch_images, "image", "IMAGE", "image/batch", "Batch Images"),
        ("BatchMasksNode", _batch_masks, "mask", "MASK", "image/mask", "Batch Masks"),
        ("BatchLatentsNode", _batch_latents, "latent", "LATENT", "model/latent/batch", "Batch Latents")):
    register(NodeDef(_name, _fn, _group(_slot, (_kind, {})), (_kind,), category=_category, display_name=_display,
                     module=_MODULE))

_ANY = (MATCH_TYPE, {"template": {"template_id": "input", "allowed_types": "IMAGE,MASK,LATENT"}})
register(NodeDef("BatchImagesMasksLatentsNode", _batch_any, _group("input", _ANY), (MATCH_TYPE,),
                 output_names=("MATCHTYPE",), category="util", display_name="Batch Images/Masks/Latents",
                 module=_MODULE))
