"""Latent nodes with ComfyUI's names, inputs and arithmetic: resizing, arithmetic between latents,
compositing, blending, batches and transforms. A LATENT stays a dict: every node returns a copy of
its first input with new "samples" (a noise mask and batch indices travel along).

EmptyLatentImage's "pixel_size" (how large an image the empty latent stands for, so models with
another VAE downscale get the right latent) is kept in step when a node changes the latent's size."""
from __future__ import annotations

import torch

from ..errors import InvalidArgument
from .compositing import composite, repeat_to_batch
from .nodes_image import LATENT_METHODS, upscale
from .types import MAX_RESOLUTION, NodeDef, check_size, register

_EXTRAS = "comfy_extras.nodes_latent"


def _with(latent: dict, samples: torch.Tensor) -> dict:
    out = dict(latent, samples=samples)
    if "pixel_size" in latent and samples.shape[2:] != latent["samples"].shape[2:]:
        out["pixel_size"] = (samples.shape[3] * 8, samples.shape[2] * 8)
    return out


def _same_channels(name: str, target: torch.Tensor, other: torch.Tensor) -> None:
    """Latents of different channel counts (SD's 4 and SD3's/Flux's 16) cannot be resized to fit."""
    if other.ndim != 4 or target.ndim != 4 or other.shape[1] != target.shape[1]:
        raise InvalidArgument(f"{name}: latents of shape {tuple(other.shape)} cannot be combined with latents of "
                              f"shape {tuple(target.shape)} (the channel counts differ: another model's latents?)")


def _fit(target: torch.Tensor, other: torch.Tensor, name: str = "samples2") -> torch.Tensor:
    """`other` stretched (bilinear, centre crop) to target's size and repeated to its batch."""
    _same_channels(name, target, other)
    if other.shape[1:] != target.shape[1:]:
        other = upscale(other, target.shape[3], target.shape[2], "bilinear", "center")
    return repeat_to_batch(other, target.shape[0])


def _int(default: int, lo: int, hi: int = MAX_RESOLUTION, step: int | None = None):
    opts = {"default": default, "min": lo, "max": hi}
    if step is not None:
        opts["step"] = step
    return ("INT", opts)


# --- resizing ------------------------------------------------------------------------------------

def latent_upscale_by(call, samples, upscale_method, scale_by):
    s = samples["samples"]
    width, height = round(s.shape[3] * scale_by), round(s.shape[2] * scale_by)
    return (_with(samples, upscale(s, width, height, upscale_method, "disabled")),)


register(NodeDef(
    "LatentUpscaleBy", latent_upscale_by,
    {"samples": ("LATENT", {}), "upscale_method": (LATENT_METHODS, {}),
     "scale_by": ("FLOAT", {"default": 1.5, "min": 0.01, "max": 8.0, "step": 0.01})},
    ("LATENT",), category="latent", display_name="Upscale Latent By"))


# --- arithmetic ----------------------------------------------------------------------------------

def latent_add(call, samples1, samples2):
    s1 = samples1["samples"]
    return (_with(samples1, s1 + _fit(s1, samples2["samples"])),)


def latent_subtract(call, samples1, samples2):
    s1 = samples1["samples"]
    return (_with(samples1, s1 - _fit(s1, samples2["samples"])),)


def latent_multiply(call, samples, multiplier):
    return (_with(samples, samples["samples"] * multiplier),)


_TWO = {"samples1": ("LATENT", {}), "samples2": ("LATENT", {})}
register(NodeDef("LatentAdd", latent_add, dict(_TWO), ("LATENT",), category="latent/advanced", module=_EXTRAS))
register(NodeDef("LatentSubtract", latent_subtract, dict(_TWO), ("LATENT",), category="latent/advanced",
                 module=_EXTRAS))
register(NodeDef(
    "LatentMultiply", latent_multiply,
    {"samples": ("LATENT", {}), "multiplier": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01})},
    ("LATENT",), category="latent/advanced", module=_EXTRAS))


