"""Acly's comfyui-tooling-nodes (the ETN_* nodes Krita AI Diffusion emits), with their names,
inputs and results:

* ETN_LoadImageBase64 / ETN_LoadMaskBase64: an image (and its alpha as the mask: 1 = opaque; all
  ones without alpha) or a mask (a grey image, or the red channel of a colour one) sent as base64;
* ETN_LoadImageCache / ETN_SaveImageCache: images through the store of image_cache.py (the client
  PUTs and GETs /api/etn/image/{id}); a saved image is reported as {"source": "http", "id": ...};
* ETN_SendImageWebSocket: each image as a binary websocket frame to the client that queued the
  prompt (event 1, type 2 = PNG or 1 = JPEG, then the encoded image);
* ETN_ApplyMaskToImage: the mask becomes the image's alpha channel;
* ETN_Translate: the text with its `lang:xx` directives; English passes through, other languages
  are refused (the original translates them with Argos Translate, which opensd does not have).

Images coming in are decoded as every user image is (image_read.py: a pixel limit read from the
header before decoding, EXIF orientation, 16-bit scaled to 8 bits); bad data is a one-line error."""
from __future__ import annotations

import io
import re
import time

import numpy as np
import torch
from PIL import Image

from ..errors import InvalidArgument
from ..image_read import b64_bytes, decode_bytes
from .image_cache import IMAGES
from .types import NodeDef, check_size, register

MAX_PIXELS = 4096 * 4096  # per decoded image, as the server's default max_image_pixels
_MODULE = "custom_nodes.comfyui-tooling-nodes"
_CATEGORY = "external_tooling"
_FORMATS = ["PNG", "JPEG"]


def _never_cached(ctx, inputs) -> str:
    return repr(time.time_ns())  # the client wants the frames / a fresh cache entry each run


def _b64_image(text, field: str) -> Image.Image:
    return decode_bytes(b64_bytes(text, field), field, MAX_PIXELS)


def _array(image: Image.Image) -> np.ndarray:
    """(H, W, C) float32 in 0..1 with C = 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA)."""
    if image.mode == "P" or image.mode not in ("L", "LA", "RGB", "RGBA"):
        image = image.convert("RGBA" if "A" in image.getbands() or "transparency" in image.info else "RGB")
    check_size(f"image {image.width}x{image.height}", image.height, image.width, 4)
    a = np.asarray(image, dtype=np.float32) / 255.0
    return a[..., None] if a.ndim == 2 else a


def _image_and_mask(a: np.ndarray, no_alpha: str) -> tuple[torch.Tensor, torch.Tensor]:
    """IMAGE (1, H, W, 3) and MASK (1, H, W): the alpha if there is one, else `no_alpha` ("ones" or
    "red": LoadImageCache's mask of an RGB image is its red channel, of a grey image the grey)."""
    t = torch.from_numpy(np.ascontiguousarray(a))[None]
    c = t.shape[-1]
    rgb = t[..., :1].expand(-1, -1, -1, 3) if c <= 2 else t[..., :3]
    if c in (2, 4):
        mask = t[..., -1]
    elif no_alpha == "ones":
        mask = torch.ones(t.shape[:3])
    else:
        mask = t[..., 0]
    return rgb.contiguous(), mask.contiguous()


def load_image_base64(call, image):
    return _image_and_mask(_array(_b64_image(image, "image")), "ones")


def load_mask_base64(call, mask):
    a = _array(_b64_image(mask, "mask"))
    return (torch.from_numpy(np.ascontiguousarray(a[..., 0]))[None],)


def load_image_cache(call, id):
    IMAGES.check_id(id)
    entry = IMAGES.get(id)
    if entry is None:
        raise InvalidArgument(f"id: no image {id!r} in the cache (PUT it to /api/etn/image/{id} first; "
                              "entries are dropped when the cache is full)")
    return _image_and_mask(_array(decode_bytes(entry[0], f"image {id}", MAX_PIXELS)), "red")


