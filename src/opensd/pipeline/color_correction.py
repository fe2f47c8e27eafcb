"""A1111's img2img colour correction (img2img_color_correction): each result's colours are matched
to the init image's, histogram by histogram in OpenCV's 8-bit LAB, and the result's own luminosity
is then put back (a "luminosity" layer blend), so only hue and saturation move.

The steps are A1111's (modules/processing.py apply_color_correction): cv2 RGB->LAB, scikit-image's
match_histograms per channel (uint8 path: bincount CDFs, np.interp, truncated to uint8), cv2
LAB->RGB, then blendmodes' LUMINOSITY blend of the generated image over the matched one. The two
libraries are not dependencies here; their arithmetic is redone below in the same order, so the
result is the same to the bit.
"""
from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

# blendmodes' luminosity weights (Rec. 601)
_LUMA = (0.299, 0.587, 0.114)


def correction_target(image: Image.Image) -> np.ndarray:
    """The init image in OpenCV's 8-bit LAB: what results are matched to."""
    return cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2LAB)


def correct(target: np.ndarray, image: Image.Image) -> Image.Image:
    """`image` with its LAB histograms matched to `target`'s, keeping its own luminosity."""
    rgb = np.asarray(image.convert("RGB"))
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)
    matched = np.empty_like(lab)
    for c in range(3):
        matched[..., c] = match_channel(lab[..., c], target[..., c])  # float -> uint8 truncates
    corrected = cv2.cvtColor(matched, cv2.COLOR_LAB2RGB)
    return Image.fromarray(_luminosity_blend(corrected, rgb), "RGB")


def match_channel(source: np.ndarray, template: np.ndarray) -> np.ndarray:
    """uint8 `source` remapped so that its cumulative histogram follows `template`'s (float64)."""
    src_counts = np.bincount(source.reshape(-1))
    tmpl_counts = np.bincount(template.reshape(-1))
    tmpl_values = np.nonzero(tmpl_counts)[0]  # only the levels the template has
    src_quantiles = np.cumsum(src_counts) / source.size
    tmpl_quantiles = np.cumsum(tmpl_counts[tmpl_values]) / template.size
    return np.interp(src_quantiles, tmpl_quantiles, tmpl_values)[source]


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * _LUMA[0] + rgb[..., 1] * _LUMA[1] + rgb[..., 2] * _LUMA[2]


def _luminosity_blend(background: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """uint8 RGB: `background`'s colour at `foreground`'s luminosity (W3C SetLum with its ClipColor,
    as blendmodes 2022, A1111's pinned version, computes it for two opaque layers: / 255 in, * 255
    truncated out; its 2024 releases round instead)."""
    colours = background / 255
    colours = colours + (_luma(foreground / 255) - _luma(colours))[..., None]
    lum = _luma(colours)[..., None]
    low = colours.min(axis=2, keepdims=True)
    high = colours.max(axis=2, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        colours = np.where(low < 0, lum + (colours - lum) * lum / (lum - low), colours)
        # the upper clip sees the lower one's result but the max from before it, as blendmodes does
        colours = np.where(high > 1, lum + (colours - lum) * (1 - lum) / (high - lum), colours)
    return (np.clip(colours, 0, 1) * 255).astype(np.uint8)
