"""The condition image of Qwen-Image-Edit as diffusers' QwenImageEditPipeline fits it: scaled to
about 1024x1024 pixels in area with its aspect ratio kept, each side rounded to a multiple of 32
(`edit_size`, the pipeline's calculate_dimensions), resized with Lanczos (its VaeImageProcessor).
That one image is both what the VAE encodes into the reference latent and what the vision encoder
sees (which resizes it again to whole 28-pixel blocks, text/qwen_vl_image). QwenImageEditPlusPipeline
(Edit-2509/2511) fits each reference twice from the original, alike: for the VAE at EDIT_AREA, for the
vision encoder at CONDITION_AREA."""
from __future__ import annotations

import math

from PIL import Image

EDIT_AREA = 1024 * 1024
CONDITION_AREA = 384 * 384  # Edit Plus: the vision encoder's image


def edit_size(width: int, height: int, area: int = EDIT_AREA) -> tuple[int, int]:
    """(width, height) of about `area` pixels with the ratio width / height, multiples of 32 (at least
    32: diffusers' rounds a very thin image's short side to 0 and fails in the resize; the vision
    encoder refuses such a ratio with its own message, text/qwen_vl_image.smart_resize)."""
    ratio = width / height
    w = math.sqrt(area * ratio)
    return max(32, round(w / 32) * 32), max(32, round(w / ratio / 32) * 32)


def fit_edit_image(image: Image.Image, area: int = EDIT_AREA) -> Image.Image:
    """The RGB image at edit_size, Lanczos-resized (unchanged when already that size)."""
    image = image.convert("RGB")
    size = edit_size(image.width, image.height, area)
    return image if image.size == size else image.resize(size, resample=Image.LANCZOS)
