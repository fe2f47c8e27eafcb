"""Fooocus inpaint nodes of comfyui-inpaint-nodes (Acly), with its names and inputs:
INPAINT_LoadFooocusInpaint (head + patch from models/inpaint), INPAINT_ApplyFooocusInpaint (the
head's feature for one inpaint latent and the weight patch, on a MODEL) and
INPAINT_VAEEncodeInpaintConditioning (InpaintModelConditioning plus the latent the apply node takes).

The MODEL it returns carries both as patches (ModelRef.network_patches / weight_patches): the
loaded model itself is never changed, and a branch without the patch samples the base weights.
The math is in adapters/fooocus_inpaint.py, the files are read by checkpoints/fooocus_inpaint_files.py.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..adapters.fooocus_inpaint import HeadPatch, WeightDiffs, head_feature
from ..checkpoints.fooocus_inpaint_files import read_head, read_patch
from ..errors import InvalidArgument
from .ksampler import latent_format
from .nodes_core import inpaint_model_conditioning
from .types import Choices, ModelRef, NodeDef, check_size, register

_MODULE = "custom_nodes.comfyui-inpaint-nodes"


@dataclass(frozen=True, eq=False)
class FooocusInpaint:
    """INPAINT_PATCH: the head's conv weight and the weight patch."""
    head: torch.Tensor
    diffs: WeightDiffs


def load_fooocus_inpaint(call, head, patch):
    folders = call.ctx.folders
    weights = read_head(folders.resolve("inpaint", head))
    diffs = read_patch(folders.resolve("inpaint", patch))
    return (FooocusInpaint(weights, WeightDiffs(diffs, patch)),)


register(NodeDef(
    "INPAINT_LoadFooocusInpaint", load_fooocus_inpaint,
    {"head": (Choices("inpaint"), {}), "patch": (Choices("inpaint"), {})},
    ("INPAINT_PATCH",), category="inpaint", display_name="Load Fooocus Inpaint", module=_MODULE))


def apply_fooocus_inpaint(call, model, patch, latent):
    if not isinstance(model, ModelRef):
        raise InvalidArgument("model: expected a MODEL")
    if not isinstance(patch, FooocusInpaint):
        raise InvalidArgument("patch: expected an INPAINT_PATCH from INPAINT_LoadFooocusInpaint")
    model.pipe.family.require("fooocus_inpaint", "model")
    samples, mask = latent.get("samples"), latent.get("noise_mask")
    if mask is None:
        raise InvalidArgument("latent: it has no noise mask; give the latent of VAEEncodeForInpaint or "
                              "INPAINT_VAEEncodeInpaintConditioning's latent_inpaint")
    if not isinstance(samples, torch.Tensor) or samples.ndim != 4:
        raise InvalidArgument("latent: expected image latents (batch, channels, height, width)")
    network = model.pipe.family.network(model.pipe.model)
    channels = network.config.model_channels
    if tuple(patch.head.shape[:2]) != (channels, samples.shape[1] + 1):
        raise InvalidArgument(f"patch: its head maps {patch.head.shape[1] - 1} latent channels and a mask to "
                              f"{patch.head.shape[0]}, but the latent has {samples.shape[1]} channels and "
                              f"{model.name}'s first block {channels} (the Fooocus inpaint head is for SDXL)")
    patch.diffs.check(dict(network.named_parameters()))
    b, _, h, w = samples.shape
    check_size("latent: its noise mask at 8 x the latent's size", b, 1, 8 * h, 8 * w)
    feature = head_feature(patch.head, latent_format(model).scaled(samples.float()), mask)
    return (replace(model, network_patches=model.network_patches + (HeadPatch(feature),),
                    weight_patches=model.weight_patches + (patch.diffs,)),)


register(NodeDef(
    "INPAINT_ApplyFooocusInpaint", apply_fooocus_inpaint,
    {"model": ("MODEL", {}), "patch": ("INPAINT_PATCH", {}), "latent": ("LATENT", {})},
    ("MODEL",), category="inpaint", display_name="Apply Fooocus Inpaint", module=_MODULE))


def vae_encode_inpaint_conditioning(call, positive, negative, vae, pixels, mask):
    """InpaintModelConditioning (with a noise mask), and the greyed image's latent with the rounded
    mask as the latent Fooocus inpaint's head reads."""
    if not positive:
        raise InvalidArgument("positive: the conditioning is empty")
    positive, negative, latent = inpaint_model_conditioning(call, positive, negative, vae, pixels, mask, True)
    latent_inpaint = {"samples": positive[0][1]["concat_latent_image"], "noise_mask": latent["noise_mask"].round()}
    return positive, negative, latent_inpaint, latent


register(NodeDef(
    "INPAINT_VAEEncodeInpaintConditioning", vae_encode_inpaint_conditioning,
    {"positive": ("CONDITIONING", {}), "negative": ("CONDITIONING", {}), "vae": ("VAE", {}), "pixels": ("IMAGE", {}),
     "mask": ("MASK", {})},
    ("CONDITIONING", "CONDITIONING", "LATENT", "LATENT"),
    output_names=("positive", "negative", "latent_inpaint", "latent_samples"), category="inpaint",
    display_name="VAE Encode & Inpaint Conditioning", module=_MODULE))