def _encoded(image: torch.Tensor, fmt: str) -> bytes:
    pil = Image.fromarray(np.clip(255.0 * image.float().cpu().numpy(), 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    if fmt == "JPEG":
        pil.convert("RGB").save(buf, format="JPEG", quality=95)
    else:
        pil.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def save_image_cache(call, images, format="PNG"):
    results = []
    for image in images:
        key = IMAGES.add(_encoded(image, format), f"image/{format.lower()}")
        results.append({"source": "http", "id": key, "content-type": f"image/{format.lower()}", "type": "output"})
    return {"ui": {"images": results}, "result": ()}


def send_image_websocket(call, images, format="PNG"):
    results = []
    for step, image in enumerate(images):
        call.progress(step, images.shape[0])
        pil = Image.fromarray(np.clip(255.0 * image.float().cpu().numpy(), 0, 255).astype(np.uint8))
        call.emit("image_png" if format == "PNG" else "image_jpeg", pil)
        results.append({"source": "websocket", "content-type": f"image/{format.lower()}", "type": "output"})
    return {"ui": {"images": results}, "result": ()}


def apply_mask_to_image(call, image, mask):
    out = image if image.ndim == 4 else image[None]
    if out.shape[-1] == 3:
        out = torch.cat([out, torch.ones_like(out[..., :1])], dim=-1)
    else:
        out = out.clone()
    mask = mask.reshape(-1, mask.shape[-2], mask.shape[-1])
    if tuple(mask.shape[-2:]) != tuple(out.shape[1:3]):
        raise InvalidArgument(f"mask: {mask.shape[-1]}x{mask.shape[-2]} does not match the image's "
                              f"{out.shape[2]}x{out.shape[1]}")
    # one mask per image when the batches match, else the first mask for every image (as the original)
    out[..., 3] = mask.to(out) if mask.shape[0] == out.shape[0] else mask[0].to(out)
    return (out,)


_LANG = re.compile(r"lang:\w\w")


def translate_text(text: str) -> str:
    """The text of every `lang:xx` chunk, stripped and joined by spaces (empty chunks dropped), as
    the original joins its translations; a chunk in any language but English is refused."""
    chunks, lang, last = [], "en", 0
    for m in _LANG.finditer(text):
        chunks.append((text[last:m.start()].strip(), lang))
        last, lang = m.end(), m.group(0)[5:]
    chunks.append((text[last:].strip(), lang))
    for chunk, code in chunks:
        if chunk and code != "en":
            raise InvalidArgument(f"text: cannot translate from {code!r}: opensd has no translation models; "
                                  "write the prompt in English")
    return " ".join(c for c, _ in chunks if c)


def translate(call, text):
    return (translate_text(text),)


_IMAGE_B64 = ("STRING", {"multiline": False})
register(NodeDef("ETN_LoadImageBase64", load_image_base64, {"image": _IMAGE_B64}, ("IMAGE", "MASK"),
                 output_names=("image", "mask"), category=_CATEGORY, display_name="Load Image (Base64)",
                 module=_MODULE))
register(NodeDef("ETN_LoadMaskBase64", load_mask_base64, {"mask": _IMAGE_B64}, ("MASK",), output_names=("mask",),
                 category=_CATEGORY, display_name="Load Mask (Base64)", module=_MODULE))
register(NodeDef("ETN_LoadImageCache", load_image_cache, {"id": ("STRING", {"multiline": False})},
                 ("IMAGE", "MASK"), output_names=("image", "mask"), category=_CATEGORY,
                 display_name="Load Image from Cache", module=_MODULE))
_SAVE_INPUTS = {"images": ("IMAGE", {}), "format": (_FORMATS, {"default": "PNG"})}
register(NodeDef("ETN_SaveImageCache", save_image_cache, _SAVE_INPUTS, category=_CATEGORY,
                 display_name="Save Image to Cache", output_node=True, module=_MODULE, fingerprint=_never_cached))
register(NodeDef("ETN_SendImageWebSocket", send_image_websocket, _SAVE_INPUTS, category=_CATEGORY,
                 display_name="Send Image (WebSocket)", output_node=True, module=_MODULE,
                 fingerprint=_never_cached))
register(NodeDef("ETN_ApplyMaskToImage", apply_mask_to_image, {"image": ("IMAGE", {}), "mask": ("MASK", {})},
                 ("IMAGE",), output_names=("masked",), category=_CATEGORY, display_name="Apply Mask to Image",
                 module=_MODULE))
register(NodeDef("ETN_Translate", translate, {"text": ("STRING", {"multiline": True})}, ("STRING",),
                 category=_CATEGORY, display_name="Translate Text", module=_MODULE))
