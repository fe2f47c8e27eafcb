"""sd-webui-controlnet's inpaint units through the A1111 API: modules ``inpaint`` (shown as
inpaint_global_harmonious), ``inpaint_only`` and ``inpaint_only+lama``, for ControlNet 1.1's inpaint
model (control_v11p_sd15_inpaint). What each does is adapters/controlnet_inpaint.py's.

The mask (white = repaint), as the extension takes it: the unit's ``mask`` (or its alias
``mask_image``, not both), ``image: {"image": .., "mask": ..}`` or ``image: [image, mask]``; its
first channel counts and it must have the image's size. A unit without an image in img2img uses the
init image and the request's inpaint ``mask``, inverted and blurred as the img2img mask is. As in the
extension, ``inpaint_only`` in an img2img request that has its own inpaint mask falls back to
``inpaint`` (A1111's inpainting already keeps the rest of the image). ``inpaint_only`` and
``inpaint_only+lama`` need a mask marking some pixel; ``inpaint`` runs without one (the whole image
is the hint). ``inpaint_only+lama`` needs LaMa's file (adapters/controlnet_lama.py): without it the
request is refused naming it."""
from __future__ import annotations

import numpy as np
from PIL import Image

from ..errors import InvalidArgument
from . import images_io
from .a1111_units import image_field

# extension module -> our mode (adapters/controlnet_inpaint.py)
MODES = {"inpaint": "global", "inpaint_only": "only", "inpaint_only+lama": "only+lama"}
LABELS = {"inpaint": "inpaint_global_harmonious"}  # the extension's labels (alias_names)
NEED_MASK = ("inpaint_only", "inpaint_only+lama")


def is_inpaint(module: str) -> bool:
    return module in MODES


def mask_field(unit: dict, field: str):
    """(base64 mask or None, the field it came from)."""
    image = unit.get("image", unit.get("input_image"))
    given = [(k, unit.get(k)) for k in ("mask", "mask_image") if unit.get(k)]
    if len(given) > 1:
        raise InvalidArgument(f"{field}.mask_image: give mask or mask_image, not both (mask_image is mask's alias)")
    if isinstance(image, dict) and image.get("mask"):
        given.append(("image.mask", image["mask"]))
    if isinstance(image, (list, tuple)) and len(image) == 2 and image[1]:
        given.append(("image[1]", image[1]))
    if not given:
        return None, f"{field}.mask"
    key, value = given[0]
    return value, f"{field}.{key}"


def _decoded_mask(b64, field: str, max_pixels: int) -> Image.Image:
    mask = images_io.decode_b64(b64, field, max_pixels)
    return mask.convert("RGB").getchannel(0)  # the extension reads the mask's first channel


def plan(unit: dict, module: str, field: str, max_pixels: int, img2img: bool, request_mask: bool,
         folders) -> dict:
    """Check an inpaint unit's mask (and LaMa's file) when the request comes; what build needs."""
    b64, where = mask_field(unit, field)
    image = image_field(unit)
    if b64 is not None and image is None:
        raise InvalidArgument(f"{where}: a unit mask needs the unit's image")
    source = "unit" if b64 is not None else "img2img" if img2img and image is None and request_mask else None
    if source == "unit":
        mask = _decoded_mask(b64, where, max_pixels)
        size = images_io.decode_b64(image, f"{field}.image", max_pixels).size
        if mask.size != size:
            raise InvalidArgument(f"{where}: {mask.width}x{mask.height} does not match the image's {size[0]}x{size[1]}")
        if module in NEED_MASK and not np.asarray(mask).max() > 127:
            raise InvalidArgument(f"{where}: the mask marks no pixel (white = repaint); {module} repaints only "
                                  "what it marks")
    if module == "inpaint_only" and img2img and request_mask:
        module = "inpaint"  # the extension's fallback: A1111's own inpainting keeps the rest
    if module in NEED_MASK and source is None:
        raise InvalidArgument(f"{field}.mask: {module} needs a mask (white = repaint): the unit's mask or "
                              "mask_image, image {\"image\", \"mask\"}, or an img2img request's inpaint mask")
    weights = None
    if module == "inpaint_only+lama":
        from ..adapters.controlnet_lama import lama_file
        try:
            weights = str(lama_file(folders))
        except InvalidArgument as e:
            raise InvalidArgument(f"{field}.module: {e}") from None
    return {"module": module, "mask_source": source, "weights": weights}


def mask_of(unit: dict, u: dict, field: str, max_pixels: int, request_mask, req, size) -> Image.Image | None:
    """The planned unit's mask: its own, or the img2img mask prepared as the img2img run prepares it."""
    if u.get("mask_source") == "unit":
        return _decoded_mask(mask_field(unit, field)[0], f"{field}.mask", max_pixels)
    if u.get("mask_source") == "img2img" and request_mask is not None:
        from ..pipeline.images import prepare_mask
        blur = req.mask_blur if req.mask_blur is not None else req.mask_blur_x
        blur_y = req.mask_blur if req.mask_blur is not None else req.mask_blur_y
        return prepare_mask(request_mask, size, blur, bool(req.inpainting_mask_invert), blur_y)
    return None


def preprocess(image: Image.Image, mask: Image.Image | None, module: str, weights, resize_mode: str,
               width: int, height: int) -> tuple[Image.Image, Image.Image | None, str]:
    """(control image, mask, resize mode) of an inpaint unit: the image as it is, or LaMa's fill of it
    for inpaint_only+lama (with "resize and fill", first fitted to the output with its padding
    masked, so that LaMa paints the new border)."""
    image = image.convert("RGB")
    if module != "inpaint_only+lama" or mask is None:
        return image, mask, resize_mode
    from ..adapters.controlnet_lama import lama_fill, load_lama

    if resize_mode == "resize and fill":
        from ..adapters.controlnet_inpaint import fit_mask_image
        from ..adapters.preprocessors import fit_image
        image, mask = fit_image(image, width, height, resize_mode), fit_mask_image(mask, width, height, resize_mode)
        resize_mode = "just resize"
    return lama_fill(load_lama(weights), image, mask), mask, resize_mode


def detect(module: str, images: list[str], masks: list[str], folders, max_pixels: int) -> list[str]:
    """/controlnet/detect for an inpaint module: `masks`, one per image, are required (the extension's
    rule); each answer is LaMa's fill for inpaint_only+lama, else the image with its masked part half
    transparent (alpha 255 - mask / 2), the pictures the extension shows."""
    if len(masks) != len(images):
        raise InvalidArgument(f"controlnet_masks: {module} needs one mask per image ({len(images)}), got {len(masks)}")
    weights = None
    if module == "inpaint_only+lama":
        from ..adapters.controlnet_lama import lama_file
        weights = str(lama_file(folders))
    out = []
    for k, (b64, mask_b64) in enumerate(zip(images, masks)):
        image = images_io.decode_b64(b64, f"controlnet_input_images[{k}]", max_pixels).convert("RGB")
        mask = _decoded_mask(mask_b64, f"controlnet_masks[{k}]", max_pixels)
        if mask.size != image.size:
            raise InvalidArgument(f"controlnet_masks[{k}]: {mask.width}x{mask.height} does not match the image's "
                                  f"{image.width}x{image.height}")
        if weights is not None:
            shown = preprocess(image, mask, module, weights, "just resize", *image.size)[0]
        else:
            alpha = 255 - np.asarray(mask, dtype=np.uint8) // 2
            shown = Image.fromarray(np.dstack([np.asarray(image), alpha.astype(np.uint8)]), "RGBA")
        out.append(images_io.b64(images_io.png_bytes(shown)))
    return out
