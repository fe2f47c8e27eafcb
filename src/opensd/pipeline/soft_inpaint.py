"""Soft inpainting, A1111's built-in extension: the mask's grey levels are kept, not rounded, so
partly masked areas blend the original with the new content.

Two places change. While sampling, each denoised estimate is blended with the original latent
through the mask raised to a power that shrinks with the noise level (`blend`), and the blend
keeps the vectors' length from fading where both sides mix (`latent_blend`). After decoding, the
original pixels are laid back over the result wherever the result changed little from the
original (`adaptive_masks`, then `composite`), instead of through the mask alone.
The numbers and their order follow A1111's soft_inpainting.py; the settings are in
soft_inpaint_settings.py (no torch there: the CLI builds its flags from them).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps

from .soft_inpaint_settings import SoftInpainting

# --- while sampling ---------------------------------------------------------------------------------

def latent_mask(mask: Image.Image, size: tuple[int, int], device) -> torch.Tensor:
    """(1, 1, h, w): the mask at latent size, grey levels kept (A1111 resizes it with PIL's default
    bicubic filter and, with soft inpainting on, does not round it)."""
    small = mask.convert("L").resize((size[1], size[0]), Image.BICUBIC)
    return torch.from_numpy(np.asarray(small, dtype=np.float32) / 255)[None, None].to(device)


def blend(s: SoftInpainting, init: torch.Tensor, current: torch.Tensor, nmask: torch.Tensor,
          sigma) -> torch.Tensor:
    """One step's blend of the original latent `init` into the denoised `current`; `nmask` is 1
    where the image is repainted. The mask's power, sigma^bias x strength, keeps more of the
    original early (large sigma) on partly masked latents, less as the noise goes."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32).flatten()[0]  # A1111 takes the batch's first
    t = torch.pow(nmask, sigma.to(nmask.device) ** s.schedule_bias * s.preservation_strength)
    return latent_blend(init, current, t, s.transition_contrast_boost)


def latent_blend(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor, boost: float) -> torch.Tensor:
    """Linear interpolation a -> b by t whose vectors (over channels) are then rescaled to the
    interpolated length^boost mean: linear mixing shortens vectors that point apart, which reads as
    lost contrast; a higher boost leans towards the longer of the two."""
    t1 = t[:, :1]
    mixed = a * (1 - t) + b * t
    length = torch.linalg.vector_norm(mixed, dim=1, keepdim=True).double() + 0.00001
    a_len = torch.linalg.vector_norm(a, dim=1, keepdim=True).double().pow(boost) * (1 - t1)
    b_len = torch.linalg.vector_norm(b, dim=1, keepdim=True).double().pow(boost) * t1
    wanted = (a_len + b_len).pow(1 / boost)
    return mixed * (wanted / length).to(mixed.dtype)


# --- after decoding ---------------------------------------------------------------------------------

def adaptive_masks(s: SoftInpainting, nmask: torch.Tensor, init: torch.Tensor, latents: torch.Tensor,
                   width: int, height: int) -> list[Image.Image]:
    """One "L" mask per image at (width, height), 255 where the generated pixels are to be kept:
    where the latent moved from the original by more than the difference threshold (scaled, by the
    mask influence, towards the mask's own grey level), through a soft step of the given contrast."""
    m = nmask[0, 0].float().clamp(0, 1) ** (s.preservation_strength / 2)
    scalar = 0.5 * (1 - s.mask_influence) + (1 - m) * s.mask_influence
    scalar = (scalar / (1.00001 - scalar)).cpu().numpy()
    distances = torch.linalg.vector_norm(latents.float() - init.float(), dim=1).cpu().numpy()
    kernel = _gaussian_kernel()
    masks = []
    for distance in distances:
        d = weighted_histogram_filter(distance, kernel, 0.9, 1.0)  # near the local maximum
        d = weighted_histogram_filter(d, kernel, 0.25, 0.75)       # then the local middle
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            d = d / (s.difference_threshold * scalar)
            keep = 1 - _smootherstep(1 / (1 + d ** s.difference_contrast))
            small = Image.fromarray((255.0 * keep).astype(np.uint8))
        full = small.resize((width, height), Image.LANCZOS)
        masks.append(full.filter(ImageFilter.GaussianBlur(radius=4)))  # no blocky latent edges
    return masks


