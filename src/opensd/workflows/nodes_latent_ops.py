"""More latent nodes of ComfyUI's comfy_extras.nodes_latent, with its names, inputs and arithmetic:
LatentInterpolate (directions and lengths of each pixel's channel vector blended apart),
LatentConcat / LatentCut along x or y, LatentCutToBatch (slices along x or y into the batch),
LatentBatchSeedBehavior (which noise each image of a batch draws), and LatentApplyOperation with the LATENT_OPERATION makers LatentOperationTonemapReinhard
and LatentOperationSharpen; LatentApplyOperationCFG runs an operation on each step's guidance (the
positive prediction minus the negative's, the negative added back) before CFG. Video ("t") dimensions are refused: our latents are images."""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from ..errors import InvalidArgument
from .compositing import repeat_to_batch
from .nodes_image_ops import gaussian_kernel
from .nodes_latent import _fit, _with
from .types import MAX_RESOLUTION, NodeDef, check_size, register

_LATENT = "comfy_extras.nodes_latent"


def _pixel_norm(x: torch.Tensor) -> torch.Tensor:
    """The length of each pixel's channel vector, (B, 1, H, W)."""
    return torch.linalg.vector_norm(x, dim=1, keepdim=True)


def latent_interpolate(call, samples1, samples2, ratio):
    """Per pixel: the unit channel vectors blended by ratio and renormalised, times the lengths
    blended by ratio (ComfyUI's norms broadcast over the batch only as a batch of 1 does; each
    image here uses its own)."""
    s1 = samples1["samples"]
    s2 = _fit(s1, samples2["samples"])
    m1, m2 = _pixel_norm(s1), _pixel_norm(s2)
    t = torch.nan_to_num(s1 / m1) * ratio + torch.nan_to_num(s2 / m2) * (1.0 - ratio)
    return (_with(samples1, torch.nan_to_num(t / _pixel_norm(t)) * (m1 * ratio + m2 * (1.0 - ratio))),)


register(NodeDef(
    "LatentInterpolate", latent_interpolate,
    {"samples1": ("LATENT", {}), "samples2": ("LATENT", {}),
     "ratio": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01})},
    ("LATENT",), category="latent/advanced", module=_LATENT))


def _spatial_dim(dim: str) -> int:
    if "t" in dim:
        raise InvalidArgument(f"dim: {dim} is a video latent's time axis; these latents are images (x or y)")
    return -1 if "x" in dim else -2


def latent_concat(call, samples1, samples2, dim):
    s1 = samples1["samples"]
    axis = _spatial_dim(dim)
    check_size("LatentConcat", s1.shape[0], *samples2["samples"].shape[1:])  # samples2 repeated to s1's batch
    s2 = repeat_to_batch(samples2["samples"], s1.shape[0])
    across = -2 if axis == -1 else -1
    if s2.shape[1] != s1.shape[1] or s2.shape[across] != s1.shape[across]:
        raise InvalidArgument(f"samples2: a {tuple(s2.shape[1:])} latent cannot be joined along {dim} to a "
                              f"{tuple(s1.shape[1:])} one")
    parts = (s2, s1) if "-" in dim else (s1, s2)
    return (_with(samples1, torch.cat(parts, dim=axis)),)


register(NodeDef(
    "LatentConcat", latent_concat,
    {"samples1": ("LATENT", {}), "samples2": ("LATENT", {}), "dim": (["x", "-x", "y", "-y", "t", "-t"], {})},
    ("LATENT",), category="latent/advanced", module=_LATENT))


def latent_cut(call, samples, dim, index, amount):
    """`amount` rows or columns from `index` (negative: counted from the end), clipped to the latent."""
    s = samples["samples"]
    axis = _spatial_dim(dim)
    size = s.shape[axis]
    if index >= 0:
        index = min(index, size - 1)
        amount = min(size - index, amount)
    else:
        index = max(index, -size)
        amount = min(-index, amount)
    return (_with(samples, torch.narrow(s, s.ndim + axis, index % size, amount)),)


register(NodeDef(
    "LatentCut", latent_cut,
    {"samples": ("LATENT", {}), "dim": (["x", "y", "t"], {}),
     "index": ("INT", {"default": 0, "min": -MAX_RESOLUTION, "max": MAX_RESOLUTION, "step": 1}),
     "amount": ("INT", {"default": 1, "min": 1, "max": MAX_RESOLUTION, "step": 1})},
    ("LATENT",), category="latent/advanced", module=_LATENT))


