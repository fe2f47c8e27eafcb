"""Tensor helpers several node groups share, as ComfyUI computes them: batch repetition and pasting
one (B, C, H, W) tensor into another at an offset through an optional mask."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def repeat_to_batch(x: torch.Tensor, batch: int) -> torch.Tensor:
    """The first `batch` items of x, repeating the whole batch as often as needed."""
    if x.shape[0] > batch:
        return x[:batch]
    if x.shape[0] < batch:
        return x.repeat(math.ceil(batch / x.shape[0]), *([1] * (x.ndim - 1)))[:batch]
    return x


def composite(destination: torch.Tensor, source: torch.Tensor, x: int, y: int, mask: torch.Tensor | None,
              multiplier: int, resize_source: bool) -> torch.Tensor:
    """`source` pasted into `destination` (modified in place and returned) with its top-left corner at
    pixel (x, y); positions are in units of 1/`multiplier` of a tensor cell (8 for latents). The mask
    (any batch, any size) is stretched over the source: 1 takes the source, 0 keeps the destination."""
    if resize_source:
        source = F.interpolate(source, size=tuple(destination.shape[2:]), mode="bilinear")
    source = repeat_to_batch(source.to(destination.device), destination.shape[0])
    x = max(-source.shape[3] * multiplier, min(x, destination.shape[3] * multiplier))
    y = max(-source.shape[2] * multiplier, min(y, destination.shape[2] * multiplier))
    left, top = x // multiplier, y // multiplier
    right, bottom = left + source.shape[3], top + source.shape[2]
    if mask is None:
        mask = torch.ones_like(source)
    else:
        mask = mask.to(destination.device).reshape(-1, 1, mask.shape[-2], mask.shape[-1]).float()
        mask = repeat_to_batch(F.interpolate(mask, size=tuple(source.shape[2:]), mode="bilinear"), source.shape[0])
    visible_w = destination.shape[3] - left + min(0, x)
    visible_h = destination.shape[2] - top + min(0, y)
    mask = mask[:, :, :visible_h, :visible_w]
    pasted = mask * source[:, :, :visible_h, :visible_w]
    destination[:, :, top:bottom, left:right] = pasted + (1 - mask) * destination[:, :, top:bottom, left:right]
    return destination
