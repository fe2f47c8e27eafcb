"""The LaMa that sd-webui-controlnet's inpaint_only+lama runs before ControlNet 1.1's inpaint model:
where its file is found and the fill it makes.

The extension downloads lllyasviel's ControlNetLama.pth into its annotator folder (lama/); here it is
looked for in the models folder's preprocessor folders (any subfolder, as the other preprocessors'
files), and big-lama.pt (or a conversion of it) is taken too, from there or from models/inpaint/
where the ComfyUI inpaint nodes find it. The file is read without running code
(inpaint_models.load_inpaint_model) and kept loaded like the other preprocessor networks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import InvalidArgument
from .preprocessor_files import cached, match_file, preprocessor_dirs, torch_device

LAMA_FILE = "ControlNetLama.pth"
OTHER_NAMES = ("big-lama.pt", "big-lama.safetensors")
SOURCE = "https://huggingface.co/lllyasviel/Annotators (ControlNetLama.pth)"
LAMA_SIZE = 256  # LaMa's training size: the short side it runs at
LAMA_PAD = 64


def lama_file(folders) -> Path:
    """The LaMa file inpaint_only+lama runs, or an error naming it and where it goes."""
    for name in (LAMA_FILE, *OTHER_NAMES):
        found = match_file(folders, name)
        if found is not None:
            return found
    inpaint = folders.list("inpaint") if folders is not None else []
    for name in OTHER_NAMES:
        hit = next((m.path for m in inpaint if Path(m.name).name.lower() == name), None)
        if hit is not None:
            return hit
    raise InvalidArgument(f"inpaint_only+lama: {LAMA_FILE} is not installed: put it in {preprocessor_dirs()} (any "
                          f"subfolder; big-lama.pt there or in models/inpaint/ works too); it is published at {SOURCE}")


def load_lama(path, device=None):
    """The LaMa of `path` (spandrel's descriptor), on `device` (None: CUDA when there is one), kept
    loaded as the one preprocessor network."""
    from ..inpaint_models import load_inpaint_model

    device = torch_device(device)
    return cached(("lama", str(Path(path).resolve()), str(device)), lambda: load_inpaint_model(path, device))


def _resized(arr: np.ndarray, width: int, height: int) -> np.ndarray:
    import cv2

    smaller = width * height < arr.shape[0] * arr.shape[1]
    return cv2.resize(arr, (width, height), interpolation=cv2.INTER_AREA if smaller else cv2.INTER_CUBIC)


def lama_fill(model, image: Image.Image, mask: Image.Image) -> Image.Image:
    """`image` with its masked part (mask white; cut at half for LaMa, blended by its grey levels
    after) painted by `model` (a LaMa, spandrel's MaskedImageModelDescriptor), as the extension's
    inpaint_only+lama preprocessor does: image and mask scaled to a 256-pixel short side, padded
    (edge pixels repeated) to multiples of 64, LaMa run on the image with the masked pixels blanked,
    the result cut and scaled back (bilinear), laid over the image by the mask."""
    import cv2

    if mask.size != image.size:
        raise InvalidArgument(f"mask: {mask.width}x{mask.height} does not match the image's "
                              f"{image.width}x{image.height}")
    rgb = np.asarray(image.convert("RGB"))
    alpha = np.asarray(mask.convert("L"))
    h, w = rgb.shape[:2]
    k = LAMA_SIZE / min(h, w)
    th, tw = max(1, round(h * k)), max(1, round(w * k))
    small = _resized(np.dstack([rgb, alpha]), tw, th)
    small = np.pad(small, ((0, -th % LAMA_PAD), (0, -tw % LAMA_PAD), (0, 0)), mode="edge")
    color = torch.from_numpy(small[..., :3].astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    m = (torch.from_numpy(small[..., 3].astype(np.float32) / 255.0)[None, None] > 0.5).float()
    device = next(model.model.parameters()).device
    with torch.inference_mode():
        out = model(color.to(device), m.to(device)).float().cpu()
    out = out * m + color * (1 - m)  # LaMa keeps what is not masked
    filled = (out[0].permute(1, 2, 0).numpy() * 255.0).clip(0, 255).astype(np.uint8)[:th, :tw]
    filled = cv2.resize(filled, (w, h)).astype(np.float32)
    a = alpha.astype(np.float32)[..., None] / 255.0
    return Image.fromarray((filled * a + rgb.astype(np.float32) * (1 - a)).clip(0, 255).astype(np.uint8))
