"""A1111's img2img arithmetic: how denoising strength cuts the sampling schedule, and the latent mask
inpainting blends with."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image

from . import images as I


def schedule_steps(steps: int, strength: float, fixed: bool = False) -> tuple[int, int]:
    """(the schedule's length, the steps run) of a pass from an image at denoising `strength`, as
    A1111's setup_img2img_steps: int(strength * steps) + 1 steps of a `steps`-step schedule (all of
    it at strength 1); `fixed` (its img2img_fix_steps setting, and always the hires pass, which it
    hands its steps): exactly `steps` steps, the tail of a schedule int(steps / strength) long."""
    s = min(strength, 0.999)
    if fixed and strength > 0:
        return int(steps / s), steps
    return steps, int(s * steps) + 1 if strength < 1 else steps


def steps_run(steps: int, strength: float, fixed: bool = False) -> int:
    """How many steps such a pass samples (progress and work counts)."""
    return schedule_steps(steps, strength, fixed)[1]


def tail(sigmas: torch.Tensor, run: int) -> torch.Tensor:
    """The last `run` steps of a schedule: what a pass from an image samples."""
    return sigmas[len(sigmas) - 1 - run:]


def filled(source: Image.Image, mask: Image.Image | None, fill: str) -> Image.Image:
    """The init image as A1111 holds it after masking.fill, which it runs for every masked-content
    mode but "original": what colour correction matches and inpainting models are conditioned on."""
    return source if mask is None or fill == "original" else I.fill_masked(source, mask)


def latent_mask(mask: Image.Image, size: tuple[int, int], device) -> torch.Tensor:
    """Mask at latent resolution, rounded to 0/1 as A1111 does for the denoising blend."""
    m = F.interpolate(I.mask_to_tensor(mask), size=size, mode="area")
    return m.round().to(device)


def blend_mask(latent_mask: Image.Image, size: tuple[int, int], crop: tuple[int, int, int, int] | None,
               width: int, height: int) -> Image.Image:
    """A1111's latent_mask as the pass uses it: taken as given (its red channel; not blurred,
    inverted or fitted by the resize mode as the mask is) and stretched to the pass's size. With
    only-masked inpainting (`crop`, in the init image's `size`) it is cut to the same region first,
    so it stays over the image (A1111 stretches the whole of it over the crop)."""
    m = latent_mask.convert("RGB").getchannel("R")
    if crop is not None:
        m = m.resize(size, Image.BICUBIC).crop(crop)
    return m.resize((width, height), Image.BICUBIC)  # PIL's default resampling, which A1111 uses
