"""DWPose's person detector: YOLOX-L (Megvii) as the ONNX file ``yolox_l.onnx`` that DWPose
(IDEA-Research), the A1111 ControlNet extension and comfyui_controlnet_aux run.

1. letterbox: the picture (RGB, as the references pass it) scaled by r = min(640 / h, 640 / w) to
   int(w r) x int(h r) (bilinear), put in the top-left corner of a 640 x 640 canvas of grey 114, fed
   as float32 CHW without any normalisation (``letterbox``);
2. decoding: the network's (1, 8400, 85) rows are the cells of its three grids (strides 8, 16, 32:
   80 x 80, 40 x 40, 20 x 20, row-major) with (x, y, log w, log h, objectness, 80 class scores); the
   centre is (offset + cell) x stride, the size exp(log size) x stride, and the box is scaled back
   by 1 / r (``decode``);
3. the person class (COCO class 0) alone: score = objectness x person score, boxes above 0.1 kept,
   greedy non-maximum suppression at IoU 0.45 with the "+1 pixel" box areas (``nms``), then the boxes
   above 0.3 (``detect_people``).
"""
from __future__ import annotations

import numpy as np

SIZE = 640
PAD_VALUE = 114
STRIDES = (8, 16, 32)
NMS_IOU, NMS_SCORE, PERSON_SCORE = 0.45, 0.1, 0.3


def letterbox(rgb: np.ndarray, size: int = SIZE) -> tuple[np.ndarray, float]:
    """(the (1, 3, size, size) float32 input, the scale r)."""
    import cv2

    h, w = rgb.shape[:2]
    r = min(size / h, size / w)
    canvas = np.full((size, size, 3), PAD_VALUE, np.uint8)
    sw, sh = int(w * r), int(h * r)
    canvas[:sh, :sw] = cv2.resize(rgb, (sw, sh), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(canvas.transpose(2, 0, 1)[None], dtype=np.float32), r


def grids(size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(each output row's cell (x, y), its stride) for a size x size input."""
    cells, strides = [], []
    for s in STRIDES:
        n = size // s
        ys, xs = np.mgrid[0:n, 0:n]
        cells.append(np.stack([xs.ravel(), ys.ravel()], 1))
        strides.append(np.full((n * n, 1), s))
    return np.concatenate(cells).astype(np.float64), np.concatenate(strides).astype(np.float64)


def decode(raw: np.ndarray, r: float, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(boxes (n, 4) as x1, y1, x2, y2 in picture pixels, person scores (n,)) of the output rows."""
    rows = np.asarray(raw, np.float64).reshape(-1, raw.shape[-1])
    cell, stride = grids(size)
    if len(rows) != len(cell):
        from ..errors import InvalidArgument
        raise InvalidArgument(f"dwpose: the detector gave {len(rows)} rows, a YOLOX detector at {size} x {size} "
                              f"gives {len(cell)}")
    centre = (rows[:, :2] + cell) * stride
    half = np.exp(rows[:, 2:4]) * stride / 2
    boxes = np.concatenate([centre - half, centre + half], 1) / r
    return boxes, rows[:, 4] * rows[:, 5]


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = NMS_IOU) -> list[int]:
    """Indices of the boxes kept, best first: each box drops the later ones overlapping it by more than
    `iou` (areas counted with the reference's +1 pixel)."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        order = rest[inter / (areas[i] + areas[rest] - inter) <= iou]
    return keep


def feed(session, x: np.ndarray) -> list[np.ndarray]:
    """The session's outputs (as float32) for the float32 input `x`, cast to float16 for a model that takes
    float16 (the fp16 copies of these files)."""
    spec = session.get_inputs()[0]
    x = x.astype(np.float16) if spec.type == "tensor(float16)" else x
    return [np.asarray(out, np.float32) for out in session.run(None, {spec.name: x})]


def detect_people(session, rgb: np.ndarray) -> np.ndarray:
    """The people in an RGB uint8 picture: boxes (n, 4) x1, y1, x2, y2 in pixels, best first."""
    x, r = letterbox(rgb)
    raw = feed(session, x)[0]
    boxes, scores = decode(raw, r)
    candidates = np.nonzero(scores > NMS_SCORE)[0]
    kept = candidates[nms(boxes[candidates], scores[candidates])]
    return boxes[kept[scores[kept] > PERSON_SCORE]].reshape(-1, 4)
