"""Output nodes beyond SaveImage/PreviewImage, with ComfyUI's names and behaviour:

* SaveImageWebsocket sends each image, full size as PNG, to the client that queued the prompt
  over its websocket (a binary preview frame, image type 2 = PNG) and writes no file: the
  ``("image_png", PIL image)`` event, which the server turns into that frame;
* SaveAnimatedWEBP writes the batch as one animated WebP, with the prompt and the workflow in
  its EXIF (tags 0x0110 "prompt:{json}", then 0x010F, 0x010E, ... "{key}:{json}");
* SaveAnimatedPNG writes it as one APNG, the prompt and the workflow in "comf" chunks after the
  image data ("{key}\0{json}", ComfyUI's own chunk type);
* MaskPreview previews a mask as a grey image, as PreviewImage does."""
from __future__ import annotations

import io
import json
import time

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from .nodes_image import SAVE_HIDDEN, check_prefix, preview_image, save_path, write_numbered
from .types import NodeDef, register


def _pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(np.clip(255.0 * image.float().cpu().numpy(), 0, 255).astype(np.uint8))


def save_image_websocket(call, images):
    for step, image in enumerate(images):
        call.progress(step, images.shape[0])
        call.emit("image_png", _pil(image))
    return {"result": ()}


register(NodeDef(
    "SaveImageWebsocket", save_image_websocket, {"images": ("IMAGE", {})}, category="api/image", output_node=True,
    module="custom_nodes.websocket_image_save",
    fingerprint=lambda ctx, inputs: repr(time.time_ns())))  # never from the cache: the client wants the frames


WEBP_METHODS = {"default": 4, "fastest": 0, "slowest": 6}


def save_animated_webp(call, images, filename_prefix, fps, lossless, quality, method, prompt=None,
                       extra_pnginfo=None):
    target, sub, name, counter = save_path(call.ctx.outputs_dir, filename_prefix, images.shape[2], images.shape[1])
    frames = [_pil(image) for image in images]
    exif = frames[0].getexif()
    if prompt is not None:
        exif[0x0110] = "prompt:{}".format(json.dumps(prompt))
    for tag, (key, value) in zip(range(0x010F, 0, -1), (extra_pnginfo or {}).items()):
        exif[tag] = "{}:{}".format(key, json.dumps(value))
    buf = io.BytesIO()
    frames[0].save(buf, format="WEBP", save_all=True, duration=int(1000.0 / fps), append_images=frames[1:],
                   exif=exif, lossless=lossless, quality=quality, method=WEBP_METHODS[method])
    filename, _ = write_numbered(target, name, counter, ".webp", buf.getvalue())
    saved = [{"filename": filename, "subfolder": sub, "type": "output"}]
    return {"ui": {"images": saved, "animated": (len(frames) != 1,)}, "result": ()}


register(NodeDef(
    "SaveAnimatedWEBP", save_animated_webp,
    {"images": ("IMAGE", {}), "filename_prefix": ("STRING", {"default": "ComfyUI"}),
     "fps": ("FLOAT", {"default": 6.0, "min": 0.01, "max": 1000.0, "step": 0.01}),
     "lossless": ("BOOLEAN", {"default": True}), "quality": ("INT", {"default": 80, "min": 0, "max": 100}),
     "method": (list(WEBP_METHODS), {})},
    hidden=SAVE_HIDDEN, category="image/animation", output_node=True, module="comfy_extras.nodes_images",
    check=check_prefix))


def save_animated_png(call, images, filename_prefix, fps, compress_level, prompt=None, extra_pnginfo=None):
    target, sub, name, counter = save_path(call.ctx.outputs_dir, filename_prefix, images.shape[2], images.shape[1])
    frames = [_pil(image) for image in images]
    info = PngInfo()
    for key, value in ([("prompt", prompt)] if prompt is not None else []) + list((extra_pnginfo or {}).items()):
        info.add(b"comf", key.encode("latin-1") + b"\0" + json.dumps(value).encode("latin-1"), after_idat=True)
    buf = io.BytesIO()
    frames[0].save(buf, format="PNG", pnginfo=info, compress_level=compress_level, save_all=True,
                   duration=int(1000.0 / fps), append_images=frames[1:])
    filename, _ = write_numbered(target, name, counter, ".png", buf.getvalue())
    return {"ui": {"images": [{"filename": filename, "subfolder": sub, "type": "output"}], "animated": (True,)},
            "result": ()}


register(NodeDef(
    "SaveAnimatedPNG", save_animated_png,
    {"images": ("IMAGE", {}), "filename_prefix": ("STRING", {"default": "ComfyUI"}),
     "fps": ("FLOAT", {"default": 6.0, "min": 0.01, "max": 1000.0, "step": 0.01}),
     "compress_level": ("INT", {"default": 4, "min": 0, "max": 9})},
    hidden=SAVE_HIDDEN, category="image/animation", output_node=True, module="comfy_extras.nodes_images",
    check=check_prefix))


def mask_preview(call, mask, prompt=None, extra_pnginfo=None):
    grey = mask.reshape(-1, 1, *mask.shape[-2:]).movedim(1, -1).expand(-1, -1, -1, 3)
    return preview_image(call, grey, prompt, extra_pnginfo)


register(NodeDef(
    "MaskPreview", mask_preview, {"mask": ("MASK", {})}, hidden=SAVE_HIDDEN, category="mask",
    display_name="Preview Mask", output_node=True, module="comfy_extras.nodes_mask",
    description="Saves the input images to your ComfyUI output directory."))
