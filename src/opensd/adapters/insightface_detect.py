"""InsightFace's face detector: SCRFD (Guo et al., "Sample and Computation Redistribution for Efficient
Face Detection", 2021) as the ONNX file of the buffalo_l pack (``det_10g.onnx``) or antelopev2's
(``scrfd_10g_bnkps.onnx``), run through onnxruntime as insightface's FaceAnalysis runs it:

1. the picture (RGB) is scaled to fit `size` x `size` keeping its aspect: the side that fills first gets
   `size`, the other int(side x ratio) (bilinear); it sits in the top-left corner of a black canvas and
   is fed as (x - 127.5) / 128 in RGB order, CHW (``letterbox``);
2. the nine outputs are, per stride 8, 16 and 32 in turn, the scores (n, 1), the box distances (n, 4)
   and the five keypoints' offsets (n, 10), all in stride units; n = 2 anchors per cell of the stride's
   grid (row-major over y, then x), both centred on the cell's corner (x, y) x stride. A box is
   (cx - left, cy - top, cx + right, cy + bottom), a keypoint (cx + dx, cy + dy) (``decode``);
3. anchors scoring at least 0.5 are kept, scaled back to the picture, and greedy non-maximum
   suppression at IoU 0.4 ("+1 pixel" areas, as dwpose_detect.nms) drops overlaps, best first.

A model whose input has a fixed size is run at that size; the released files take any size and get
640 x 640 (insightface's det_size).
"""
from __future__ import annotations

import numpy as np

from ..errors import InvalidArgument
from .dwpose_detect import feed, nms

SIZE = 640
STRIDES = (8, 16, 32)
ANCHORS = 2
SCORE, NMS_IOU = 0.5, 0.4
MEAN, STD = 127.5, 128.0


def letterbox(rgb: np.ndarray, size: int = SIZE) -> tuple[np.ndarray, float]:
    """(the (1, 3, size, size) float32 input, the scale from picture to input pixels)."""
    import cv2

    h, w = rgb.shape[:2]
    if h / w > 1.0:  # taller than the square input: the height fills it
        nh, nw = size, int(size / (h / w))
    else:
        nw, nh = size, int(size * (h / w))
    canvas = np.zeros((size, size, 3), np.uint8)
    canvas[:nh, :nw] = cv2.resize(rgb, (nw, nh))
    x = (canvas.astype(np.float32) - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None]), nh / h


def anchor_centres(size: int, stride: int) -> np.ndarray:
    """(n, 2) anchor centres (x, y) in input pixels for one stride: the grid's cells row by row, each twice."""
    n = size // stride
    ys, xs = np.mgrid[0:n, 0:n]
    cells = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64) * stride
    return np.repeat(cells, ANCHORS, axis=0)


def decode(outputs: list[np.ndarray], size: int = SIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores (n,), boxes (n, 4) x1 y1 x2 y2, keypoints (n, 5, 2)) of every anchor, in input pixels."""
    if len(outputs) != 3 * len(STRIDES):
        raise InvalidArgument(f"insightface: the detector gave {len(outputs)} outputs; an SCRFD face detector with "
                              "keypoints (det_10g.onnx) gives 9")
    scores, boxes, points = [], [], []
    for i, stride in enumerate(STRIDES):
        centres = anchor_centres(size, stride)
        s, d, k = (np.asarray(outputs[i + j * len(STRIDES)], np.float64) for j in range(3))
        s, d, k = s.reshape(-1), d.reshape(-1, 4) * stride, k.reshape(-1, 10) * stride
        if not len(s) == len(d) == len(k) == len(centres):
            raise InvalidArgument(f"insightface: the detector gave {len(s)} stride-{stride} anchors for a {size} x "
                                  f"{size} input, not {len(centres)} (is it an SCRFD detector?)")
        scores.append(s)
        boxes.append(np.concatenate([centres - d[:, :2], centres + d[:, 2:]], 1))
        points.append(centres[:, None, :] + k.reshape(-1, 5, 2))
    return np.concatenate(scores), np.concatenate(boxes), np.concatenate(points)


def fixed_size(session) -> int | None:
    """The detector's fixed square input side, or None when it takes any size (the released files)."""
    shape = session.get_inputs()[0].shape
    if len(shape) == 4 and isinstance(shape[2], int) and isinstance(shape[3], int) and shape[2] > 0:
        if shape[2] != shape[3]:
            raise InvalidArgument(f"insightface: the detector takes {shape[3]} x {shape[2]} pictures; opensd runs "
                                  "square ones (det_10g.onnx takes any size)")
        return int(shape[2])
    return None


def detect_faces(session, rgb: np.ndarray, size: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The faces in an RGB uint8 picture: (boxes (n, 4), keypoints (n, 5, 2)) in picture pixels and their
    scores (n,), best first."""
    size = fixed_size(session) or size or SIZE
    x, scale = letterbox(rgb, size)
    scores, boxes, points = decode(feed(session, x), size)
    keep = np.nonzero(scores >= SCORE)[0]
    boxes, points, scores = boxes[keep] / scale, points[keep] / scale, scores[keep]
    order = nms(boxes, scores, NMS_IOU)
    return boxes[order].reshape(-1, 4), points[order].reshape(-1, 5, 2), scores[order]
