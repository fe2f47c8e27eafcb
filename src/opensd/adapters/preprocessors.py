"""Control-image preprocessors: turn a photo or drawing into the map a ControlNet was trained on.

Every preprocessor takes a PIL image and returns an RGB PIL image of the same size with white
structure on black (the convention of lllyasviel's ControlNet 1.0/1.1 models):

    canny      OpenCV Canny edges (low/high hysteresis thresholds)
    softedge   HED soft edges (real BSDS500 HED weights, adapters/hed.py)
    scribble   HED edges, smoothed and thresholded into bold binary strokes
    lineart    simple line drawing from the grey image's gradient (no learned model)
    depth_anything_v2
               Depth Anything V2 relative depth, near = bright (adapters/depth_anything.py; the
               user's depth_anything_v2_vit{s,b,l}.pth, found in the models folder or given as `weights`)
    depth/pose/normal/seg/passthrough
               the user's own map (from an external estimator), used as it is
    invert     255 - image: a black-on-white sketch becomes white-on-black
    binary     threshold the grey image (white where brighter than `threshold`)
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image

from ..errors import InvalidArgument

RESIZE_MODES = ("just resize", "crop and resize", "resize and fill")


def _gray(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L"), dtype=np.uint8)


def _rgb(mono: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(mono, 0, 255).astype(np.uint8), "L").convert("RGB")


def _check(name: str, value, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) \
            or not low <= value <= high:
        raise InvalidArgument(f"{name}: {value!r} must be a number in {low:g}..{high:g}")


def canny(image: Image.Image, low: int = 100, high: int = 200) -> Image.Image:
    import cv2

    _check("low", low, 0, 255)
    _check("high", high, 0, 255)
    if low > high:
        raise InvalidArgument(f"low: {low} is above high {high}")
    return _rgb(cv2.Canny(_gray(image), int(low), int(high)))


def softedge(image: Image.Image) -> Image.Image:
    from .hed import hed_edges

    return _rgb(hed_edges(image) * 255.0)


def scribble(image: Image.Image, threshold: float = 0.5) -> Image.Image:
    import cv2

    _check("threshold", threshold, 0.0, 1.0)
    from .hed import hed_edges

    edges = cv2.GaussianBlur(hed_edges(image), (0, 0), 1.5)
    peak = max(float(edges.max()), 1e-6)
    strokes = (edges > threshold * peak).astype(np.uint8) * 255
    return _rgb(cv2.dilate(strokes, np.ones((3, 3), np.uint8)))


def lineart(image: Image.Image, sigma: float = 1.0, threshold: float = 0.08) -> Image.Image:
    """Simple line drawing (no learned model): gradient magnitude of the lightly blurred grey image,
    normalised to its 99th percentile; weak gradients below `threshold` are dropped."""
    import cv2

    _check("sigma", sigma, 0.3, 10.0)
    _check("threshold", threshold, 0.0, 1.0)
    g = cv2.GaussianBlur(_gray(image).astype(np.float32) / 255.0, (0, 0), sigma)
    mag = np.hypot(cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3))
    scale = np.percentile(mag[mag > 1e-3], 99) if (mag > 1e-3).any() else 1.0
    lines = np.clip(mag / max(scale, 1e-6), 0, 1)
    lines[lines < threshold] = 0
    return _rgb(lines * 255.0)


def depth_anything_v2(image: Image.Image, weights=None, device=None) -> Image.Image:
    """Depth Anything V2 relative depth, near = bright; `weights` the model file, `device` None: CUDA
    if there is one."""
    from .depth_anything import estimate_depth
    from .depth_anything_files import load_depth_anything

    if weights is None:
        raise InvalidArgument("depth_anything_v2: no weights file (depth_anything_v2_vitl.pth, vitb or vits)")
    depth = estimate_depth(load_depth_anything(weights, device), np.asarray(image.convert("RGB")))
    return _rgb(np.round(depth * 255.0))


def passthrough(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


def invert(image: Image.Image) -> Image.Image:
    return _rgb(255 - _gray(image))


def binary(image: Image.Image, threshold: int = 127) -> Image.Image:
    _check("threshold", threshold, 0, 255)
    return _rgb((_gray(image) > threshold).astype(np.uint8) * 255)


PREPROCESSORS: dict[str, Callable[..., Image.Image]] = {
    "canny": canny, "softedge": softedge, "hed": softedge, "scribble": scribble, "lineart": lineart,
    "depthanythingv2": depth_anything_v2,
    "depth": passthrough, "pose": passthrough, "normal": passthrough, "seg": passthrough,
    "passthrough": passthrough, "none": passthrough, "invert": invert, "binary": binary,
}


# preprocessors that run a user's model file: key -> its default file in a models folder
NEEDS_WEIGHTS = {"depthanythingv2"}


def _key(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


def needs_weights(name: str) -> bool:
    return _key(name) in NEEDS_WEIGHTS


def preprocess(name: str, image: Image.Image, folders=None, **options) -> Image.Image:
    """Run preprocessor `name` with its keyword options (e.g. low=/high= for canny). Those that run a
    model file (depth_anything_v2) take it as `weights`, else find the installed one in `folders`
    (a library.models_dir.ModelFolders)."""
    key = _key(name)
    if key not in PREPROCESSORS:
        raise InvalidArgument(f"preprocessor: {name!r} is not one of {', '.join(sorted(PREPROCESSORS))}")
    if not isinstance(image, Image.Image):
        raise InvalidArgument("image: a PIL image is required")
    if key in NEEDS_WEIGHTS and options.get("weights") is None:
        from .depth_anything_files import installed_weights
        options["weights"] = installed_weights(folders)
    try:
        return PREPROCESSORS[key](image, **options)
    except TypeError as e:
        raise InvalidArgument(f"preprocessor {name}: {e}") from None


def fit_image(image: Image.Image, width: int, height: int, mode: str = "just resize") -> Image.Image:
    """Resize a control map to the output size. Unlike photos, maps must keep thin lines: area
    averaging when shrinking, cubic when enlarging; "resize and fill" pads with black (no structure)."""
    import cv2

    if mode not in RESIZE_MODES:
        raise InvalidArgument(f"control resize_mode: {mode!r} is not one of {', '.join(RESIZE_MODES)}")
    arr = np.asarray(image.convert("RGB"))
    h0, w0 = arr.shape[:2]
    if (w0, h0) == (width, height):
        return Image.fromarray(arr)

    def scaled(w, h):
        interp = cv2.INTER_AREA if w * h < w0 * h0 else cv2.INTER_CUBIC
        return cv2.resize(arr, (max(w, 1), max(h, 1)), interpolation=interp)

    if mode == "just resize":
        return Image.fromarray(scaled(width, height))
    k = (max if mode == "crop and resize" else min)(width / w0, height / h0)
    w, h = max(1, round(w0 * k)), max(1, round(h0 * k))
    s = scaled(w, h)
    if mode == "crop and resize":
        left, top = (w - width) // 2, (h - height) // 2
        return Image.fromarray(s[top:top + height, left:left + width])
    canvas = np.zeros((height, width, 3), np.uint8)
    left, top = (width - w) // 2, (height - h) // 2
    canvas[top:top + h, left:left + w] = s[:height, :width]
    return Image.fromarray(canvas)
