"""Image and mask preparation for img2img, inpainting and outpainting (PIL in, PIL/tensors out)."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageOps

from ..errors import InvalidArgument
from ..image_read import mask_from

RESIZE_MODES = ("just resize", "crop and resize", "resize and fill")
FILL_MODES = ("fill", "original", "latent noise", "latent nothing")


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB image -> (1, 3, H, W) in [-1, 1]."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


def to_pil(x: torch.Tensor) -> Image.Image:
    """(3, H, W) in [-1, 1] -> RGB image."""
    arr = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")


def mask_to_tensor(mask: Image.Image) -> torch.Tensor:
    """Mask image -> (1, 1, H, W) in [0, 1], 1 where the image is to be repainted."""
    arr = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr)[None, None]


def resize(image: Image.Image, width: int, height: int, mode: str = "just resize") -> Image.Image:
    """A1111's resize modes: stretch; scale to cover then centre-crop; scale to fit then fill the
    borders by stretching the image's edge pixels outward."""
    if mode not in RESIZE_MODES:
        raise InvalidArgument(f"resize_mode: {mode!r} is not one of {', '.join(RESIZE_MODES)}")
    if image.size == (width, height):
        return image
    if mode == "just resize":
        return image.resize((width, height), Image.LANCZOS)
    if mode == "resize and fill":
        return _fit_and_fill(image, width, height)
    ratio = width / height
    src_ratio = image.width / image.height
    cover = ratio > src_ratio
    w = width if cover else round(height * src_ratio)
    h = round(width / src_ratio) if cover else height
    w, h = max(w, 1), max(h, 1)
    scaled = image.resize((w, h), Image.LANCZOS)
    left, top = (w - width) // 2, (h - height) // 2
    return scaled.crop((left, top, left + width, top + height))


