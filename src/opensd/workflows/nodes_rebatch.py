"""RebatchLatents and RebatchImages (comfy_extras.nodes_rebatch): a list of batches (INPUT_IS_LIST)
regrouped into batches of batch_size (OUTPUT_IS_LIST; executor.py runs the nodes after them once
per batch).

RebatchLatents joins consecutive latents of one size and cuts them into batches of batch_size in
order, a new size starting a new batch. Each image keeps its "batch_index" (given, or its place
among all the images before it), so a sampler draws it the noise it would have had in the whole
batch; a batch's noise mask is kept unless it is all ones (images without one count as ones).
Where ComfyUI meant to resize a mask of another size to the latent's pixels (its resize result is
dropped), ours does, so masks of different sizes can share a batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InvalidArgument
from .types import NodeDef, register

_BATCH = ("INT", {"default": 1, "min": 1, "max": 4096})


def _mask(latent: dict, samples: torch.Tensor) -> torch.Tensor:
    n, _, h, w = samples.shape
    mask = latent.get("noise_mask")
    if mask is None:
        return torch.ones(n, 1, h * 8, w * 8)
    mask = mask.float().reshape(-1, 1, *mask.shape[-2:])
    if mask.shape[-2:] != (h * 8, w * 8):
        mask = F.interpolate(mask, size=(h * 8, w * 8), mode="bilinear")
    if mask.shape[0] < n:
        mask = mask.repeat((n - 1) // mask.shape[0] + 1, 1, 1, 1)
    return mask[:n]


def rebatch_latents(call, latents: list, batch_size: list):
    size = batch_size[0]
    out, runs, processed = [], [], 0
    for latent in latents:
        samples = latent["samples"]
        indices = list(latent.get("batch_index") or range(processed, processed + samples.shape[0]))
        processed += len(indices)
        if not runs or runs[-1][0][0].shape[1:] != samples.shape[1:]:
            runs.append(([], [], []))
        for part, value in zip(runs[-1], (samples, _mask(latent, samples), indices)):
            part.append(value)
    for samples, masks, indices in runs:
        samples, masks = torch.cat(samples), torch.cat(masks)
        indices = [i for part in indices for i in part]
        for start in range(0, samples.shape[0], size):
            batch = {"samples": samples[start:start + size], "batch_index": indices[start:start + size]}
            if masks[start:start + size].mean() != 1.0:
                batch["noise_mask"] = masks[start:start + size]
            out.append(batch)
    return (out,)


register(NodeDef(
    "RebatchLatents", rebatch_latents, {"latents": ("LATENT", {}), "batch_size": _BATCH}, ("LATENT",),
    category="latent/batch", display_name="Rebatch Latents", module="comfy_extras.nodes_rebatch",
    input_is_list=True, output_is_list=(True,)))


def rebatch_images(call, images: list, batch_size: list):
    size = batch_size[0]
    frames = [image[i:i + 1] for image in images for i in range(image.shape[0])]
    out = []
    for start in range(0, len(frames), size):
        batch = frames[start:start + size]
        shapes = sorted({tuple(f.shape[1:]) for f in batch})
        if len(shapes) > 1:
            (h1, w1, c1), (h2, w2, c2) = shapes[:2]
            raise InvalidArgument(f"images: images of {w1}x{h1}x{c1} and {w2}x{h2}x{c2} fall in one batch of "
                                  f"{size} and cannot be joined")
        out.append(torch.cat(batch))
    return (out,)


register(NodeDef(
    "RebatchImages", rebatch_images, {"images": ("IMAGE", {}), "batch_size": _BATCH}, ("IMAGE",),
    category="image/batch", display_name="Rebatch Images", module="comfy_extras.nodes_rebatch",
    input_is_list=True, output_is_list=(True,)))
