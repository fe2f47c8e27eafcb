"""The image and mask operations of Acly's comfyui-inpaint-nodes and comfyui_controlnet_aux's
InpaintPreprocessor that Krita AI Diffusion's inpaint graphs use, with their names and inputs:

* INPAINT_ExpandMask / INPAINT_ShrinkMask: binary dilation / erosion by a radius, then a blur
  (gaussian, box or linear, size made odd); INPAINT_StabilizeMask: values above 1 - epsilon to 1;
* INPAINT_MaskedFill: the (10 px eroded) fully masked area filled with neutral grey, or by OpenCV's
  Telea / Navier-Stokes inpainting, optionally fading out over `falloff` pixels;
* INPAINT_MaskedBlur: the masked area replaced by a Gaussian blur of the image;
* INPAINT_DenoiseToCompositingMask: (mask - offset) / (threshold - offset), clamped;
* INPAINT_ColorMatch: the target's colours moved toward the reference's (opensd's own rule, as
  the original's source was not at hand: per-channel mean and standard deviation over the pixels
  outside `exclude_mask`, blended by `strength`);
* InpaintPreprocessor: the image with masked pixels (mask > 0.5 after a bilinear resize) set to -1,
  the ControlNet inpaint model's marker (0 with black_pixel_for_xinsir_cn);
(INPAINT_LoadInpaintModel and INPAINT_InpaintWithModel, which run LaMa / MAT, are
nodes_inpaint_models.)"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InvalidArgument
from . import mask_filters as mf
from .types import Choices, NodeDef, register

_MODULE = "custom_nodes.comfyui-inpaint-nodes"


def _mask4(mask: torch.Tensor) -> torch.Tensor:
    return mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).float()


def _image4(image: torch.Tensor) -> torch.Tensor:
    return (image if image.ndim == 4 else image[None]).movedim(-1, 1)


def _same_size(image: torch.Tensor, mask: torch.Tensor) -> None:
    if tuple(image.shape[-2:]) != tuple(mask.shape[-2:]):
        raise InvalidArgument(f"mask: {mask.shape[-1]}x{mask.shape[-2]} does not match the image's "
                              f"{image.shape[-1]}x{image.shape[-2]}")


def _morph_then_blur(morph):
    """A node fn: `morph` (dilate or erode) by the radius, then the blur (size made odd)."""
    def node(call, mask, radius, blur, blur_type="gaussian"):
        m = _mask4(mask)
        if radius > 0:
            m = morph(m, radius)
        if blur > 0:
            m = mf.blur(m, mf.make_odd(blur), blur_type)
        return (m[:, 0],)
    return node


def expand_mask(call, mask, grow, blur, blur_type="gaussian"):
    return _morph_then_blur(mf.dilate)(call, mask, grow, blur, blur_type)


def shrink_mask(call, mask, shrink, blur, blur_type="gaussian"):
    return _morph_then_blur(mf.erode)(call, mask, shrink, blur, blur_type)


def stabilize_mask(call, mask, epsilon):
    m = _mask4(mask)
    return (torch.where(m > 1.0 - epsilon, torch.ones_like(m), m)[:, 0],)


def _falloff_alpha(alpha: torch.Tensor, falloff: int) -> torch.Tensor:
    if falloff > 0:
        alpha = alpha * mf.gaussian_blur(mf.erode(alpha, falloff), falloff)
    return alpha


def masked_fill(call, image, mask, fill, falloff):
    img = _image4(image).clone()
    m = _mask4(mask)
    _same_size(img, m)
    if m.shape[0] not in (1, img.shape[0]):
        raise InvalidArgument(f"mask: a batch of {m.shape[0]} for {img.shape[0]} images")
    alpha = _falloff_alpha(mf.erode(mf.floor(m), 10), mf.make_odd(falloff)).expand(img.shape[0], -1, -1, -1)
    if fill == "neutral":
        img = (img - 0.5) * (1.0 - alpha) + 0.5
    else:
        import cv2

        method = cv2.INPAINT_TELEA if fill == "telea" else cv2.INPAINT_NS
        for i in range(img.shape[0]):
            a = alpha[i, 0].cpu().numpy()
            pixels = img[i].movedim(0, -1).cpu().numpy()
            filled = cv2.inpaint((255.0 * pixels).astype(np.uint8), (255.0 * a).astype(np.uint8), 3, method)
            filled = filled.astype(np.float32) / 255.0
            img[i] = torch.from_numpy(pixels * (1.0 - a[..., None]) + filled * a[..., None]).movedim(-1, 0)
    return (img.movedim(1, -1),)


def masked_blur(call, image, mask, blur, falloff):
    blur = mf.make_odd(blur)
    falloff = min(mf.make_odd(falloff), blur - 2)
    img = _image4(image)
    m = _mask4(mask)
    _same_size(img, m)
    alpha = _falloff_alpha(mf.floor(m), falloff)
    blurred = mf.gaussian_blur(img, blur)
    return ((img + (blurred - img) * alpha).movedim(1, -1),)


def denoise_to_compositing_mask(call, mask, offset, threshold):
    if not 0.0 <= offset < threshold <= 1.0:
        raise InvalidArgument(f"threshold: {threshold} must be above offset {offset}")
    return (((mask - offset) / (threshold - offset)).clamp(0, 1),)


def _stats(pixels: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image, per-channel mean and standard deviation of (B, C, H, W) `pixels` where `keep`
    (B|1, 1, H, W) is set."""
    w = keep.expand(pixels.shape[0], 1, -1, -1)
    n = w.sum(dim=(2, 3), keepdim=True).clamp_min(1.0)
    mean = (pixels * w).sum(dim=(2, 3), keepdim=True) / n
    var = (((pixels - mean) ** 2) * w).sum(dim=(2, 3), keepdim=True) / n
    return mean, var.sqrt()