# --- compositing ---------------------------------------------------------------------------------

def latent_composite(call, samples_to, samples_from, x, y, feather=0):
    x, y, feather = x // 8, y // 8, feather // 8
    to, src = samples_to["samples"], samples_from["samples"]
    _same_channels("samples_from", to, src)
    if src.shape[0] not in (1, to.shape[0]):
        raise InvalidArgument(f"samples_from: a batch of {src.shape[0]} cannot be pasted into a batch of {to.shape[0]}")
    out = to.clone()
    src = src[:, :, :to.shape[2] - y, :to.shape[3] - x]
    h, w = src.shape[2], src.shape[3]
    if feather == 0:
        out[:, :, y:y + h, x:x + w] = src
        return (_with(samples_to, out),)
    # the edges that lie inside the destination fade in over `feather` cells
    mask = torch.ones_like(src)
    for t in range(feather):
        ramp = (1.0 / feather) * (t + 1)
        if y != 0:
            mask[:, :, t:1 + t, :] *= ramp
        if y + h < to.shape[2]:
            mask[:, :, h - 1 - t:h - t, :] *= ramp
        if x != 0:
            mask[:, :, :, t:1 + t] *= ramp
        if x + w < to.shape[3]:
            mask[:, :, :, w - 1 - t:w - t] *= ramp
    out[:, :, y:y + h, x:x + w] = src * mask + out[:, :, y:y + h, x:x + w] * (1 - mask)
    return (_with(samples_to, out),)


_POS8 = _int(0, 0, step=8)
register(NodeDef(
    "LatentComposite", latent_composite,
    {"samples_to": ("LATENT", {}), "samples_from": ("LATENT", {}), "x": _POS8, "y": _POS8, "feather": _POS8},
    ("LATENT",), category="latent", display_name="Latent Composite"))


def latent_composite_masked(call, destination, source, x, y, resize_source, mask=None):
    _same_channels("source", destination["samples"], source["samples"])
    out = composite(destination["samples"].clone(), source["samples"], x, y, mask, 8, resize_source)
    return (_with(destination, out),)


register(NodeDef(
    "LatentCompositeMasked", latent_composite_masked,
    {"destination": ("LATENT", {}), "source": ("LATENT", {}), "x": _POS8, "y": _POS8,
     "resize_source": ("BOOLEAN", {"default": False})},
    ("LATENT",), optional={"mask": ("MASK", {})}, category="latent", module="comfy_extras.nodes_mask"))


def latent_blend(call, samples1, samples2, blend_factor):
    s1, s2 = samples1["samples"], samples2["samples"]
    _same_channels("samples2", s1, s2)
    if s1.shape != s2.shape:
        s2 = upscale(s2, s1.shape[3], s1.shape[2], "bicubic", "center")
    return (_with(samples1, s1 * blend_factor + s2 * (1 - blend_factor)),)


register(NodeDef(
    "LatentBlend", latent_blend,
    {"samples1": ("LATENT", {}), "samples2": ("LATENT", {}),
     "blend_factor": ("FLOAT", {"default": 0.5, "min": 0, "max": 1, "step": 0.01})},
    ("LATENT",), category="_for_testing", display_name="Latent Blend"))


# --- batches -------------------------------------------------------------------------------------

def latent_from_batch(call, samples, batch_index, length):
    s_in = samples["samples"]
    batch_index = min(s_in.shape[0] - 1, batch_index)
    length = min(s_in.shape[0] - batch_index, length)
    out = dict(samples, samples=s_in[batch_index:batch_index + length].clone())
    if "noise_mask" in samples:
        masks = samples["noise_mask"]
        if masks.shape[0] == 1:
            out["noise_mask"] = masks.clone()
        else:
            masks = repeat_to_batch(masks, s_in.shape[0]) if masks.shape[0] < s_in.shape[0] else masks
            out["noise_mask"] = masks[batch_index:batch_index + length].clone()
    # the picked images keep their place in the batch, so KSampler gives them the same noise
    if "batch_index" in samples:
        out["batch_index"] = samples["batch_index"][batch_index:batch_index + length]
    else:
        out["batch_index"] = list(range(batch_index, batch_index + length))
    return (out,)


