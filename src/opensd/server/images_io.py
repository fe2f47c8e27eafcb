"""Images in and out of the HTTP APIs: base64 (with or without a data: URL prefix) decoded with a
limit on encoded size, then read as opensd/image_read.py reads every user image (pixel limit from
the header, EXIF orientation, 16-bit, transparency)."""
from __future__ import annotations

import base64
import io

from PIL import Image

from ..errors import InvalidArgument
from ..image_read import b64_bytes, decode_bytes


def decode_b64(text, field: str, max_pixels: int) -> Image.Image:
    return decode_bytes(b64_bytes(text, field), field, max_pixels)


def png_bytes(image: Image.Image, infotext: str | None = None) -> bytes:
    from PIL.PngImagePlugin import PngInfo

    info = None
    if infotext:
        info = PngInfo()
        info.add_text("parameters", infotext)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def jpeg_bytes(image: Image.Image, quality: int = 80) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
