"""ControlNet 1.1's inpaint model (control_v11p_sd15_inpaint) driven as sd-webui-controlnet's inpaint
preprocessors drive it. A ControlSpec with a `mask` (white = repaint) and an `inpaint` mode:

* every mode: the hint is the image at the pass's size with the masked pixels (the mask fitted the
  same way, cut at half) set to -1, the value the network was trained to read as "to be painted";
  "resize and fill" counts the padding as masked (outpainting);
* "global" (the extension's inpaint / inpaint_global_harmonious): only that hint;
* "only" (inpaint_only): also, at every model call, the denoised estimate outside the mask is drawn
  to the original image's latent, d + w * (1 - m) * (original - d), w the unit's weight cut to 0..1,
  m the pixel mask max-pooled to the latent grid (a (f + 2)-pixel window every f pixels, one pixel of
  padding: a little wider than the mask); and the decoded image is laid over the original through
  the mask dilated by 7 pixels and box-blurred by 7 (outside it the original's pixels come back);
* "only+lama" (inpaint_only+lama): as "only", its image being the user's with the masked area
  already filled by LaMa (controlnet_lama.py, done by whoever builds the spec); the first pass also
  starts from that image's latent noised to the schedule's last timestep,
  (x0 + sigma_max * noise) / sqrt(1 + sigma_max^2), where plain sampling starts from noise alone.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from ..errors import InvalidArgument
from ..sampling.cfg_pp import Guided, with_uncond
from .preprocessors import control_image, fit_image

MODES = ("global", "only", "only+lama")
RESTORING = ("only", "only+lama")
PASTE_KERNEL = 7  # sd-webui-controlnet's control_net_inpaint_blur_sigma default: dilate, then box blur


def fit_mask(mask: Image.Image, width: int, height: int, mode: str = "just resize") -> torch.Tensor:
    """(1, 1, height, width) of 0/1: the mask fitted like the control image, cut at 128; the
    padding of "resize and fill" is masked (the kept part is fitted, so the pad falls outside it)."""
    keep = fit_image(ImageOps.invert(mask.convert("L")).convert("RGB"), width, height, mode)
    masked = np.asarray(keep)[..., 0] < 128
    return torch.from_numpy(masked.astype(np.float32))[None, None]


def fit_mask_image(mask: Image.Image, width: int, height: int, mode: str = "just resize") -> Image.Image:
    """fit_mask as a black-and-white picture ("L")."""
    return Image.fromarray((fit_mask(mask, width, height, mode)[0, 0].numpy() * 255).astype(np.uint8))


def marked_hint(hint: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The hint (1, 3, H, W) in 0..1 with the masked pixels (mask > 0.5) set to -1."""
    m = (mask > 0.5).to(hint)
    return hint * (1 - m) - m


def is_restoring(spec) -> bool:
    return getattr(spec, "inpaint", None) in RESTORING and spec.mask is not None


def latent_mask(mask: torch.Tensor, down: int) -> torch.Tensor:
    """The pixel mask max-pooled onto the latent grid (kernel down + 2, stride down, padding 1)."""
    return F.max_pool2d(mask, (down + 2, down + 2), stride=(down, down), padding=1)


def restoring(denoise, specs, pipe, width: int, height: int):
    """`denoise` with the inpaint_only restore of each spec that asks for it, at this pass's size."""
    found = []
    for spec in (s for s in specs if is_restoring(s)):
        rgb = control_image(spec.image, width, height, spec.resize_mode).to(pipe.device)
        original = pipe.encode_tensor(rgb * 2 - 1).float()
        m = latent_mask(fit_mask(spec.mask, width, height, spec.resize_mode), pipe.config.vae.downscale)
        found.append((original, m.to(original.device), min(max(float(spec.weight), 0.0), 1.0)))
    if not found:
        return denoise

    def restore(d: torch.Tensor) -> torch.Tensor:
        for original, m, w in found:
            d = d + w * (1 - m.to(d)) * (original.to(d) - d)
        return d

    return Guided(lambda x, sigma: tuple(restore(e) for e in with_uncond(denoise, x, sigma)))


def paste_mask(mask: torch.Tensor, k: int = PASTE_KERNEL) -> torch.Tensor:
    """The mask dilated by a k x k square, then box-blurred by k x k (the edge reflected)."""
    r = k // 2
    grown = F.max_pool2d(mask, k, stride=1, padding=r)
    return F.avg_pool2d(F.pad(grown, (r, r, r, r), mode="reflect"), k, stride=1)


def pasted(image: Image.Image, specs) -> Image.Image:
    """The decoded `image` laid over each restoring spec's image (fitted to its size) outside that
    spec's grown, blurred mask."""
    restoring_specs = [s for s in specs if is_restoring(s)]
    if not restoring_specs:
        return image
    w, h = image.size
    x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    for spec in restoring_specs:
        raw = control_image(spec.image, w, h, spec.resize_mode)
        m = paste_mask(fit_mask(spec.mask, w, h, spec.resize_mode))
        x = (m * x.clamp(0, 1) + (1 - m) * raw).clamp(0, 1)
    out = Image.fromarray((x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    out.info.update(image.info)
    return out


def start_noise(pipe, specs, noise: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """The first pass's initial noise: for an inpaint_only+lama spec, its filled image's latent
    noised to the last timestep (the schedule's largest sigma); else `noise` as it is."""
    lama = [s for s in specs if getattr(s, "inpaint", None) == "only+lama" and s.mask is not None]
    schedule = getattr(pipe, "schedule", None)
    if not lama or not hasattr(schedule, "sigma_max"):
        return noise
    rgb = control_image(lama[-1].image, width, height, lama[-1].resize_mode).to(pipe.device)
    x0 = pipe.encode_tensor(rgb * 2 - 1).float().to(noise)
    if x0.shape != noise.shape:
        return noise
    s = schedule.sigma_max
    return (x0 + s * noise) / math.sqrt(1 + s * s)


def check_inpaint(spec) -> None:
    """The inpaint fields of a ControlSpec: a known mode, a PIL mask."""
    if spec.inpaint is not None and spec.inpaint not in MODES:
        raise InvalidArgument(f"control inpaint: {spec.inpaint!r} is not one of {', '.join(MODES)}")
    if spec.mask is not None and not isinstance(spec.mask, Image.Image):
        raise InvalidArgument("control mask: a PIL image is required (white = repaint)")
    if spec.inpaint in RESTORING and spec.mask is None:
        raise InvalidArgument(f"control inpaint {spec.inpaint!r}: a mask is required (white = repaint)")