def composite(image: Image.Image, original: Image.Image, mask: Image.Image,
              crop: tuple[int, int, int, int] | None) -> Image.Image:
    """The original laid over the generated image with opacity 255 - mask, as A1111's overlay is
    composited; with "only masked" the crop and its mask are scaled back into place first (the
    original shows outside it)."""
    if crop is not None:
        x0, y0, x1, y1 = crop
        size = (x1 - x0, y1 - y0)
        placed = Image.new("RGBA", original.size)
        placed.paste(image.resize(size, Image.LANCZOS), (x0, y0))
        full = Image.new("L", original.size, 0)
        full.paste(mask.resize(size, Image.LANCZOS), (x0, y0))
        image, mask = placed, full
    elif original.size != image.size:
        original = original.resize(image.size, Image.LANCZOS)
    overlay = Image.new("RGBa", original.size)
    overlay.paste(original.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    out = image.convert("RGBA")
    out.alpha_composite(overlay.convert("RGBA"))
    return out.convert("RGB")


def _smootherstep(x):
    return x * x * x * (x * (6 * x - 15) + 10)


def _gaussian_kernel(stddev: float = 1.5, radius: int = 2) -> np.ndarray:
    """A (2r+1)^2 Gaussian lowered so it reaches 0 one pixel past the radius, peak kept at 1."""
    zero = math.exp(-((radius + 1.0) ** 2) / (stddev * stddev))
    scale = 1 / (1 - zero)
    size = 2 * radius + 1
    kernel = np.zeros((size, size))
    for y, x in np.ndindex(size, size):
        g = math.exp(-((y - radius) ** 2.0 + (x - radius) ** 2.0) / (stddev * stddev))
        kernel[y, x] = max(0.0, (g - zero) * scale)
    return kernel


def weighted_histogram_filter(img: np.ndarray, kernel: np.ndarray, low: float, high: float,
                              min_width: float = 1.0) -> np.ndarray:
    """Each pixel becomes the weighted mean of the slice [low, high] (fractions of the total
    weight) of its neighbourhood's values sorted, each neighbour weighing its kernel value; the
    slice is widened to `min_width` weight when narrower. A percentile filter with fractional
    weights (0.25..0.75: a weighted median-like mean; 0.9..1: near the maximum).

    All pixels at once: the neighbours are stacked (those off the image weigh 0, which changes
    nothing), sorted stably in A1111's neighbour order, and summed in that order in float64."""
    h, w = img.shape
    c = kernel.shape[0] // 2
    values = np.zeros((kernel.size, h, w))
    weights = np.zeros((kernel.size, h, w))
    for n, (ky, kx) in enumerate(np.ndindex(kernel.shape)):
        dy, dx = ky - c, kx - c
        ys, xs = slice(max(0, -dy), h - max(0, dy)), slice(max(0, -dx), w - max(0, dx))
        values[n, ys, xs] = img[max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)]
        weights[n, ys, xs] = kernel[ky, kx]
    order = np.argsort(values, axis=0, kind="stable")
    values = np.take_along_axis(values, order, 0)
    weights = np.take_along_axis(weights, order, 0)
    tops = np.cumsum(weights, axis=0)
    bottoms = np.concatenate([np.zeros((1, h, w)), tops[:-1]])
    total = tops[-1]
    lo, hi = total * low, total * high
    narrow = hi - lo < min_width
    centre = (lo + hi) / 2
    lo, hi = np.where(narrow, centre - min_width / 2, lo), np.where(narrow, centre + min_width / 2, hi)
    over = narrow & (hi > total)
    lo, hi = np.where(over, total - min_width, lo), np.where(over, total, hi)
    under = narrow & (lo < 0)
    lo, hi = np.where(under, 0.0, lo), np.where(under, min_width, hi)
    value, weight = np.zeros((h, w)), np.zeros((h, w))
    for n in range(kernel.size):
        inside = (lo < tops[n]) & (hi > bottoms[n])
        part = np.where(inside, np.minimum(hi, tops[n]) - np.maximum(lo, bottoms[n]), 0.0)
        value += values[n] * part
        weight += part
    out = np.divide(value, weight, out=np.zeros((h, w)), where=weight != 0)
    return out.astype(img.dtype)
