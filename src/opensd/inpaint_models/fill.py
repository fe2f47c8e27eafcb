"""An inpaint model's fill over an image and mask, as comfyui-inpaint-nodes' INPAINT_InpaintWithModel
does it, image by image:

* the image and mask made square by padding the short side at the bottom / right (reflected, as
  far as the image reaches, then zeros), then resized to the model's working size (LaMa 256, MAT
  512) by nearest-exact;
* the mask made binary (>= 0.99 fills), the global RNG seeded with `seed` (kept to this call), the
  model run; optionally its output upscaled by an upscale model (512-px tiles, 32 px overlap);
* the result resized back bilinearly, the padding cut off, and laid over the input only where
  the original mask is >= 0.99: every other pixel is the input's, unchanged.

A mask batch of another size than the image batch uses its first mask for every image."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..errors import InvalidArgument
from ..upscale import tiled_scale

FILL_THRESHOLD = 0.99
_SIZES = {"LaMa": 256, "MAT": 512}
UPSCALE_TILE, UPSCALE_OVERLAP = 512, 32


def working_size(model) -> int:
    arch = getattr(getattr(model, "architecture", None), "id", None)
    if arch not in _SIZES:
        raise InvalidArgument(f"inpaint_model: a {arch or type(model).__name__} model is not an inpaint model "
                              "(LaMa or MAT)")
    return _SIZES[arch]


def _binary(mask: torch.Tensor) -> torch.Tensor:
    return (mask >= FILL_THRESHOLD).to(mask.dtype)


def _pad_reflect_once(x: torch.Tensor, right: int, bottom: int) -> torch.Tensor:
    """Reflect padding where the image is large enough for it (torch's reflect reaches at most
    size - 1 pixels), zeros beyond."""
    h, w = x.shape[-2:]
    first = (min(right, w - 1), min(bottom, h - 1))
    x = F.pad(x, (0, first[0], 0, first[1]), mode="reflect") if any(first) else x
    rest = (right - first[0], bottom - first[1])
    return F.pad(x, (0, rest[0], 0, rest[1])) if any(rest) else x


def _to_square(image, mask, size: int):
    h, w = image.shape[-2:]
    if h == w == size:
        return image, mask, (0, 0, w)
    side = max(h, w)
    pad_w, pad_h = side - w, side - h
    image, mask = _pad_reflect_once(image, pad_w, pad_h), _pad_reflect_once(mask, pad_w, pad_h)
    if side != size:
        image = F.interpolate(image, size=size, mode="nearest-exact")
        mask = F.interpolate(mask, size=size, mode="nearest-exact")
    return image, mask, (pad_w, pad_h, side)


def _from_square(image, square: tuple[int, int, int]):
    pad_w, pad_h, side = square
    if image.shape[-2:] != (side, side):
        image = F.interpolate(image, size=side, mode="bilinear")
    return image[..., :side - pad_h, :side - pad_w]


def _model_device(model) -> torch.device:
    return next(model.model.parameters()).device


def _seeded_run(model, image, mask, seed: int) -> torch.Tensor:
    device = _model_device(model)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        with torch.inference_mode():
            return model(image.to(device), mask.to(device))


def _upscale(upscaler, image: torch.Tensor) -> torch.Tensor:
    device = next(upscaler.model.parameters()).device
    with torch.inference_mode():
        out = tiled_scale(image.to(device), upscaler, upscaler.scale, UPSCALE_TILE, UPSCALE_OVERLAP)
    return out.clamp(0, 1)


def inpaint_with_model(model, image: torch.Tensor, mask: torch.Tensor, seed: int = 0, upscaler=None,
                       progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """`image` (B, H, W, 3) in [0, 1] and `mask` (B | 1, H, W) or (H, W) -> the filled (B, H, W, 3)."""
    size = working_size(model)
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[-1] != 3:
        raise InvalidArgument(f"image: an RGB image batch (B, H, W, 3) is needed, not {tuple(image.shape)}")
    masks = mask.reshape(-1, 1, *mask.shape[-2:]).float() if mask.ndim in (2, 3) else None
    if masks is None:
        raise InvalidArgument(f"mask: a mask (H, W) or batch (B, H, W) is needed, not {tuple(mask.shape)}")
    if masks.shape[-2:] != image.shape[1:3]:
        raise InvalidArgument(f"mask: {masks.shape[-1]}x{masks.shape[-2]} does not match the image's "
                              f"{image.shape[2]}x{image.shape[1]}")
    pixels = image.movedim(-1, 1).float()
    if masks.shape[0] != pixels.shape[0]:
        masks = masks[:1].expand(pixels.shape[0], -1, -1, -1)
    out = []
    for i in range(pixels.shape[0]):
        work, work_mask, square = _to_square(pixels[i:i + 1], masks[i:i + 1], size)
        filled = _seeded_run(model, work, _binary(work_mask), seed)
        if upscaler is not None:
            filled = _upscale(upscaler, filled)
        filled = _from_square(filled.float().cpu(), square)
        out.append(pixels[i:i + 1] + (filled - pixels[i:i + 1]) * _binary(masks[i:i + 1]))
        if progress is not None:
            progress(i + 1, pixels.shape[0])
    return torch.cat(out).movedim(1, -1)
