"""Control-image preprocessors: turn a photo or drawing into the map a ControlNet was trained on.

Every preprocessor takes a PIL image and returns an RGB PIL image of the same size with white
structure on black (the convention of lllyasviel's ControlNet 1.0/1.1 models):

    canny      OpenCV Canny edges of the colour image (low/high hysteresis thresholds)
    softedge   HED soft edges (real BSDS500 HED weights, adapters/hed.py; controlnet_aux's own HED net
               when the user's ControlNetHED.pth is in the models folder or given as `weights`)
    softedge safe=True: the HED map quantised to 0, 1/2, 1 (controlnet_aux's safe step)
    scribble   controlnet_aux's fake scribble: HED ridges, blurred and thresholded into bold strokes
    tile       controlnet_aux's tile blur (shrink by 2**n, n pyrUp doublings)
    color      controlnet_aux's colour palette: one colour per 64-pixel cell
    lineart    simple line drawing from the grey image's gradient (no learned model)
    lineart_standard
               controlnet_aux's standard lineart: darkness against the blurred surround
    lineart_realistic / lineart_coarse / lineart_anime / lineart_manga (= lineart_anime_denoise)
               the learned line-art nets (adapters/lineart.py; the user's sk_model.pth, sk_model2.pth,
               netG.pth, erika.pth from lllyasviel/Annotators, found in the models folder or given as
               `weights`)
    softedge_pidinet / softedge_pidisafe / scribble_pidinet
               PiDiNet soft edges (adapters/pidinet.py; the user's table5_pidinet.pth from
               lllyasviel/Annotators): plain, safe-stepped, or made fake-scribble strokes;
               t2ia_sketch_pidi: the map thresholded at 0.5 (T2I-Adapter sketch)
    depth_anything_v2
               Depth Anything V2 relative depth, near = bright (adapters/depth_anything.py; the
               user's depth_anything_v2_vit{s,b,l}.pth, found in the models folder or given as `weights`)
    openpose   OpenPose body skeletons in the standard colours on black (adapters/openpose.py and
               openpose_body.py; the user's body_pose_model.pth from lllyasviel/Annotators)
    openpose_hand / openpose_face / openpose_full / openpose_faceonly
               the skeletons with hands and/or face landmarks (faceonly: the face alone) from the
               OpenPose hand and face nets (adapters/openpose_cpm.py, openpose_parts.py; the user's
               hand_pose_model.pth and facenet.pth besides body_pose_model.pth)
    dw_openpose_full (= dwpose)
               DWPose: the same drawing from the user's yolox_l.onnx and dw-ll_ucoco_384.onnx run by
               onnxruntime (adapters/dwpose.py; pip install "opensd[dwpose]")
    depth/pose/normal/seg/passthrough
               the user's own map (from an external estimator), used as it is
    invert     255 - image: a black-on-white sketch becomes white-on-black
    binary     threshold the grey image (white where brighter than `threshold`; 0: Otsu's)
    scribble_xdog / scribble_threshold
               controlnet_aux's XDoG scribble and its plain scribble (dark strokes of a drawing)
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
    # on the colour image, as controlnet_aux and sd-webui-controlnet run it (OpenCV takes the strongest
    # channel's gradient), not on its grey version: colour-only boundaries stay edges
    return _rgb(cv2.Canny(np.asarray(image.convert("RGB")), int(low), int(high)))


def safe_step(edges: np.ndarray, step: int = 2) -> np.ndarray:
    """controlnet_aux's "safe" soft edges: 0..1 quantised to `step` + 1 levels (0, 1/2, 1 for 2), so a
    ControlNet cannot read hidden detail from faint gradations."""
    return np.floor(edges.astype(np.float32) * float(step + 1)).astype(np.float32) / float(step)


def pidinet_u8(edge: np.ndarray, safe: bool = False, threshold: bool = False) -> np.ndarray:
    """The map in 0..255 as the originals make it: `threshold` (T2I sketch) edge > 0.5, `safe` the
    3-level safe step, then x 255 truncated."""
    if threshold:
        edge = (edge > 0.5).astype(np.float32)
    if safe:
        edge = safe_step(edge)
    return np.clip(edge * 255.0, 0, 255).astype(np.uint8)


def _hed_u8(image: Image.Image, safe: bool, weights=None, device=None) -> np.ndarray:
    """The HED map as controlnet_aux quantises it: controlnet_aux's own net when its ControlNetHED.pth is
    given as `weights` (the map then keeps that net's padding to multiples of 64; callers crop), else
    the shipped BSDS500 HED."""
    from . import hed

    if weights is not None:
        edges = hed.controlnet_hed_edges(image, hed.load_controlnet_hed(weights, device))
    else:
        edges = hed.hed_edges(image)
    return np.clip((safe_step(edges) if safe else edges) * 255.0, 0, 255).astype(np.uint8)


def softedge(image: Image.Image, safe: bool = False, weights=None, device=None) -> Image.Image:
    return _rgb(_hed_u8(image, bool(safe), weights, device)[:image.height, :image.width])


def softedge_safe(image: Image.Image, weights=None, device=None) -> Image.Image:
    return softedge(image, True, weights, device)


def thin_lines(edges: np.ndarray, threshold: float, sigma: float) -> np.ndarray:
    """Non-maximum suppression along 4 directions of the blurred map, then a threshold: 1-pixel ridges
    (255) where the blurred value is a local maximum across the line and above `threshold`."""
    import cv2

    x = cv2.GaussianBlur(edges.astype(np.float32), (0, 0), sigma)
    ridge = np.zeros_like(x)
    for kernel in ([[0, 0, 0], [1, 1, 1], [0, 0, 0]], [[0, 1, 0], [0, 1, 0], [0, 1, 0]],
                   [[1, 0, 0], [0, 1, 0], [0, 0, 1]], [[0, 0, 1], [0, 1, 0], [1, 0, 0]]):
        peak = cv2.dilate(x, np.array(kernel, np.uint8)) == x
        ridge[peak] = x[peak]
    return np.where(ridge > threshold, 255, 0).astype(np.uint8)


def strokes(edges_u8: np.ndarray) -> np.ndarray:
    """The fake-scribble rule of controlnet_aux and the A1111 extension: the map's ridges (threshold 127,
    sigma 3), blurred (sigma 3), every pixel above 4 made a white (255) stroke."""
    import cv2

    return np.where(cv2.GaussianBlur(thin_lines(edges_u8, 127, 3.0), (0, 0), 3.0) > 4, 255, 0).astype(np.uint8)


def scribble(image: Image.Image, safe: bool = True, weights=None, device=None) -> Image.Image:
    """controlnet_aux's fake scribble (scribble_hed): `strokes` of the HED map."""
    return _rgb(strokes(_hed_u8(image, bool(safe), weights, device))[:image.height, :image.width])


