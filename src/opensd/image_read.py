"""Reading a user's image file (API base64, ComfyUI upload, CLI path) the way A1111 and ComfyUI
read it: the header's size checked against a pixel limit before any pixel is decoded (a small file
claiming 20000 x 20000 pixels is refused cheaply), the EXIF orientation applied (both apply it: a
phone photo stays upright), 16-bit pixels scaled to 8 bits (PIL's own conversion clips them, so
mid grey came out white), palette or colour-key transparency turned into an alpha channel (A1111's
fix_png_transparency; ComfyUI's LoadImage makes its mask from it). What to do with the alpha is
the caller's: flatten() for an init image, mask_from() for a mask."""
from __future__ import annotations

import base64
import binascii
import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InvalidArgument

MAX_ENCODED_CHARS = 48 << 20  # base64 characters of one image sent in a request

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


def b64_bytes(text, field: str) -> bytes:
    """The bytes of a base64 text (or data: URL), within the encoded-size limit."""
    if not isinstance(text, str) or not text:
        raise InvalidArgument(f"{field}: expected a base64-encoded image")
    if len(text) > MAX_ENCODED_CHARS:
        raise InvalidArgument(f"{field}: the image file is about {len(text) * 3 / 4 / (1 << 20):.1f} MB, more than the "
                              f"{MAX_ENCODED_CHARS * 3 / 4 / (1 << 20):.0f} MB one image may be: send a smaller file "
                              "(fewer pixels, or JPEG/WebP)")
    if text.startswith("data:"):
        head, _, text = text.partition(",")
        if ";base64" not in head:
            raise InvalidArgument(f"{field}: data URL is not base64")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(f"{field}: invalid base64") from None


def decode_bytes(data: bytes, field: str, max_pixels: int) -> Image.Image:
    """The first frame of an encoded image, upright and 8-bit (upright()), its info (PNG text) kept."""
    return read(io.BytesIO(data), field, max_pixels)


def read(source, field: str, max_pixels: int) -> Image.Image:
    """decode_bytes for a file (a path or a binary file object); a missing file raises FileNotFoundError."""
    try:
        with Image.open(source) as im:
            check_pixels(im, field, max_pixels)
            im.load()
            return upright(im)
    except (InvalidArgument, FileNotFoundError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InvalidArgument(f"{field}: image too large ({e})") from None
    except UnidentifiedImageError:  # its message names the file object or the server's path
        raise InvalidArgument(f"{field}: not a readable image (not an image format this server reads)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.filename else e  # without the path
        raise InvalidArgument(f"{field}: not a readable image ({reason})") from None


def check_pixels(im: Image.Image, field: str, max_pixels: int) -> None:
    w, h = im.size
    if w < 1 or h < 1 or w * h > max_pixels:
        raise InvalidArgument(f"{field}: image too large: {w}x{h} pixels exceeds the {max_pixels}-pixel limit")


def upright(frame: Image.Image) -> Image.Image:
    """A loaded frame as A1111's images.read and ComfyUI's LoadImage see it (a new image)."""
    frame.load()  # a broken file fails here, not in the EXIF step below
    info = dict(frame.info)
    try:
        out = ImageOps.exif_transpose(frame)
    except (ValueError, TypeError, KeyError, OSError, SyntaxError):  # malformed EXIF: A1111 ignores it too
        out = frame.copy()
    if out.mode in _SIXTEEN_BIT or out.mode == "I":
        # ComfyUI divides 'I' by 255; 16-bit data spans 0..65535, which / 257 maps onto 0..255.
        scale = 257.0 if out.mode in _SIXTEEN_BIT else 255.0
        arr = np.clip(np.asarray(out, dtype=np.float64) / scale, 0, 255).round().astype(np.uint8)
        out = Image.fromarray(arr, "L")
    elif out.mode in ("P", "RGB", "L") and "transparency" in out.info:
        out = out.convert("RGBA")
        info.pop("transparency")  # now the alpha channel; kept, it would break saving as RGB
    out.info = info
    return out


def has_alpha(image: Image.Image) -> bool:
    return "A" in image.getbands() or "a" in image.getbands()


WHITE = "#ffffff"  # A1111's img2img_background_color default


def flatten(image: Image.Image, background: str = WHITE) -> Image.Image:
    """An RGB image with its transparent parts painted over `background` (A1111's images.flatten
    with img2img_background_color), where a plain convert("RGB") would show whatever colour the
    transparent pixels happen to hold."""
    if not has_alpha(image):
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, background)
    canvas.alpha_composite(rgba)
    return canvas.convert("RGB")


def mask_from(mask: Image.Image, round_alpha: bool = True) -> Image.Image:
    """An "L" inpainting mask (white = repaint): A1111's create_binary_mask takes a mask with
    transparent parts as its alpha channel (opaque = repaint, cut at 128 unless `round_alpha` is
    off, as soft inpainting turns it off), any other as its grey."""
    if has_alpha(mask):
        alpha = mask.convert("RGBA").getchannel("A")
        if alpha.getextrema() != (255, 255):
            return alpha.point(lambda v: 255 if v > 128 else 0) if round_alpha else alpha
    return mask.convert("L")
