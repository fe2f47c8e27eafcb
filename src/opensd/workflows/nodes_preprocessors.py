"""ComfyUI controlnet_aux's preprocessor nodes (Fannovel16/comfyui_controlnet_aux), with its node
names and inputs so graphs written for it (Krita AI Diffusion's among them) run here. Each returns an
IMAGE whose short side is `resolution` (aspect kept), as controlnet_aux returns it:

* CannyEdgePreprocessor (low/high threshold), HEDPreprocessor (safe: the 3-level quantised map),
  FakeScribblePreprocessor (HED ridges made bold strokes), TilePreprocessor (pyrUp_iters blur),
  ColorPreprocessor (64-pixel colour cells), LineartStandardPreprocessor, ScribblePreprocessor,
  Scribble_XDoG_Preprocessor, BinaryPreprocessor (0: Otsu's threshold): adapters/preprocessors.py,
  run on the image scaled to `resolution` first, as controlnet_aux does. HED is controlnet_aux's own net when the user's
  ControlNetHED.pth is in the preprocessor folders, else the shipped BSDS500 HED (assets/hed), whose
  soft edges differ somewhat in strength.
* PiDiNetPreprocessor (safe) and Scribble_PiDiNet_Preprocessor: PiDiNet soft edges (adapters/pidinet.py,
  the user's table5_pidinet.pth), plain or safe-stepped, or made fake-scribble strokes.
* LineArtPreprocessor (coarse: sk_model2.pth, else sk_model.pth), AnimeLineArtPreprocessor (netG.pth)
  and Manga2Anime_LineArt_Preprocessor (erika.pth, run at the next multiple of 256): the learned
  line-art nets of adapters/lineart.py.
* DepthAnythingV2Preprocessor: Depth Anything V2 relative depth, near = bright, on the full image.
* OpenposePreprocessor: OpenPose body skeletons (body_pose_model.pth; adapters/openpose_body.py), hands
  (hand_pose_model.pth) and face landmarks (facenet.pth; adapters/openpose_parts.py) as detect_* say,
  and their POSE_KEYPOINT (OpenPose JSON, one dict per picture).
* DWPreprocessor: DWPose (adapters/dwpose.py; the user's yolox_l.onnx and dw-ll_ucoco_384.onnx through
  onnxruntime, opensd[dwpose]): the same drawing and POSE_KEYPOINT (pixel coordinates, as there), found
  and drawn on the picture as it comes, the map then scaled to `resolution`. bbox_detector "None" takes
  the whole picture as one person; the TorchScript and YOLO-NAS choices are refused (a TorchScript file
  is a pickle; YOLO-NAS is not implemented).
* AIO_Preprocessor: one of the above by node name with its defaults (the pose nodes: their IMAGE).
* ImageGenResolutionFromImage, PixelPerfectResolution: the image's size; the extension's pixel-perfect
  short side.

Model files are looked up in the models folder's preprocessor folders (library.models_dir
"preprocessors"); nothing is downloaded.
"""
from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from ..adapters import preprocessors as P
from ..adapters.depth_anything_files import CKPT_NAMES, DEFAULT_CKPT, find_weights
from ..errors import InvalidArgument
from ..pipeline.device import resolve_device
from .types import MAX_RESOLUTION, NodeDef, check_size, register

CATEGORY = "ControlNet Preprocessors"
LINES = CATEGORY + "/Line Extractors"
RESOLUTION = ("INT", {"default": 512, "min": 64, "max": MAX_RESOLUTION, "step": 64})
ENABLE = (["enable", "disable"], {"default": "enable"})


def short_side(image: Image.Image, resolution: int) -> Image.Image:
    """`image` scaled so its short side is `resolution` (controlnet_aux's output size)."""
    w, h = image.size
    k = resolution / min(w, h)
    size = (max(1, round(w * k)), max(1, round(h * k)))
    check_size("image", size[1], size[0], 3)
    return P.fit_image(image, *size)