register(NodeDef(
    "LatentFromBatch", latent_from_batch,
    {"samples": ("LATENT", {}), "batch_index": _int(0, 0, 63), "length": _int(1, 1, 64)},
    ("LATENT",), category="latent/batch", display_name="Latent From Batch"))


def repeat_latent_batch(call, samples, amount):
    s_in = samples["samples"]
    check_size("RepeatLatentBatch", amount * s_in.shape[0], *s_in.shape[1:])
    out = dict(samples, samples=s_in.repeat(amount, 1, 1, 1))
    if "noise_mask" in samples and samples["noise_mask"].shape[0] > 1:
        out["noise_mask"] = samples["noise_mask"].repeat(amount, 1, 1, 1)
    if "batch_index" in samples:
        idx = samples["batch_index"]
        offset = max(idx) - min(idx) + 1
        out["batch_index"] = idx + [i + n * offset for n in range(1, amount) for i in idx]
    return (out,)


register(NodeDef(
    "RepeatLatentBatch", repeat_latent_batch, {"samples": ("LATENT", {}), "amount": _int(1, 1, 64)},
    ("LATENT",), category="latent/batch", display_name="Repeat Latent Batch"))


def latent_batch(call, samples1, samples2):
    s1, s2 = samples1["samples"], samples2["samples"]
    _same_channels("samples2", s1, s2)
    check_size("LatentBatch", s1.shape[0] + s2.shape[0], *s1.shape[1:])
    if s1.shape[1:] != s2.shape[1:]:
        s2 = upscale(s2, s1.shape[3], s1.shape[2], "bilinear", "center")
    # each half keeps its images' noise positions, so both sample as they would alone
    index = (samples1.get("batch_index", list(range(s1.shape[0])))
             + samples2.get("batch_index", list(range(s2.shape[0]))))
    return (dict(samples1, samples=torch.cat((s1, s2)), batch_index=index),)


register(NodeDef("LatentBatch", latent_batch, dict(_TWO), ("LATENT",), category="latent/batch", module=_EXTRAS))


# --- transforms ----------------------------------------------------------------------------------

ROTATIONS = ["none", "90 degrees", "180 degrees", "270 degrees"]


def latent_rotate(call, samples, rotation):
    quarter_turns = ROTATIONS.index(rotation)  # clockwise
    return (_with(samples, torch.rot90(samples["samples"], k=quarter_turns, dims=[3, 2])),)


register(NodeDef(
    "LatentRotate", latent_rotate, {"samples": ("LATENT", {}), "rotation": (ROTATIONS, {})},
    ("LATENT",), category="latent/transform", display_name="Rotate Latent"))


FLIPS = ["x-axis: vertically", "y-axis: horizontally"]


def latent_flip(call, samples, flip_method):
    axis = 2 if flip_method.startswith("x") else 3
    return (_with(samples, torch.flip(samples["samples"], dims=[axis])),)


register(NodeDef(
    "LatentFlip", latent_flip, {"samples": ("LATENT", {}), "flip_method": (FLIPS, {})},
    ("LATENT",), category="latent/transform", display_name="Flip Latent"))


def latent_crop(call, samples, width, height, x, y):
    s = samples["samples"]
    x, y = min(x // 8, s.shape[3] - 8), min(y // 8, s.shape[2] - 8)  # at least 64 pixels stay
    return (_with(samples, s[:, :, y:y + height // 8, x:x + width // 8]),)


register(NodeDef(
    "LatentCrop", latent_crop,
    {"samples": ("LATENT", {}), "width": _int(512, 64, step=8), "height": _int(512, 64, step=8),
     "x": _POS8, "y": _POS8},
    ("LATENT",), category="latent/transform", display_name="Crop Latent"))