def _fit_and_fill(image: Image.Image, width: int, height: int) -> Image.Image:
    """A1111's "resize and fill" to the pixel: scaled (Lanczos) to fit, the other side rounded down;
    placed at (width // 2 - w // 2, height // 2 - h // 2); the two empty borders (each as wide as the
    first) filled by stretching the picture's outermost rows or columns, which A1111 does by resizing
    a zero-height (zero-width) box at the edge (PIL's bicubic then weighs the rows next to it a little)."""
    wide = image.width * height > width * image.height  # the picture is wider than the target
    w = width if wide else max(1, image.width * height // image.height)
    h = max(1, image.height * width // image.width) if wide else height
    scaled = image.resize((w, h), Image.LANCZOS)
    canvas = Image.new(image.mode, (width, height))
    left, top = width // 2 - w // 2, height // 2 - h // 2
    canvas.paste(scaled, (left, top))
    if wide and top > 0:
        canvas.paste(scaled.resize((w, top), box=(0, 0, w, 0)), (0, 0))
        canvas.paste(scaled.resize((w, top), box=(0, h, w, h)), (0, top + h))
    elif left > 0:
        canvas.paste(scaled.resize((left, h), box=(0, 0, 0, h)), (0, 0))
        canvas.paste(scaled.resize((left, h), box=(w, 0, w, h)), (left + w, 0))
    return canvas


def prepare_mask(mask: Image.Image, size: tuple[int, int], blur: int = 4, invert: bool = False,
                 blur_y: int | None = None, round_alpha: bool = True) -> Image.Image:
    """The inpainting mask at the init image's `size`, inverted if asked, then blurred as A1111 does:
    `blur` across, `blur_y` (default: `blur`) down, each a 1-D Gaussian of that sigma whose kernel
    spans 2 * int(2.5 * sigma + 0.5) + 1 pixels (A1111's mask_blur_x / mask_blur_y). `round_alpha`:
    an RGBA mask's alpha cut at 128 (off for soft inpainting, which keeps its partial transparency)."""
    for name, value in (("mask_blur", blur), ("mask_blur_y", blur_y)):
        if value is not None and not 0 <= value <= 256:
            raise InvalidArgument(f"{name}: {value} is outside 0..256")
    m = mask_from(mask, round_alpha)
    if m.size != size:  # A1111 resizes the mask with the image to the request's size, never refuses it
        m = m.resize(size, Image.LANCZOS)
    if invert:
        m = ImageOps.invert(m)
    return _blurred(m, blur, blur if blur_y is None else blur_y)


def _blurred(mask: Image.Image, across: int, down: int) -> Image.Image:
    import cv2

    if not across and not down:
        return mask
    a = np.asarray(mask)
    if across > 0:
        a = cv2.GaussianBlur(a, (2 * int(2.5 * across + 0.5) + 1, 1), across)
    if down > 0:
        a = cv2.GaussianBlur(a, (1, 2 * int(2.5 * down + 0.5) + 1), down)
    return Image.fromarray(a)


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's "fill" content: paint the masked area with colours diffused in from around it, so
    the model starts from the surroundings' palette instead of the old content.

    Normalised averaging at growing scales: each masked pixel takes the mean colour of the
    unmasked pixels near it, at the finest scale that has any.
    """
    rgb = to_tensor(image)  # (1, 3, H, W)
    keep = (mask_to_tensor(mask) < 0.5).float()
    if keep.sum() == 0:  # nothing to diffuse from: neutral grey
        return Image.new("RGB", image.size, (128, 128, 128))
    h, w = rgb.shape[-2:]
    out, filled = rgb.clone(), keep.bool()
    for factor in (4, 16, 64, 256):
        size = (max(1, h // factor), max(1, w // factor))
        colour = torch.nn.functional.interpolate(rgb * keep, size=size, mode="area")
        cover = torch.nn.functional.interpolate(keep, size=size, mode="area")
        colour = torch.nn.functional.interpolate(colour, size=(h, w), mode="bilinear", align_corners=False)
        cover = torch.nn.functional.interpolate(cover, size=(h, w), mode="bilinear", align_corners=False)
        take = ~filled & (cover > 1e-3)
        out = torch.where(take, colour / cover.clamp_min(1e-3), out)
        filled |= take
    mean = (rgb * keep).sum(dim=(2, 3), keepdim=True) / keep.sum()
    out = torch.where(filled, out, mean)
    return to_pil(out[0])


def mask_bbox(mask: Image.Image, padding: int) -> tuple[int, int, int, int] | None:
    """Bounding box of the masked area grown by `padding`, clipped to the image; None if empty."""
    box = mask.convert("L").point(lambda v: 255 if v > 0 else 0).getbbox()
    if box is None:
        return None
    x0, y0, x1, y1 = box
    w, h = mask.size
    return max(0, x0 - padding), max(0, y0 - padding), min(w, x1 + padding), min(h, y1 + padding)


def expand_to_ratio(box: tuple[int, int, int, int], ratio: float, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Grow a box to the target width/height ratio (as far as the image allows), so the crop is
    not distorted when scaled to the generation size."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    if w / h < ratio:
        grow = round(h * ratio) - w
        x0, x1 = x0 - grow // 2, x1 + grow - grow // 2
    else:
        grow = round(w / ratio) - h
        y0, y1 = y0 - grow // 2, y1 + grow - grow // 2
    W, H = size
    if x0 < 0:
        x1, x0 = min(W, x1 - x0), 0
    if x1 > W:
        x0, x1 = max(0, x0 - (x1 - W)), W
    if y0 < 0:
        y1, y0 = min(H, y1 - y0), 0
    if y1 > H:
        y0, y1 = max(0, y0 - (y1 - H)), H
    return x0, y0, x1, y1


def pad_for_outpaint(image: Image.Image, left: int, right: int, top: int, bottom: int,
                     overlap: int = 8) -> tuple[Image.Image, Image.Image]:
    """Grow the canvas; return (image with the new border filled from its edge, mask that covers
    the border plus `overlap` pixels into the original so the seam is repainted too)."""
    for name, v in (("left", left), ("right", right), ("top", top), ("bottom", bottom)):
        if v < 0 or v > 2048:
            raise InvalidArgument(f"{name}: {v} is outside 0..2048")
    W, H = image.width + left + right, image.height + top + bottom
    canvas = _edge_pad(image, left, right, top, bottom)
    mask = Image.new("L", (W, H), 255)
    keep = (left + (overlap if left else 0), top + (overlap if top else 0),
            left + image.width - (overlap if right else 0), top + image.height - (overlap if bottom else 0))
    mask.paste(0, keep)
    return canvas, mask


def _edge_pad(image: Image.Image, left: int, right: int, top: int, bottom: int) -> Image.Image:
    arr = np.asarray(image.convert("RGB"))
    return Image.fromarray(np.pad(arr, ((top, bottom), (left, right), (0, 0)), mode="edge"), "RGB")


def paste_back(image: Image.Image, original: Image.Image, mask: Image.Image,
               crop: tuple[int, int, int, int] | None) -> Image.Image:
    """Composite an inpainting result over the original through the (blurred) mask, so unmasked
    pixels come back exactly; with "only masked" the crop is scaled back into place first and laid
    over through the original's own mask (A1111's mask_for_overlay, diffusers' apply_overlay), not
    the crop's mask scaled there and back, whose Lanczos ringing would blend the edges. Without a
    crop A1111 lays it over through the mask doubled (clipped at 255): a blurred edge's inner half is
    all result, its outer half fades."""
    if crop is not None:
        x0, y0, x1, y1 = crop
        placed = original.copy()
        placed.paste(image.resize((x1 - x0, y1 - y0), Image.LANCZOS), (x0, y0))
        return Image.composite(placed, original, mask)
    original = original.resize(image.size, Image.LANCZOS) if original.size != image.size else original
    mask = mask.resize(image.size) if mask.size != image.size else mask
    return Image.composite(image, original, mask.convert("L").point(lambda v: min(255, 2 * v)))
