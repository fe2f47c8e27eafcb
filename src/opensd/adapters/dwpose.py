"""DWPose (Yang et al., "Effective Whole-body Pose Estimation with Two-stages Distillation", ICCV 2023
workshops): the A1111 ControlNet extension's ``dw_openpose_full`` and comfyui_controlnet_aux's
DWPreprocessor. Two ONNX files the user already has run through onnxruntime (the optional extra
``pip install "opensd[dwpose]"``; an ONNX file is a protobuf graph, nothing in it is executed as code):
``yolox_l.onnx`` finds the people (adapters/dwpose_detect.py) and the RTMPose whole-body model
``dw-ll_ucoco_384.onnx`` places 133 COCO-WholeBody keypoints in each person's box (top-down):

1. the box (x1, y1, x2, y2) becomes a centre and a size x 1.25, the size widened or heightened to the
   model's aspect (288 / 384), and that rectangle is warped (bilinear, black outside) onto the
   288 x 384 input, normalised by the ImageNet mean (123.675, 116.28, 103.53) and std (58.395, 57.12,
   57.375) in the picture's RGB order (``crop``);
2. SimCC decoding: per keypoint the argmax of its x logits (576 = 2 x 288 bins) and of its y logits
   (768), divided by the split ratio 2.0; its score is the smaller of the two maxima (a score <= 0
   puts the point at bin -1); the input position goes back to the picture through the crop's
   inverse (``decode_simcc``);
3. the COCO order becomes OpenPose's 18 body points (the neck the mean of the shoulders, seen when
   both shoulders score above 0.3), then 6 foot points, 68 face points, the left and the right hand's
   21 (``to_openpose``); a point is drawn where its score is at least 0.3; the face gets the two eyes
   of the body as points 69 and 70, as OpenPose's 70-point face has them;
4. drawing: OpenPose's (adapters/openpose_parts.draw): body sticks and dots, hands, face; as the
   references draw them, a hand or face point is left out when its whole-pixel x or y is below 1.
   The feet are found but not drawn (neither reference draws them).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InvalidArgument
from ..onnx_files import onnxruntime, session
from . import dwpose_detect
from .preprocessor_files import cached, require_file, require_file_near

DETECTOR_FILE, POSE_FILE = "yolox_l.onnx", "dw-ll_ucoco_384.onnx"
SOURCE = "huggingface.co/yzd-v/DWPose"
KEYPOINTS = 133
PADDING = 1.25
SPLIT_RATIO = 2.0
MEAN = np.array([123.675, 116.28, 103.53])
STD = np.array([58.395, 57.12, 57.375])
VISIBLE = 0.3
# OpenPose's 18 body points from COCO's 17 (17: the neck made from the shoulders)
OPENPOSE_BODY = [0, 17, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3]
FEET, FACE, LEFT_HAND, RIGHT_HAND = slice(17, 23), slice(23, 91), slice(91, 112), slice(112, 133)

Point = tuple[float, float]


def find(folders, detector: str | None = DETECTOR_FILE, pose: str = POSE_FILE,
         pose_path=None) -> dict[str, str | None]:
    """{"detector": path or None (no detector: the whole picture is one person), "pose": path}: the pose
    model `pose_path` when given, else `pose` found in the models folder's preprocessor folders; the
    detector found there or next to the pose model; an InvalidArgument naming a missing file."""
    pose_file = Path(pose_path) if pose_path is not None else require_file(folders, pose, "dwpose", SOURCE)
    out = {"detector": None, "pose": str(pose_file)}
    if detector is not None:
        out["detector"] = str(require_file_near(folders, detector, "dwpose", SOURCE, pose_file))
    return out


@dataclass
class Sessions:
    detector: object | None  # onnxruntime.InferenceSession of the YOLOX file (None: no detector)
    pose: object
    input_size: tuple[int, int]  # the pose model's (w, h)


def _input_size(session, path: str) -> tuple[int, int]:
    """The pose model's (w, h) from its input's shape, else from its name as controlnet_aux guesses it."""
    shape = session.get_inputs()[0].shape
    if len(shape) == 4 and all(isinstance(n, int) and n > 0 for n in shape[2:]):
        return int(shape[3]), int(shape[2])
    name = Path(path).name
    return (288, 384) if "384" in name else (256, 256) if "256" in name else (192, 256)


def load(files: dict, device: str = "cpu") -> Sessions:
    """The two sessions of `files` (find's), kept as the one cached preprocessor model."""
    ort = onnxruntime("dwpose", "dwpose")

    def make():
        pose = session(ort, files["pose"], device, "dwpose")
        detector = session(ort, files["detector"], device, "dwpose") if files.get("detector") else None
        return Sessions(detector, pose, _input_size(pose, files["pose"]))

    key = ("dwpose", files.get("detector"), files["pose"], device)
    return cached(key, make)


def box_to_centre_scale(box, input_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(centre (x, y), size (w, h)) of the rectangle cropped for a box: padded by 1.25 and grown to the
    input's aspect."""
    x1, y1, x2, y2 = (float(v) for v in box)
    centre = np.array([x1 + x2, y1 + y2]) * 0.5
    w, h = (x2 - x1) * PADDING, (y2 - y1) * PADDING
    aspect = input_size[0] / input_size[1]
    scale = np.array([w, w / aspect]) if w > h * aspect else np.array([h * aspect, h])
    return centre, scale


def warp_matrix(centre: np.ndarray, scale: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """The 2 x 3 affine map of the rectangle onto the input (from three point pairs in float32, as the
    reference computes it)."""
    import cv2

    w, h = input_size
    half = scale[0] * 0.5
    src = np.array([centre, centre - [0, half], centre - [half, half]], np.float32)
    dst = np.array([[w / 2, h / 2], [w / 2, h / 2 - w / 2], [0, h / 2 - w / 2]], np.float32)
    return cv2.getAffineTransform(src, dst)


def crop(rgb: np.ndarray, centre: np.ndarray, scale: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """The (1, 3, h, w) float32 model input for one person."""
    import cv2

    warped = cv2.warpAffine(rgb, warp_matrix(centre, scale, input_size), input_size, flags=cv2.INTER_LINEAR)
    return np.ascontiguousarray(((warped - MEAN) / STD).transpose(2, 0, 1)[None], dtype=np.float32)


def decode_simcc(simcc_x: np.ndarray, simcc_y: np.ndarray, centre, scale,
                 input_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(keypoints (K, 2) in picture pixels, scores (K,)) of one person's SimCC logits (K, 2w), (K, 2h)."""
    locs = np.stack([np.argmax(simcc_x, 1), np.argmax(simcc_y, 1)], 1).astype(np.float64)
    scores = np.minimum(simcc_x.max(1), simcc_y.max(1)).astype(np.float64)
    locs[scores <= 0] = -1
    locs /= SPLIT_RATIO
    return locs / np.array(input_size) * scale + centre - scale / 2, scores


def estimate(sessions: Sessions, rgb: np.ndarray, boxes) -> tuple[np.ndarray, np.ndarray]:
    """(keypoints (n, 133, 2), scores (n, 133)) of the people in `boxes` (one model run per box)."""
    points, scores = [], []
    for box in boxes:
        centre, scale = box_to_centre_scale(box, sessions.input_size)
        sx, sy = dwpose_detect.feed(sessions.pose, crop(rgb, centre, scale, sessions.input_size))[:2]
        if sx.shape[1] != KEYPOINTS:
            raise InvalidArgument(f"dwpose: the pose model gave {sx.shape[1]} keypoints, not the {KEYPOINTS} of "
                                  f"COCO-WholeBody ({POSE_FILE})")
        p, s = decode_simcc(sx[0], sy[0], centre, scale, sessions.input_size)
        points.append(p)
        scores.append(s)
    return np.array(points).reshape(-1, KEYPOINTS, 2), np.array(scores).reshape(-1, KEYPOINTS)


def _part(points: np.ndarray, scores: np.ndarray) -> list[Point | None] | None:
    """The points scored at least 0.3 (others None); None when none is."""
    out = [(float(x), float(y)) if s >= VISIBLE else None for (x, y), s in zip(points, scores)]
    return None if all(p is None for p in out) else out


def to_openpose(points: np.ndarray, scores: np.ndarray) -> tuple[list, list[dict]]:
    """(people: per person 18 OpenPose body points, parts: per person {"left", "right", "face", "feet"}),
    points in pixels, None where unseen (a hand, face or the feet wholly unseen: None)."""
    people, parts = [], []
    for p, s in zip(points, scores):
        neck = (p[5] + p[6]) / 2
        neck_seen = 1.0 if s[5] > VISIBLE and s[6] > VISIBLE else 0.0
        p18, s18 = np.vstack([p[:17], neck]), np.append(s[:17], neck_seen)
        body = _part(p18[OPENPOSE_BODY], s18[OPENPOSE_BODY]) or [None] * 18
        face = _part(p[FACE], s[FACE])
        people.append(body)
        parts.append({"left": _part(p[LEFT_HAND], s[LEFT_HAND]), "right": _part(p[RIGHT_HAND], s[RIGHT_HAND]),
                      "face": None if face is None else face + [body[14], body[15]],
                      "feet": _part(p[FEET], s[FEET])})
    return people, parts


def detect(sessions: Sessions, rgb: np.ndarray) -> tuple[list, list[dict]]:
    """to_openpose's people and parts of an RGB uint8 picture (no detector: the whole picture is one box;
    no person found: none)."""
    h, w = rgb.shape[:2]
    if sessions.detector is None:
        boxes = np.array([[0, 0, w, h]], np.float64)
    else:
        boxes = dwpose_detect.detect_people(sessions.detector, rgb)
    return to_openpose(*estimate(sessions, rgb, boxes))


def _drawable(points: list[Point | None] | None) -> list[Point | None] | None:
    """The references skip a hand or face point whose whole-pixel x or y is below 1."""
    if points is None:
        return None
    return [p if p is not None and int(p[0]) >= 1 and int(p[1]) >= 1 else None for p in points]


def draw(people: list, parts: list[dict], h: int, w: int, body: bool = True, hands: bool = True,
         face: bool = True, xinsr: bool = False) -> np.ndarray:
    """The pose picture (RGB uint8, h x w) with OpenPose's drawing; `body`/`hands`/`face` as asked."""
    from .openpose_parts import draw as draw_openpose

    shown = [{"left": _drawable(q["left"]) if hands else None, "right": _drawable(q["right"]) if hands else None,
              "face": _drawable(q["face"]) if face else None} for q in parts]
    return draw_openpose(people, shown, h, w, body=body, xinsr=xinsr)


def run(sessions: Sessions, rgb: np.ndarray, body: bool = True, hands: bool = True, face: bool = True,
        xinsr: bool = False) -> tuple[np.ndarray, dict]:
    """Detect and draw: (the RGB picture, its OpenPose JSON with pixel coordinates, as DWPose writes it)."""
    from .openpose_body import as_openpose_json

    h, w = rgb.shape[:2]
    people, parts = detect(sessions, rgb)
    return draw(people, parts, h, w, body, hands, face, xinsr), as_openpose_json(people, h, w, parts, pixels=True)