def latent_cut_to_batch(call, samples, dim, slice_size):
    """The latent cut along x or y into slices of `slice_size` (the remainder dropped; a side shorter
    than a slice is one slice), stacked into the batch image by image, slice by slice. "t" leaves an
    image latent as it is, as in ComfyUI."""
    s = samples["samples"]
    if "t" in dim:
        return (samples,)
    axis = s.ndim + _spatial_dim(dim)
    moved = s.movedim(axis, 1)
    size = min(slice_size, moved.shape[1])
    moved = moved[:, :moved.shape[1] // size * size]
    return (_with(samples, moved.reshape(-1, size, *moved.shape[2:]).movedim(1, axis)),)


register(NodeDef(
    "LatentCutToBatch", latent_cut_to_batch,
    {"samples": ("LATENT", {}), "dim": (["t", "x", "y"], {}),
     "slice_size": ("INT", {"default": 1, "min": 1, "max": MAX_RESOLUTION, "step": 1})},
    ("LATENT",), category="latent/advanced", module=_LATENT))


def latent_batch_seed_behavior(call, samples, seed_behavior):
    """random: each image its own noise (no batch_index); fixed: every image the first one's."""
    out = dict(samples)
    if seed_behavior == "random":
        out.pop("batch_index", None)
    else:
        out["batch_index"] = [samples.get("batch_index", [0])[0]] * samples["samples"].shape[0]
    return (out,)


register(NodeDef(
    "LatentBatchSeedBehavior", latent_batch_seed_behavior,
    {"samples": ("LATENT", {}), "seed_behavior": (["random", "fixed"], {"default": "fixed"})},
    ("LATENT",), category="latent/advanced", module=_LATENT))


# --- latent operations ---------------------------------------------------------------------------

def latent_apply_operation(call, samples, operation):
    return (_with(samples, operation(samples["samples"])),)


def tonemap_reinhard(multiplier: float):
    """Each pixel's channel-vector length l compressed as l / (1 + l / top) with top the image's
    mean + 5 std of those lengths, times multiplier; directions kept."""
    def op(latent: torch.Tensor) -> torch.Tensor:
        length = _pixel_norm(latent) + 1e-10
        top = (length.std(dim=(1, 2, 3), keepdim=True) * 5 + length.mean(dim=(1, 2, 3), keepdim=True)) * multiplier
        scaled = length / top
        return latent / length * (scaled / (scaled + 1.0) * top)
    return op


def sharpen(radius: int, sigma: float, alpha: float):
    """An unsharp kernel (centre 1 + 10 alpha, the rest -10 alpha times a Gaussian) on each pixel's
    unit channel vector, edges reflected; lengths kept."""
    def op(latent: torch.Tensor) -> torch.Tensor:
        length = _pixel_norm(latent) + 1e-6
        size = 2 * radius + 1
        if min(latent.shape[-2:]) <= radius:
            raise InvalidArgument(f"sharpen_radius: {radius} needs a latent larger than {radius} on each side")
        kernel = gaussian_kernel(size, sigma) * (alpha * -10)
        kernel[radius, radius] += 1.0 - kernel.sum()
        channels = latent.shape[1]
        unit = F.pad(latent / length, [radius] * 4, mode="reflect")
        out = F.conv2d(unit, kernel.to(latent).expand(channels, 1, size, size), groups=channels)
        return length * out
    return op


register(NodeDef(
    "LatentApplyOperation", latent_apply_operation,
    {"samples": ("LATENT", {}), "operation": ("LATENT_OPERATION", {})},
    ("LATENT",), category="latent/advanced/operations", module=_LATENT, experimental=True))


def operation_cfg_function(operation):
    """ComfyUI's pre-CFG function: with exactly two predictions (a zero negative where none was
    evaluated) the operation gets cond - uncond; with more (PerpNeg's), the positive alone."""
    def fn(args) -> list:
        out = list(args.conds_out)
        if len(out) == 2:
            out[0] = operation(out[0] - out[1]) + out[1]
        else:
            out[0] = operation(out[0])
        return out
    return fn


def latent_apply_operation_cfg(call, model, operation):
    return (replace(model, pre_cfg_functions=model.pre_cfg_functions + (operation_cfg_function(operation),)),)


register(NodeDef(
    "LatentApplyOperationCFG", latent_apply_operation_cfg,
    {"model": ("MODEL", {}), "operation": ("LATENT_OPERATION", {})},
    ("MODEL",), category="latent/advanced/operations", module=_LATENT, experimental=True))
register(NodeDef(
    "LatentOperationTonemapReinhard", lambda call, multiplier: (tonemap_reinhard(multiplier),),
    {"multiplier": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01})},
    ("LATENT_OPERATION",), category="latent/advanced/operations", module=_LATENT, experimental=True))
register(NodeDef(
    "LatentOperationSharpen", lambda call, sharpen_radius, sigma, alpha: (sharpen(sharpen_radius, sigma, alpha),),
    {"sharpen_radius": ("INT", {"default": 9, "min": 1, "max": 31, "step": 1}),
     "sigma": ("FLOAT", {"default": 1.0, "min": 0.1, "max": 10.0, "step": 0.1}),
     "alpha": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 5.0, "step": 0.01})},
    ("LATENT_OPERATION",), category="latent/advanced/operations", module=_LATENT, experimental=True))