def color_match(call, target, reference, strength, exclude_mask=None):
    t, r = _image4(target).float(), _image4(reference).float()
    if t.shape[1] != r.shape[1] or r.shape[0] not in (1, t.shape[0]):
        raise InvalidArgument(f"reference: {r.shape[0]} image(s) of {r.shape[1]} channels for {t.shape[0]} target "
                              f"image(s) of {t.shape[1]}")

    def keep(image):
        if exclude_mask is None:
            return torch.ones(1, 1, *image.shape[-2:])
        m = _mask4(exclude_mask)
        if tuple(m.shape[-2:]) != tuple(image.shape[-2:]):
            m = F.interpolate(m, size=image.shape[-2:], mode="bilinear")
        return (m < 0.5).float()

    mean_t, std_t = _stats(t, keep(t))
    mean_r, std_r = _stats(r, keep(r))
    matched = (t - mean_t) / std_t.clamp_min(1e-6) * std_r + mean_r
    out = (t + (matched - t) * float(strength)).clamp(0, 1)
    return (out.movedim(1, -1),)


def inpaint_preprocessor(call, image, mask, black_pixel_for_xinsir_cn=False):
    m = F.interpolate(_mask4(mask), size=tuple(image.shape[1:3]), mode="bilinear").movedim(1, -1)
    m = m.expand(image.shape[0] if m.shape[0] == 1 else -1, -1, -1, 3)
    if m.shape[0] != image.shape[0]:
        raise InvalidArgument(f"mask: a batch of {m.shape[0]} for {image.shape[0]} images")
    out = image.clone()
    out[m > 0.5] = 0.0 if black_pixel_for_xinsir_cn else -1.0
    return (out,)


_INT = ("INT", {"default": 16, "min": 0, "max": 8096, "step": 1})
_BLUR = ("INT", {"default": 7, "min": 0, "max": 8096, "step": 1})
_KIND = (mf.BLUR_KINDS, {"default": "gaussian"})
_FALLOFF = ("INT", {"default": 0, "min": 0, "max": 8191, "step": 1})
_MASK = ("MASK", {})
_IMAGE = ("IMAGE", {})


def _node(name, fn, required, outputs=("MASK",), names=("mask",), optional=None, display="", **kw):
    register(NodeDef(name, fn, required, outputs, output_names=names, optional=optional or {},
                     category=kw.pop("category", "inpaint"), display_name=display, module=kw.pop("module", _MODULE),
                     **kw))


_node("INPAINT_ExpandMask", expand_mask, {"mask": _MASK, "grow": _INT, "blur": _BLUR, "blur_type": _KIND},
      display="Expand Mask")
_node("INPAINT_ShrinkMask", shrink_mask, {"mask": _MASK, "shrink": _INT, "blur": _BLUR, "blur_type": _KIND},
      display="Shrink Mask")
_node("INPAINT_StabilizeMask", stabilize_mask,
      {"mask": _MASK, "epsilon": ("FLOAT", {"default": 0.01, "min": 0.0, "max": 1.0, "step": 0.0001})},
      display="Stabilize Mask")
_node("INPAINT_MaskedFill", masked_fill,
      {"image": _IMAGE, "mask": _MASK, "fill": (["neutral", "telea", "navier-stokes"], {}), "falloff": _FALLOFF},
      ("IMAGE",), ("image",), display="Fill Masked Area")
_node("INPAINT_MaskedBlur", masked_blur,
      {"image": _IMAGE, "mask": _MASK, "blur": ("INT", {"default": 255, "min": 3, "max": 8191, "step": 1}),
       "falloff": _FALLOFF}, ("IMAGE",), ("image",), display="Blur Masked Area")
_node("INPAINT_DenoiseToCompositingMask", denoise_to_compositing_mask,
      {"mask": _MASK, "offset": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 1.0, "step": 0.01}),
       "threshold": ("FLOAT", {"default": 0.2, "min": 0.01, "max": 1.0, "step": 0.01})},
      display="Denoise to Compositing Mask")
_node("INPAINT_ColorMatch", color_match,
      {"target": _IMAGE, "reference": _IMAGE,
       "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01})},
      ("IMAGE",), ("image",), optional={"exclude_mask": _MASK}, display="Color Match")
_node("InpaintPreprocessor", inpaint_preprocessor, {"image": _IMAGE, "mask": _MASK}, ("IMAGE",), ("IMAGE",),
      optional={"black_pixel_for_xinsir_cn": ("BOOLEAN", {"default": False})}, display="Inpaint Preprocessor",
      category="ControlNet Preprocessors/others", module="custom_nodes.comfyui_controlnet_aux")