def each_image(call, image: torch.Tensor, resolution: int, make, before: bool = True,
               detect: int | None = None) -> tuple[torch.Tensor]:
    """Run `make(PIL RGB) -> PIL` on every picture of an IMAGE batch; the result has its short side at
    `resolution`. before: the picture is scaled first to `detect` (controlnet_aux's detect resolution;
    default `resolution`)."""
    maps = []
    for i, picture in enumerate(image):
        rgb = Image.fromarray((picture[..., :3].clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy())
        out = make(short_side(rgb, detect or resolution) if before else rgb)
        maps.append(np.asarray(short_side(out, resolution).convert("RGB")))
        call.progress(i + 1, image.shape[0])
    return (torch.from_numpy(np.stack(maps)).float() / 255.0,)


def _on(name: str, value) -> bool:
    if value not in ("enable", "disable"):
        raise InvalidArgument(f"{name}: {value!r} must be enable or disable")
    return value == "enable"


def canny(call, image, low_threshold=100, high_threshold=200, resolution=512):
    return each_image(call, image, resolution, lambda im: P.canny(im, low_threshold, high_threshold))


def _hed_node(call, image, safe, resolution, fn):
    on, device = _on("safe", safe), resolve_device(call.ctx.device)
    weights = P.optional_weights("hed", call.ctx.folders)  # controlnet_aux's own HED when installed
    return each_image(call, image, resolution, lambda im: fn(im, on, weights, device))


def hed(call, image, safe="enable", resolution=512):
    return _hed_node(call, image, safe, resolution, P.softedge)


def fake_scribble(call, image, safe="enable", resolution=512):
    return _hed_node(call, image, safe, resolution, P.scribble)


def pidinet(call, image, safe="enable", resolution=512):
    from ..adapters.pidinet import find

    on, path, device = _on("safe", safe), find(call.ctx.folders), resolve_device(call.ctx.device)
    return each_image(call, image, resolution, lambda im: P.softedge_pidinet(im, on, path, device))


def scribble_pidinet(call, image, safe="enable", resolution=512):
    """controlnet_aux's Scribble_PiDiNet_Preprocessor: its detector makes strokes of the padded map, and
    the node makes strokes of those again (both as there)."""
    from ..adapters.pidinet import edges, find, load

    on, net = _on("safe", safe), load(find(call.ctx.folders), resolve_device(call.ctx.device))

    def make(im):
        once = P.strokes(P.pidinet_u8(edges(im, net, crop=False), safe=on))[:im.height, :im.width]
        return Image.fromarray(P.strokes(once)).convert("RGB")
    return each_image(call, image, resolution, make)


def scribble_lines(call, image, resolution=512):
    return each_image(call, image, resolution, P.scribble_threshold)


def scribble_xdog(call, image, threshold=32, resolution=512):
    return each_image(call, image, resolution, lambda im: P.scribble_xdog(im, threshold))


def binary(call, image, bin_threshold=100, resolution=512):
    return each_image(call, image, resolution, lambda im: P.binary(im, bin_threshold))


def tile(call, image, pyrUp_iters=3, resolution=512):
    return each_image(call, image, resolution, lambda im: P.tile(im, pyrUp_iters))


def color(call, image, resolution=512):
    return each_image(call, image, resolution, P.color)


def lineart_standard(call, image, guassian_sigma=6.0, intensity_threshold=8, resolution=512):
    return each_image(call, image, resolution, lambda im: P.lineart_standard(im, guassian_sigma, intensity_threshold))


def _lineart(call, image, kind: str, resolution: int):
    from ..adapters.lineart import detect_resolution, extract, find, load

    net = load(find(call.ctx.folders, kind), kind, resolve_device(call.ctx.device))
    return each_image(call, image, resolution, lambda im: extract(im, net), detect=detect_resolution(kind, resolution))


def lineart(call, image, coarse="disable", resolution=512):
    return _lineart(call, image, "coarse" if _on("coarse", coarse) else "realistic", resolution)


def anime_lineart(call, image, resolution=512):
    return _lineart(call, image, "anime", resolution)


def manga_lineart(call, image, resolution=512):
    return _lineart(call, image, "manga", resolution)


def depth_anything(call, image, ckpt_name=DEFAULT_CKPT, resolution=512):
    path = find_weights(call.ctx.folders, ckpt_name)
    device = resolve_device(call.ctx.device)
    return each_image(call, image, resolution, lambda im: P.depth_anything_v2(im, path, device), before=False)


def _node(name, fn, optional, category, display):
    return register(NodeDef(name, fn, {"image": ("IMAGE", {})}, ("IMAGE",), optional=optional, category=category,
                            display_name=display, module="custom_nodes.comfyui_controlnet_aux"))


_threshold = {"min": 0, "max": 255, "step": 1}
NODES = {n.name: n for n in (
    _node("CannyEdgePreprocessor", canny, {"low_threshold": ("INT", {"default": 100, **_threshold}),
                                           "high_threshold": ("INT", {"default": 200, **_threshold}),
                                           "resolution": RESOLUTION}, LINES, "Canny Edge"),
    _node("HEDPreprocessor", hed, {"safe": ENABLE, "resolution": RESOLUTION}, LINES, "HED Soft-Edge Lines"),
    _node("FakeScribblePreprocessor", fake_scribble, {"safe": ENABLE, "resolution": RESOLUTION}, LINES,
          "Fake Scribble Lines (aka scribble_hed)"),
    _node("PiDiNetPreprocessor", pidinet, {"safe": ENABLE, "resolution": RESOLUTION}, LINES,
          "PiDiNet Soft-Edge Lines"),
    _node("Scribble_PiDiNet_Preprocessor", scribble_pidinet, {"safe": ENABLE, "resolution": RESOLUTION}, LINES,
          "Scribble PiDiNet Lines"),
    _node("ScribblePreprocessor", scribble_lines, {"resolution": RESOLUTION}, LINES, "Scribble Lines"),
    _node("Scribble_XDoG_Preprocessor", scribble_xdog, {"threshold": ("INT", {"default": 32, "min": 1, "max": 64}),
                                                        "resolution": RESOLUTION}, LINES, "Scribble XDoG Lines"),
    _node("BinaryPreprocessor", binary, {"bin_threshold": ("INT", {"default": 100, **_threshold}),
                                         "resolution": RESOLUTION}, LINES, "Binary Lines"),
    _node("TilePreprocessor", tile, {"pyrUp_iters": ("INT", {"default": 3, "min": 1, "max": 10, "step": 1}),
                                     "resolution": RESOLUTION}, CATEGORY + "/tile", "Tile"),
    _node("ColorPreprocessor", color, {"resolution": RESOLUTION}, CATEGORY + "/T2IAdapter-only", "Color Pallete"),
    _node("LineartStandardPreprocessor", lineart_standard,
          {"guassian_sigma": ("FLOAT", {"default": 6.0, "min": 0.0, "max": 100.0}),
           "intensity_threshold": ("INT", {"default": 8, "min": 0, "max": 16}), "resolution": RESOLUTION},
          LINES, "Standard Lineart"),
    _node("LineArtPreprocessor", lineart, {"coarse": (["disable", "enable"], {"default": "disable"}),
                                           "resolution": RESOLUTION}, LINES, "Realistic Lineart"),
    _node("AnimeLineArtPreprocessor", anime_lineart, {"resolution": RESOLUTION}, LINES, "Anime Lineart"),
    _node("Manga2Anime_LineArt_Preprocessor", manga_lineart, {"resolution": RESOLUTION}, LINES,
          "Manga Lineart (aka lineart_anime_denoise)"),
    _node("DepthAnythingV2Preprocessor", depth_anything,
          {"ckpt_name": (list(CKPT_NAMES), {"default": DEFAULT_CKPT}), "resolution": RESOLUTION},
          CATEGORY + "/Normal and Depth Estimators", "Depth Anything V2 - Relative"),
)}


def openpose(call, image, detect_hand="enable", detect_body="enable", detect_face="enable", resolution=512,
             scale_stick_for_xinsr_cn="disable"):
    """Body skeletons, hands and face as asked, and their OpenPose JSON (the body is always detected: the
    hands and face are found from it)."""
    from ..adapters.openpose_cpm import find, load
    from ..adapters.openpose_parts import run

    hand, body, face = _on("detect_hand", detect_hand), _on("detect_body", detect_body), _on("detect_face", detect_face)
    xinsr = _on("scale_stick_for_xinsr_cn", scale_stick_for_xinsr_cn)
    try:
        files = find(call.ctx.folders, hand, face)
    except InvalidArgument as e:
        raise InvalidArgument(f"{e} (or set detect_hand / detect_face to disable)") from None
    nets = load(files, resolve_device(call.ctx.device))
    docs = []

    def make(im):
        picture, doc = run(nets, np.asarray(im.convert("RGB")), body, hand, face, xinsr)
        docs.append(doc)
        return Image.fromarray(picture)

    maps = each_image(call, image, resolution, make)
    return {"ui": {"openpose_json": [json.dumps(docs, indent=4)]}, "result": (maps[0], docs)}


OPENPOSE = register(NodeDef(
    "OpenposePreprocessor", openpose, {"image": ("IMAGE", {})}, ("IMAGE", "POSE_KEYPOINT"),
    optional={"detect_hand": ENABLE, "detect_body": ENABLE, "detect_face": ENABLE, "resolution": RESOLUTION,
              "scale_stick_for_xinsr_cn": (["disable", "enable"], {"default": "disable"})},
    category=CATEGORY + "/Faces and Poses Estimators", display_name="OpenPose Pose",
    module="custom_nodes.comfyui_controlnet_aux"))
DETECTORS = ["None", "yolox_l.torchscript.pt", "yolox_l.onnx", "yolo_nas_l_fp16.onnx", "yolo_nas_m_fp16.onnx",
             "yolo_nas_s_fp16.onnx"]
POSE_MODELS = ["dw-ll_ucoco_384_bs5.torchscript.pt", "dw-ll_ucoco_384.onnx", "dw-ll_ucoco.onnx"]


def dwpose(call, image, detect_hand="enable", detect_body="enable", detect_face="enable", resolution=512,
           bbox_detector="yolox_l.onnx", pose_estimator="dw-ll_ucoco_384.onnx", scale_stick_for_xinsr_cn="disable"):
    """DWPose's body, hands and face as asked, and their OpenPose JSON."""
    from ..adapters.dwpose import find, load, run

    hand, body, face = _on("detect_hand", detect_hand), _on("detect_body", detect_body), _on("detect_face", detect_face)
    xinsr = _on("scale_stick_for_xinsr_cn", scale_stick_for_xinsr_cn)
    for field, value, choices in (("bbox_detector", bbox_detector, DETECTORS),
                                  ("pose_estimator", pose_estimator, POSE_MODELS)):
        if value not in choices:
            raise InvalidArgument(f"{field}: {value!r} is not one of {', '.join(choices)}")
        if (value != "None" and not value.endswith(".onnx")) or value.startswith("yolo_nas"):
            raise InvalidArgument(f"{field}: {value} is not supported here (TorchScript files are pickles, "
                                  "YOLO-NAS is not implemented); choose yolox_l.onnx / dw-ll_ucoco_384.onnx")
    files = find(call.ctx.folders, None if bbox_detector == "None" else bbox_detector, pose_estimator)
    sessions = load(files, str(resolve_device(call.ctx.device)))
    docs = []

    def make(im):
        picture, doc = run(sessions, np.asarray(im.convert("RGB")), body, hand, face, xinsr)
        docs.append(doc)
        return Image.fromarray(picture)

    maps = each_image(call, image, resolution, make, before=False)
    return {"ui": {"openpose_json": [json.dumps(docs, indent=4)]}, "result": (maps[0], docs)}


DWPOSE = register(NodeDef(
    "DWPreprocessor", dwpose, {"image": ("IMAGE", {})}, ("IMAGE", "POSE_KEYPOINT"),
    optional={"detect_hand": ENABLE, "detect_body": ENABLE, "detect_face": ENABLE, "resolution": RESOLUTION,
              "bbox_detector": (DETECTORS, {"default": "yolox_l.onnx"}),
              "pose_estimator": (POSE_MODELS, {"default": "dw-ll_ucoco_384.onnx"}),
              "scale_stick_for_xinsr_cn": (["disable", "enable"], {"default": "disable"})},
    category=CATEGORY + "/Faces and Poses Estimators", display_name="DWPose Estimator",
    module="custom_nodes.comfyui_controlnet_aux"))
AIO_NODES = {**NODES, OPENPOSE.name: OPENPOSE, DWPOSE.name: DWPOSE}
AIO_NAMES = ["none", *AIO_NODES]


def aio(call, image, preprocessor="none", resolution=512):
    """controlnet_aux's AIO_Preprocessor: the named node with its defaults at `resolution`."""
    if preprocessor == "none":
        return (image,)
    node = AIO_NODES.get(preprocessor)
    if node is None:
        raise InvalidArgument(f"preprocessor: {preprocessor!r} is not supported here; the supported ones are "
                              f"{', '.join(AIO_NAMES)}")
    defaults = {k: spec[1]["default"] for k, spec in node.optional.items() if k != "resolution"}
    out = node.fn(call, image, resolution=resolution, **defaults)
    return (out["result"][0],) if isinstance(out, dict) else out  # the IMAGE alone (the pose JSON dropped)


register(NodeDef(
    "AIO_Preprocessor", aio, {"image": ("IMAGE", {})}, ("IMAGE",),
    optional={"preprocessor": (AIO_NAMES, {"default": "none"}), "resolution": RESOLUTION},
    category=CATEGORY, display_name="AIO Aux Preprocessor", module="custom_nodes.comfyui_controlnet_aux"))


def gen_resolution(call, image):
    return int(image.shape[2]), int(image.shape[1])


register(NodeDef(
    "ImageGenResolutionFromImage", gen_resolution, {"image": ("IMAGE", {})}, ("INT", "INT"),
    output_names=("IMAGE_GEN_WIDTH (INT)", "IMAGE_GEN_HEIGHT (INT)"), category=CATEGORY,
    display_name="Generation Resolution From Image", module="custom_nodes.comfyui_controlnet_aux"))

RESIZE_MODES = ["Just Resize", "Crop and Resize", "Resize and Fill"]


def pixel_perfect(call, original_image, image_gen_width, image_gen_height, resize_mode="Just Resize"):
    """The extension's pixel-perfect resolution: the image's short side at the scale it is fitted to the
    generation size by (the smaller scale for Resize and Fill, the larger otherwise)."""
    if resize_mode not in RESIZE_MODES:
        raise InvalidArgument(f"resize_mode: {resize_mode!r} is not one of {', '.join(RESIZE_MODES)}")
    h, w = int(original_image.shape[1]), int(original_image.shape[2])
    return (P.pixel_perfect_resolution(w, h, image_gen_width, image_gen_height, resize_mode == "Resize and Fill"),)


_gen = {"default": 512, "min": 64, "max": 8192, "step": 8}
register(NodeDef(
    "PixelPerfectResolution", pixel_perfect,
    {"original_image": ("IMAGE", {}), "image_gen_width": ("INT", dict(_gen)), "image_gen_height": ("INT", dict(_gen)),
     "resize_mode": (RESIZE_MODES, {"default": "Just Resize"})}, ("INT",), output_names=("RESOLUTION (INT)",),
    category=CATEGORY, display_name="Pixel Perfect Resolution", module="custom_nodes.comfyui_controlnet_aux"))