def tile(image: Image.Image, pyrup_iters: int = 3) -> Image.Image:
    """controlnet_aux's tile blur: sides rounded to multiples of 64, shrunk (area) by 2**pyrup_iters
    and brought back up by as many cv2.pyrUp (Gaussian) doublings."""
    import cv2

    _check("pyrUp_iters", pyrup_iters, 1, 10)
    rgb = np.asarray(image.convert("RGB"))
    h, w = (max(64, int(np.round(n / 64.0)) * 64) for n in rgb.shape[:2])
    k = 2 ** int(pyrup_iters)
    small = cv2.resize(rgb, (max(1, w // k), max(1, h // k)), interpolation=cv2.INTER_AREA)
    for _ in range(int(pyrup_iters)):
        small = cv2.pyrUp(small)
    return Image.fromarray(small)


def color(image: Image.Image) -> Image.Image:
    """controlnet_aux's colour palette (T2I-Adapter color): one colour per 64x64 cell (cubic shrink by 64),
    blown back up with nearest neighbours."""
    import cv2

    rgb = np.asarray(image.convert("RGB"))
    h, w = rgb.shape[:2]
    if min(h, w) < 64:
        raise InvalidArgument(f"color: the image ({w}x{h}) must be at least 64 pixels on each side")
    cells = cv2.resize(rgb, (w // 64, h // 64), interpolation=cv2.INTER_CUBIC)
    return Image.fromarray(cv2.resize(cells, (w, h), interpolation=cv2.INTER_NEAREST))


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


def lineart_standard(image: Image.Image, sigma: float = 6.0, threshold: int = 8) -> Image.Image:
    """controlnet_aux's / the A1111 extension's lineart_standard (no learned model): how much darker each
    pixel is than its Gaussian surround (the least over R, G, B), scaled so the median of the values
    above `threshold` is 127 (a median under 16 counts as 16)."""
    import cv2

    _check("guassian_sigma", sigma, 0.01, 100.0)
    _check("intensity_threshold", threshold, 0, 255)
    x = np.asarray(image.convert("RGB"), dtype=np.float32)
    darker = np.min(cv2.GaussianBlur(x, (0, 0), float(sigma)) - x, axis=2).clip(0, 255)
    strong = darker[darker > threshold]
    scale = max(16.0, float(np.median(strong))) if strong.size else 16.0
    return _rgb(darker / scale * 127.0)


def _pidinet_u8(image: Image.Image, weights, device, safe: bool = False, threshold: bool = False) -> np.ndarray:
    from .pidinet import edges, load

    if weights is None:
        raise InvalidArgument("pidinet: no weights file (table5_pidinet.pth)")
    return pidinet_u8(edges(image, load(weights, device)), safe=safe, threshold=threshold)


def softedge_pidinet(image: Image.Image, safe: bool = False, weights=None, device=None) -> Image.Image:
    return _rgb(_pidinet_u8(image, weights, device, bool(safe)))


def softedge_pidisafe(image: Image.Image, weights=None, device=None) -> Image.Image:
    return softedge_pidinet(image, True, weights, device)


def scribble_pidinet(image: Image.Image, safe: bool = False, weights=None, device=None) -> Image.Image:
    """The A1111 extension's scribble_pidinet: `strokes` of the (plain) PiDiNet map."""
    return _rgb(strokes(_pidinet_u8(image, weights, device, bool(safe))))


def t2ia_sketch_pidi(image: Image.Image, weights=None, device=None) -> Image.Image:
    """The A1111 extension's T2I-Adapter sketch map: white where the PiDiNet edge probability is above 0.5."""
    return _rgb(_pidinet_u8(image, weights, device, threshold=True))


def depth_anything_v2(image: Image.Image, weights=None, device=None) -> Image.Image:
    """Depth Anything V2 relative depth, near = bright; `weights` the model file, `device` None: CUDA
    if there is one."""
    from .depth_anything import estimate_depth
    from .depth_anything_files import load_depth_anything

    if weights is None:
        raise InvalidArgument("depth_anything_v2: no weights file (depth_anything_v2_vitl.pth, vitb or vits)")
    depth = estimate_depth(load_depth_anything(weights, device), np.asarray(image.convert("RGB")))
    return _rgb(np.round(depth * 255.0))


def openpose(image: Image.Image, weights=None, device=None, xinsr: bool = False) -> Image.Image:
    """OpenPose body skeletons; xinsr: thicker sticks on big pictures."""
    from .openpose import load
    from .openpose_body import detect, draw

    if weights is None:
        raise InvalidArgument("openpose: no weights file (body_pose_model.pth)")
    rgb = np.asarray(image.convert("RGB"))
    return Image.fromarray(draw(detect(load(weights, device), rgb), *rgb.shape[:2], xinsr=xinsr))


def _openpose_parts(image: Image.Image, weights, device, xinsr: bool, body: bool, hands: bool,
                    face: bool) -> Image.Image:
    """OpenPose with hands and/or face: `weights` is openpose_cpm.find's {"body", "hand", "face"} files, or
    the body file alone (the others then looked for next to it)."""
    from .openpose_cpm import find, load
    from .openpose_parts import run

    if weights is None:
        raise InvalidArgument("openpose: no weights files (body_pose_model.pth, hand_pose_model.pth, facenet.pth)")
    if not isinstance(weights, dict):
        weights = find(None, hands, face, body=weights)
    rgb = np.asarray(image.convert("RGB"))
    return Image.fromarray(run(load(weights, device), rgb, body, hands, face, xinsr)[0])


def openpose_hand(image: Image.Image, weights=None, device=None, xinsr: bool = False) -> Image.Image:
    """Body skeletons and hands (hand_pose_model.pth besides body_pose_model.pth)."""
    return _openpose_parts(image, weights, device, xinsr, True, True, False)


def openpose_face(image: Image.Image, weights=None, device=None, xinsr: bool = False) -> Image.Image:
    """Body skeletons and face landmarks (facenet.pth besides body_pose_model.pth)."""
    return _openpose_parts(image, weights, device, xinsr, True, False, True)


def openpose_faceonly(image: Image.Image, weights=None, device=None) -> Image.Image:
    """Face landmarks alone (the body is found, to place the faces, but not drawn)."""
    return _openpose_parts(image, weights, device, False, False, False, True)


def openpose_full(image: Image.Image, weights=None, device=None, xinsr: bool = False) -> Image.Image:
    """Body skeletons, hands and face landmarks."""
    return _openpose_parts(image, weights, device, xinsr, True, True, True)


def dw_openpose_full(image: Image.Image, weights=None, device=None, xinsr: bool = False, body: bool = True,
                     hands: bool = True, face: bool = True) -> Image.Image:
    """DWPose body, hands and face; `weights` dwpose.find's {"detector", "pose"} ONNX files."""
    from .dwpose import load, run
    from .preprocessor_files import torch_device

    if not isinstance(weights, dict) or not weights.get("pose"):
        raise InvalidArgument('dwpose: weights must be {"detector": yolox_l.onnx path (or None), '
                              '"pose": dw-ll_ucoco_384.onnx path}')
    rgb = np.asarray(image.convert("RGB"))
    return Image.fromarray(run(load(weights, str(torch_device(device))), rgb, body, hands, face, xinsr)[0])


def lineart_realistic(image: Image.Image, weights=None, device=None) -> Image.Image:
    from .lineart import lineart_model
    return lineart_model(image, "realistic", weights, device)


def lineart_coarse(image: Image.Image, weights=None, device=None) -> Image.Image:
    from .lineart import lineart_model
    return lineart_model(image, "coarse", weights, device)


def lineart_anime(image: Image.Image, weights=None, device=None) -> Image.Image:
    from .lineart import lineart_model
    return lineart_model(image, "anime", weights, device)


def lineart_manga(image: Image.Image, weights=None, device=None) -> Image.Image:
    from .lineart import lineart_model
    return lineart_model(image, "manga", weights, device)


def passthrough(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


def invert(image: Image.Image) -> Image.Image:
    return _rgb(255 - _gray(image))


def binary(image: Image.Image, threshold: int = 127) -> Image.Image:
    """White where OpenCV's grey of the image is above `threshold`; 0 or 255: Otsu's threshold (as
    controlnet_aux and the A1111 extension do)."""
    import cv2

    _check("threshold", threshold, 0, 255)
    grey = cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2GRAY)
    if threshold in (0, 255):
        return _rgb(cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[1])
    return _rgb((grey > threshold).astype(np.uint8) * 255)


def scribble_threshold(image: Image.Image) -> Image.Image:
    """controlnet_aux's ScribblePreprocessor: black where the darkest channel is below 127, else white."""
    rgb = np.asarray(image.convert("RGB"))
    return _rgb(np.where(rgb.min(axis=2) < 127, 0, 255))


def scribble_xdog(image: Image.Image, threshold: int = 32) -> Image.Image:
    """controlnet_aux's / the A1111 extension's XDoG scribble: white where the difference of Gaussians
    (sigma 5 minus sigma 0.5, the least over R, G, B) doubled exceeds `threshold`. The doubling is done
    in 8 bits as theirs is, so it wraps above 127 (a strong edge can drop out, as it does there)."""
    import cv2

    _check("threshold", threshold, 1, 255)
    x = np.asarray(image.convert("RGB"), dtype=np.float32)
    dog = (255 - np.min(cv2.GaussianBlur(x, (0, 0), 5.0) - cv2.GaussianBlur(x, (0, 0), 0.5), axis=2))
    dog = dog.clip(0, 255).astype(np.uint8)
    doubled = (2 * (255 - dog.astype(np.int32))) % 256
    return _rgb(np.where(doubled > threshold, 255, 0))


PREPROCESSORS: dict[str, Callable[..., Image.Image]] = {
    "canny": canny, "softedge": softedge, "hed": softedge,
    "softedgesafe": softedge_safe, "scribble": scribble, "scribblehed": scribble,
    "fakescribble": scribble, "scribblexdog": scribble_xdog,
    "scribblethreshold": scribble_threshold, "tile": tile, "color": color, "lineart": lineart,
    "lineartstandard": lineart_standard,
    "lineartrealistic": lineart_realistic, "lineartcoarse": lineart_coarse, "lineartanime": lineart_anime,
    "lineartmanga": lineart_manga, "lineartanimedenoise": lineart_manga,
    "depthanythingv2": depth_anything_v2, "openpose": openpose,
    "openposehand": openpose_hand, "openposeface": openpose_face, "openposefaceonly": openpose_faceonly,
    "openposefull": openpose_full, "dwopenposefull": dw_openpose_full, "dwpose": dw_openpose_full,
    "softedgepidinet": softedge_pidinet, "pidinet": softedge_pidinet, "softedgepidisafe": softedge_pidisafe,
    "pidinetsafe": softedge_pidisafe, "scribblepidinet": scribble_pidinet, "pidinetscribble": scribble_pidinet,
    "t2iasketchpidi": t2ia_sketch_pidi, "pidinetsketch": t2ia_sketch_pidi,
    "depth": passthrough, "pose": passthrough, "normal": passthrough, "seg": passthrough,
    "passthrough": passthrough, "none": passthrough, "invert": invert, "binary": binary,
}


# preprocessors that run a user's model file: key -> the learned lineart kind (None: Depth Anything;
# "pidinet": PiDiNet's file; "openpose": the OpenPose body model; "openpose_*": it and the hand/face models;
# "dwpose": DWPose's two ONNX files)
NEEDS_WEIGHTS = {"depthanythingv2": None, "openpose": "openpose", "openposehand": "openpose_hand",
                 "openposeface": "openpose_face", "openposefaceonly": "openpose_face",
                 "openposefull": "openpose_full", "dwopenposefull": "dwpose", "dwpose": "dwpose",
                 "lineartrealistic": "realistic",
                 "lineartcoarse": "coarse", "lineartanime": "anime", "lineartmanga": "manga", "lineartanimedenoise": "manga",
                 **{key: "pidinet" for key in ("softedgepidinet", "pidinet", "softedgepidisafe", "pidinetsafe",
                                               "scribblepidinet", "pidinetscribble", "t2iasketchpidi",
                                               "pidinetsketch")}}


def _key(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


def needs_weights(name: str) -> bool:
    return _key(name) in NEEDS_WEIGHTS


# preprocessors that use a model file when the user has it: key -> its name (else a shipped model)
OPTIONAL_WEIGHTS = {key: "ControlNetHED.pth" for key in
                    ("softedge", "hed", "softedgesafe", "scribble", "scribblehed", "fakescribble")}


def optional_weights(name: str, folders):
    """The installed model file an OPTIONAL_WEIGHTS preprocessor prefers, or None."""
    from .preprocessor_files import match_file

    file = OPTIONAL_WEIGHTS.get(_key(name))
    return match_file(folders, file) if file and folders is not None else None


def installed_weights(name: str, folders):
    """The model file preprocessor `name` runs, found in the models folder's preprocessor folders (an
    InvalidArgument naming the file and where to put it when it is not there)."""
    kind = NEEDS_WEIGHTS[_key(name)]
    if kind is None:
        from .depth_anything_files import installed_weights as depth_file
        return depth_file(folders)
    if kind == "pidinet":
        from .pidinet import find as pidinet_file
        return pidinet_file(folders)
    if kind == "openpose":
        from .openpose import find as openpose_file
        return openpose_file(folders)
    if kind.startswith("openpose_"):
        return _openpose_files(kind, folders)
    if kind == "dwpose":
        from .dwpose import find as dwpose_files
        return dwpose_files(folders)
    from .lineart import find
    return find(folders, kind)


def _openpose_files(kind: str, folders, body=None) -> dict[str, str]:
    """openpose_hand/_face/_full's {"body", "hand", "face"} files (`body`: the user's body file)."""
    from .openpose_cpm import find

    return find(folders, hand=kind != "openpose_face", face=kind != "openpose_hand", body=body)


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
        options["weights"] = installed_weights(key, folders)
    elif str(NEEDS_WEIGHTS.get(key)).startswith("openpose_") and not isinstance(options["weights"], dict):
        options["weights"] = _openpose_files(NEEDS_WEIGHTS[key], folders, body=options["weights"])
    elif NEEDS_WEIGHTS.get(key) == "dwpose" and not isinstance(options["weights"], dict):
        from .dwpose import find as dwpose_files
        options["weights"] = dwpose_files(folders, pose_path=options["weights"])  # the pose model's file
    elif key in OPTIONAL_WEIGHTS and options.get("weights") is None:
        options["weights"] = optional_weights(key, folders)
    try:
        return PREPROCESSORS[key](image, **options)
    except TypeError as e:
        raise InvalidArgument(f"preprocessor {name}: {e}") from None


def pixel_perfect_resolution(w: int, h: int, width: int, height: int, fill: bool) -> int:
    """sd-webui-controlnet's pixel-perfect resolution: a w x h map's short side at the scale it is fitted
    to width x height by (the smaller scale for "resize and fill", the larger otherwise)."""
    k = (min if fill else max)(height / h, width / w)
    return max(1, round(k * min(w, h)))


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


def control_image(image: Image.Image, width: int, height: int, mode: str = "just resize") -> "torch.Tensor":
    """(1, C, height, width) in [0, 1]: RGB for 3-channel ControlNets (other modes converted)."""
    import torch

    try:
        rgb = image.convert("RGB")
    except (OSError, ValueError) as e:
        raise InvalidArgument(f"control image: cannot be read as an image ({e})") from None
    rgb = fit_image(rgb, width, height, mode)
    arr = np.asarray(rgb, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()
