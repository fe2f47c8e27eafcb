"""ComfyUI's POST /upload/mask (what its mask editor sends): the painted mask's alpha channel put
into the original image it references (original_ref: {filename, subfolder, type}), stored as a PNG
keeping the original's text chunks, so LoadImage's MASK (1 - alpha) is what was painted."""
from __future__ import annotations

import io
import json

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ..errors import InvalidArgument
from ..image_read import read


def parse_ref(text: str) -> tuple[str, str, str]:
    """(filename, subfolder, type) of original_ref; a ComfyUI-annotated name ("x.png [input]") sets the type."""
    try:
        ref = json.loads(text)
    except ValueError:
        ref = None
    if not isinstance(ref, dict) or not isinstance(ref.get("filename"), str) or not ref["filename"]:
        raise InvalidArgument('original_ref: expected JSON {"filename": ..., "subfolder": ..., "type": ...}')
    name, kind = ref["filename"], ref.get("type", "output")
    for annotated in ("output", "input", "temp"):
        if name.endswith(f" [{annotated}]"):
            name, kind = name.removesuffix(f" [{annotated}]"), annotated
    subfolder = ref.get("subfolder", "")
    if not isinstance(kind, str) or not isinstance(subfolder, str):
        raise InvalidArgument("original_ref: type and subfolder must be strings")
    return name, subfolder, kind


def masked_png(original_path, mask_data: bytes, max_pixels: int) -> bytes:
    """The original with the mask's alpha as its own (ComfyUI's upload_mask), as PNG bytes."""
    mask = read(io.BytesIO(mask_data), "image", max_pixels).convert("RGBA")
    original = read(original_path, "original_ref", max_pixels)
    if original.size != mask.size:  # ComfyUI's putalpha fails here (a 500)
        raise InvalidArgument(f"image: the mask's {mask.width}x{mask.height} differs from the original's "
                              f"{original.width}x{original.height}")
    meta = PngInfo()
    for key, value in original.info.items():  # the PNG's text chunks (its "prompt", "workflow")
        if isinstance(value, str):
            meta.add_text(key, value)
    out = original.convert("RGBA")
    out.putalpha(mask.getchannel("A"))
    buf = io.BytesIO()
    out.save(buf, format="PNG", compress_level=4, pnginfo=meta)
    return buf.getvalue()
