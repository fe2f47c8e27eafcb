"""Latent and image nodes: empty latents, masks, resizing, outpaint padding, loading and saving."""
from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import string
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageSequence
from PIL.PngImagePlugin import PngInfo

from .. import safe_paths
from ..image_read import has_alpha, upright
from ..checkpoints.files import save_safetensors
from .bislerp import bislerp
from .types import MAX_RESOLUTION, Choices, NodeDef, check_size, register

LATENT_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]
IMAGE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
CROPS = ["disabled", "center"]


def _size(default: int, lo: int, step: int):
    return ("INT", {"default": default, "min": lo, "max": MAX_RESOLUTION, "step": step})


# --- latents -------------------------------------------------------------------------------------

def empty_latent(call, width, height, batch_size=1):
    # ComfyUI assumes the /8 VAE of the SD family; the pixel size lets KSampler give models with
    # another downscale (the built-in model's /4 VAE) the latent that decodes to width x height.
    check_size("EmptyLatentImage", batch_size, 4, height // 8, width // 8)
    return ({"samples": torch.zeros(batch_size, 4, height // 8, width // 8), "pixel_size": (width, height)},)


register(NodeDef(
    "EmptyLatentImage", empty_latent,
    {"width": _size(512, 16, 8), "height": _size(512, 16, 8),
     "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096})},
    ("LATENT",), category="latent", display_name="Empty Latent Image",
    description="A batch of all-zero latents to start text-to-image from."))


def set_noise_mask(call, samples, mask):
    return (dict(samples, noise_mask=mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1])),)


register(NodeDef(
    "SetLatentNoiseMask", set_noise_mask, {"samples": ("LATENT", {}), "mask": ("MASK", {})}, ("LATENT",),
    category="latent/inpaint", display_name="Set Latent Noise Mask",
    description="Only the masked area of the latent is denoised."))


def upscale(x: torch.Tensor, width: int, height: int, method: str, crop: str) -> torch.Tensor:
    """(B, C, H, W) resized to (height, width), optionally centre-cropped to the target aspect first."""
    check_size("resize", *x.shape[:2], height, width)
    if crop == "center":
        old_w, old_h = x.shape[-1], x.shape[-2]
        old_aspect, new_aspect = old_w / old_h, width / height
        dx = round((old_w - old_w * (new_aspect / old_aspect)) / 2) if old_aspect > new_aspect else 0
        dy = round((old_h - old_h * (old_aspect / new_aspect)) / 2) if old_aspect < new_aspect else 0
        x = x[..., dy:old_h - dy, dx:old_w - dx]
    if method == "bislerp":
        return bislerp(x, width, height)
    if method == "lanczos":
        out = []
        for img in x.float().clamp(0, 1):
            arr = (img.permute(1, 2, 0).numpy() * 255).astype(np.uint8)  # truncated, as ComfyUI does
            pil = Image.fromarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr)
            res = np.asarray(pil.resize((width, height), Image.LANCZOS), dtype=np.float32) / 255.0
            out.append(torch.from_numpy(res.reshape(height, width, -1)).permute(2, 0, 1))
        return torch.stack(out)
    return F.interpolate(x.float(), size=(height, width), mode=method)


def latent_upscale(call, samples, upscale_method, width, height, crop):
    if width == 0 and height == 0:
        return (samples,)
    h, w = samples["samples"].shape[-2:]
    if width == 0:
        height = max(64, height)
        width = max(64, round(w * height / h))
    elif height == 0:
        width = max(64, width)
        height = max(64, round(h * width / w))
    else:
        width, height = max(64, width), max(64, height)
    return (dict(samples, samples=upscale(samples["samples"], width // 8, height // 8, upscale_method, crop)),)


register(NodeDef(
    "LatentUpscale", latent_upscale,
    {"samples": ("LATENT", {}), "upscale_method": (LATENT_METHODS, {}), "width": _size(512, 0, 8),
     "height": _size(512, 0, 8), "crop": (CROPS, {})},
    ("LATENT",), category="latent", display_name="Upscale Latent",
    description="Resizes latents to width x height pixels (0 keeps the aspect ratio)."))


def image_scale(call, image, upscale_method, width, height, crop):
    if width == 0 and height == 0:
        return (image,)
    h, w = image.shape[1:3]
    width = max(1, round(w * height / h)) if width == 0 else width
    height = max(1, round(h * width / w)) if height == 0 else height
    x = upscale(image.movedim(-1, 1), width, height, upscale_method, crop)
    return (x.movedim(1, -1).clamp(0, 1),)


register(NodeDef(
    "ImageScale", image_scale,
    {"image": ("IMAGE", {}), "upscale_method": (IMAGE_METHODS, {}), "width": _size(512, 0, 1),
     "height": _size(512, 0, 1), "crop": (CROPS, {})},
    ("IMAGE",), category="image/upscaling", display_name="Upscale Image",
    description="Resizes images to width x height (0 keeps the aspect ratio)."))


def pad_for_outpaint(call, image, left, top, right, bottom, feathering=40):
    b, h, w, c = image.shape
    out = torch.full((b, h + top + bottom, w + left + right, c), 0.5)
    out[:, top:top + h, left:left + w, :] = image
    mask = torch.ones(h + top + bottom, w + left + right)
    inner = torch.zeros(h, w)
    if feathering > 0 and feathering * 2 < h and feathering * 2 < w:
        i = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
        j = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w)
        far_h, far_w = torch.full_like(i, float(h)), torch.full_like(j, float(w))
        d = torch.stack([i if top else far_h, (h - i) if bottom else far_h,
                         j if left else far_w, (w - j) if right else far_w]).amin(dim=0)
        inner = torch.where(d < feathering, ((feathering - d) / feathering) ** 2, inner)
    mask[top:top + h, left:left + w] = inner
    return out, mask[None]


_PAD = ("INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 8})
register(NodeDef(
    "ImagePadForOutpaint", pad_for_outpaint,
    {"image": ("IMAGE", {}), "left": _PAD, "top": _PAD, "right": _PAD, "bottom": _PAD,
     "feathering": ("INT", {"default": 40, "min": 0, "max": MAX_RESOLUTION, "step": 1})},
    ("IMAGE", "MASK"), category="image", display_name="Pad Image for Outpainting",
    description="Adds grey borders and a mask of them (feathered into the image) for outpainting."))


# --- loading -------------------------------------------------------------------------------------

def _file_inside(folder: Path, name: str) -> Path | None:
    name = name.replace("\\", "/")
    if safe_paths.name_problem(name, "image"):
        return None
    path = safe_paths.inside(folder, name)
    return path if path is not None and safe_paths.is_file(path) else None


def input_path(ctx, name) -> Path | None:
    """The file for a LoadImage name, only inside inputs_dir; ComfyUI's " [input]" suffix allowed."""
    if not isinstance(name, str) or not name:
        return None
    return _file_inside(ctx.inputs_dir, name.removesuffix(" [input]"))


def annotated_path(ctx, name) -> Path | None:
    """ComfyUI's annotated file names (get_annotated_filepath), as LoadImageOutput's widget sends
    them: "x.png [output]" in the output folder, " [temp]" in the temp (preview) folder, " [input]"
    or no annotation in the input folder; only inside that folder."""
    if not isinstance(name, str) or not name:
        return None
    for suffix, folder in ((" [output]", ctx.outputs_dir), (" [temp]", ctx.temp_folder()),
                           (" [input]", ctx.inputs_dir)):
        if name.endswith(suffix):
            return _file_inside(folder, name.removesuffix(suffix))
    return _file_inside(ctx.inputs_dir, name)


def _decoded(path: Path):
    """(IMAGE, MASK) of an image file as ComfyUI's LoadImage reads it: every frame of the first
    frame's size (only the first of an MPO, whose second frame is the other eye of a stereo pair),
    upright and 8-bit (image_read.upright), MASK 1 - alpha (zeros 64 x 64 for a frame without
    alpha). Frames are counted against check_size as they come: a small GIF of many big frames
    would otherwise fill the memory."""
    images, masks = [], []
    with Image.open(path) as img:
        for frame in ImageSequence.Iterator(img):
            w, h = frame.size
            if images and (h, w, 3) != images[0].shape:
                continue
            check_size("LoadImage", len(images) + 1, h, w, 3)
            frame = upright(frame)
            images.append(np.asarray(frame.convert("RGB"), dtype=np.float32) / 255.0)
            if has_alpha(frame):
                alpha = np.asarray(frame.convert("RGBA").getchannel("A"), dtype=np.float32) / 255.0
                masks.append(torch.from_numpy(1.0 - alpha))
            else:
                masks.append(torch.zeros(64, 64))
            if img.format == "MPO":
                break
    if len({m.shape for m in masks}) > 1:  # frames with and without alpha: keep the first's mask
        masks = masks[:1]
    return torch.from_numpy(np.stack(images)), torch.stack(masks)


def load_image(call, image):
    path = input_path(call.ctx, image)
    if path is None:
        raise FileNotFoundError(f"Invalid image file: {image}")
    return _decoded(path)


def load_image_output(call, image):
    path = annotated_path(call.ctx, image)
    if path is None:
        raise FileNotFoundError(f"Invalid image file: {image}")
    return _decoded(path)


def input_file_check(field: str, find=input_path):
    """A node's check that its `field` names a file of the input folder (ComfyUI's VALIDATE_INPUTS)."""
    def check(ctx, inputs):
        if ctx is None or field not in inputs:  # no folder to look in, or linked (known when the node runs)
            return None
        return None if find(ctx, inputs.get(field)) else f"Invalid {field} file: {inputs.get(field)}"
    return check


def input_file_fingerprint(field: str, find=input_path):
    """The SHA-256 of the input file `field` names (ComfyUI's IS_CHANGED), so a new upload reruns."""
    def fingerprint(ctx, inputs) -> str:
        path = find(ctx, inputs.get(field))
        return hashlib.sha256(path.read_bytes()).hexdigest() if path else "missing"
    return fingerprint


check_input_image, image_fingerprint = input_file_check("image"), input_file_fingerprint("image")


register(NodeDef(
    "LoadImage", load_image, {"image": (Choices("input_images", strict=False), {"image_upload": True})},
    ("IMAGE", "MASK"), category="image", display_name="Load Image",
    description="Loads an image from the input folder; MASK is 1 - alpha.",
    check=check_input_image, fingerprint=image_fingerprint))
register(NodeDef(
    "LoadImageOutput", load_image_output,
    {"image": ("COMBO", {"image_upload": True, "image_folder": "output",
                         "remote": {"route": "/internal/files/output", "refresh_button": True,
                                    "control_after_refresh": "first"}})},
    ("IMAGE", "MASK"), category="image", display_name="Load Image (from Outputs)",
    description="Load an image from the output folder. When the refresh button is clicked, the node will update the "
                "image list and automatically select the first image, allowing for easy iteration.",
    experimental=True, check=input_file_check("image", annotated_path),
    fingerprint=input_file_fingerprint("image", annotated_path)))


# --- saving --------------------------------------------------------------------------------------

_TOKENS = {"%year%": "%Y", "%month%": "%m", "%day%": "%d", "%hour%": "%H", "%minute%": "%M", "%second%": "%S"}


def _prefix_problem(prefix) -> str | None:
    if not isinstance(prefix, str) or not prefix.strip():
        return "filename_prefix must not be empty"
    p = prefix.replace("\\", "/")
    if "\x00" in p or p.startswith("/") or re.match(r"^[A-Za-z]:", p) or ".." in p.split("/") or p.endswith("/"):
        return "Saving image outside the output folder is not allowed."
    return safe_paths.name_problem(p + "_00001_.png", "filename_prefix")  # the longest name it makes


def check_prefix(ctx, inputs):
    if "filename_prefix" not in inputs:  # linked (a PrimitiveString): save_path checks it when the node runs
        return None
    return _prefix_problem(inputs["filename_prefix"])


def save_path(folder: Path, prefix: str, width: int, height: int) -> tuple[Path, str, str, int]:
    """(folder, subfolder, filename, next counter) for ComfyUI's ``prefix_00001_.png`` naming."""
    problem = _prefix_problem(prefix)
    if problem:
        raise ValueError(problem)
    prefix = prefix.replace("\\", "/").replace("%width%", str(width)).replace("%height%", str(height))
    for token, fmt in _TOKENS.items():
        prefix = prefix.replace(token, time.strftime(fmt))
    sub, _, name = prefix.rpartition("/")
    target = safe_paths.inside(folder, sub)
    if target is None:
        raise ValueError("Saving image outside the output folder is not allowed.")
    target.mkdir(parents=True, exist_ok=True)
    return target, sub, name, next_counter(target, name)


def next_counter(target: Path, name: str) -> int:
    """The counter after the highest of the ``{name}_{counter}_`` files in ``target``."""
    pattern = re.compile(re.escape(name) + r"_(\d+)_")
    return max((int(m.group(1)) for f in os.listdir(target) if (m := pattern.match(f))), default=0) + 1


def save_images(images: torch.Tensor, folder: Path, prefix: str, kind: str, prompt=None, extra_pnginfo=None,
                compress_level: int = 4) -> list[dict]:
    target, sub, name, counter = save_path(folder, prefix, images.shape[2], images.shape[1])
    results = []
    for image in images:
        arr = np.clip(255.0 * image.float().cpu().numpy(), 0, 255).astype(np.uint8)
        pil = Image.fromarray(arr)
        meta = PngInfo()
        if prompt is not None:
            meta.add_text("prompt", json.dumps(prompt))
        for key, value in (extra_pnginfo or {}).items():
            meta.add_text(key, json.dumps(value))
        buf = io.BytesIO()
        pil.save(buf, format="PNG", pnginfo=meta, compress_level=compress_level)
        filename, counter = write_numbered(target, name, counter, ".png", buf.getvalue())
        results.append({"filename": filename, "subfolder": sub, "type": kind})
        counter += 1
    return results


def write_numbered(target: Path, name: str, counter: int, suffix: str, data: bytes) -> tuple[str, int]:
    """Write ``{name}_{counter:05}_{suffix}`` with the first free counter from ``counter`` on;
    (file name, counter used). Exclusive create: a concurrent writer never overwrites our file, nor
    we theirs."""
    while True:
        filename = f"{name}_{counter:05}_{suffix}"
        try:
            with open(target / filename, "xb") as f:
                f.write(data)
            return filename, counter
        except FileExistsError:
            counter += 1


def save_numbered_safetensors(target: Path, name: str, counter: int, suffix: str, tensors: dict,
                              metadata: dict[str, str]) -> str:
    """A safetensors file under the first free ``{name}_{counter:05}_{suffix}``: the name is taken by
    an empty file (exclusive create), then written over atomically. Returns the file name."""
    filename, _ = write_numbered(target, name, counter, suffix, b"")
    save_safetensors(tensors, target / filename, metadata)
    return filename


def save_image(call, images, filename_prefix="opensd", prompt=None, extra_pnginfo=None):
    saved = save_images(images, call.ctx.outputs_dir, filename_prefix, "output", prompt, extra_pnginfo)
    return {"ui": {"images": saved}, "result": ()}


def preview_image(call, images, prompt=None, extra_pnginfo=None):
    suffix = "".join(random.choice(string.ascii_lowercase) for _ in range(5))
    saved = save_images(images, call.ctx.temp_folder(), f"opensd_temp_{suffix}", "temp", prompt, extra_pnginfo,
                        compress_level=1)
    return {"ui": {"images": saved}, "result": ()}


SAVE_HIDDEN = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
register(NodeDef(
    "SaveImage", save_image,
    {"images": ("IMAGE", {}), "filename_prefix": ("STRING", {"default": "opensd"})},
    hidden=SAVE_HIDDEN, category="image", display_name="Save Image", output_node=True,
    description="Saves images as PNG in the output folder, with the workflow embedded.", check=check_prefix))
register(NodeDef(
    "PreviewImage", preview_image, {"images": ("IMAGE", {})}, hidden=SAVE_HIDDEN, category="image",
    display_name="Preview Image", output_node=True, description="Saves images to the temporary folder."))
