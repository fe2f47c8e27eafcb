"""OpenPose hands and face on top of the body skeletons, as ControlNet v1.1's openpose annotator (and
controlnet_aux's open_pose) does it:

1. boxes from each person's body joints: a hand's square centred a third of the forearm beyond the
   wrist, 1.5 x max(forearm, 0.9 x upper arm) wide (``hand_boxes``, CMU's handDetector rule); the face's
   square around the nose, half-side max(3 x the nose-eye distance, 1.5 x the nose-ear distance) in the
   larger of x and y (``face_box``); both clipped to the picture and dropped under 20 pixels;
2. a hand crop resized to 256 x 256 and blurred (sigma 1), run at 184, 368, 552 and 736 pixels, its 22
   heatmaps averaged on a 128 x 128 grid (``hand_heatmaps``); per joint, the sigma-3 smoothed map above
   0.05 split into 8-connected regions, the region with the largest sum of the raw map kept and its
   maximum taken (``hand_peaks``);
3. a face crop resized to 384 x 384, its last-stage heatmaps bilinearly resized back to the crop
   (``face_heatmaps``); per heatmap its maximum where above 0.05 (``face_peaks``). As in the reference,
   every one of the 71 maps is read, the background's too;
4. drawing on the body picture: per hand 20 bones as 2-pixel lines in HSV colours (hue = bone / 20) and
   21 blue dots of radius 4; per face white dots of radius 3 (``draw_hand``, ``draw_face``).

A point at the crop's row or column 0 counts as not found, as the reference's ``< 1e-6`` test has it.
Hand joints: 0 wrist, 1-4 thumb, 5-8 index, 9-12 middle, 13-16 ring, 17-20 little finger (base to tip).
"""
from __future__ import annotations

import colorsys
import math

import numpy as np
import torch

from . import openpose_body as B

Point = tuple[float, float]
HAND_JOINTS = 21
HAND_EDGES = [(0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12),
              (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20)]
RATIO_WRIST_ELBOW, MIN_BOX = 0.33, 20
HAND_INPUT, HAND_GRID, HAND_SCALES, HAND_THRESHOLD = 256, 128, (0.5, 1.0, 1.5, 2.0), 0.05
FACE_INPUT, FACE_THRESHOLD = 384, 0.05
HAND_DOT, FACE_DOT, HAND_LINE = 4, 3, 2


def _clip_square(x: float, y: float, side: float, reach: float, h: int, w: int):
    """The reference's clipping: the corner moved inside, the side shortened where the corner plus
    `reach` passes the far edge; None under MIN_BOX."""
    x, y = max(x, 0.0), max(y, 0.0)
    side = min(w - x if x + reach > w else side, h - y if y + reach > h else side)
    return (int(x), int(y), int(side)) if side >= MIN_BOX else None


def hand_boxes(person: list, h: int, w: int) -> list[tuple[int, int, int, bool]]:
    """(x, y, side, is_left) of each hand whose shoulder, elbow and wrist were found, the left one first."""
    out = []
    for joints, is_left in (((5, 6, 7), True), ((2, 3, 4), False)):
        if any(person[j] is None for j in joints):
            continue
        (x1, y1), (x2, y2), (x3, y3) = (person[j] for j in joints)
        side = 1.5 * max(math.hypot(x3 - x2, y3 - y2), 0.9 * math.hypot(x2 - x1, y2 - y1))
        cx, cy = x3 + RATIO_WRIST_ELBOW * (x3 - x2), y3 + RATIO_WRIST_ELBOW * (y3 - y2)
        box = _clip_square(cx - side / 2, cy - side / 2, side, side, h, w)
        if box is not None:
            out.append((*box, is_left))
    return out


def face_box(person: list, h: int, w: int) -> tuple[int, int, int] | None:
    """(x, y, side) of the face of a person whose nose and an eye or ear were found, else None."""
    nose = person[0]
    if nose is None or all(person[j] is None for j in (14, 15, 16, 17)):
        return None
    half = 0.0
    for j, k in ((14, 3.0), (15, 3.0), (16, 1.5), (17, 1.5)):
        if person[j] is not None:
            half = max(half, k * max(abs(nose[0] - person[j][0]), abs(nose[1] - person[j][1])))
    return _clip_square(nose[0] - half, nose[1] - half, 2 * half, half, h, w)


def smart_resize(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """The reference's resize: area averaging when the size shrinks (height + width), Lanczos otherwise;
    maps of other than 1 or 3 channels channel by channel."""
    import cv2

    if x.ndim == 3 and x.shape[2] not in (1, 3):
        return np.stack([smart_resize(x[:, :, i], height, width) for i in range(x.shape[2])], axis=2)
    shrink = height + width < x.shape[0] + x.shape[1]
    out = cv2.resize(x, (int(width), int(height)), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LANCZOS4)
    return out.reshape(int(height), int(width), *x.shape[2:])


def _tensor(bgr: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(bgr)).float().permute(2, 0, 1)[None].to(device) / 256.0 - 0.5


@torch.no_grad()
def hand_heatmaps(net, crop_bgr: np.ndarray) -> np.ndarray:
    """The 22 heatmaps (128, 128, 22) of a BGR uint8 hand crop, averaged over the four scales."""
    import cv2

    img = cv2.GaussianBlur(smart_resize(crop_bgr, HAND_INPUT, HAND_INPUT), (0, 0), 1.0)
    device = next(net.parameters()).device
    avg = 0.0
    for s in HAND_SCALES:
        size = int(s * B.BOX)
        small = smart_resize(img, size, size)
        padded = np.pad(small, ((0, -size % B.STRIDE), (0, -size % B.STRIDE), (0, 0)), constant_values=B.PAD_VALUE)
        out = net(_tensor(padded, device))[0].permute(1, 2, 0).float().cpu().numpy()
        up = smart_resize(out, out.shape[0] * B.STRIDE, out.shape[1] * B.STRIDE)[:size, :size]
        avg = avg + smart_resize(up, HAND_GRID, HAND_GRID) / len(HAND_SCALES)
    return avg


def hand_peaks(heatmaps: np.ndarray, h: int, w: int) -> list[Point | None]:
    """The 21 joints of a hand crop of h x w from its 128 x 128 heatmaps, in crop pixels (None: not found)."""
    import cv2

    out: list[Point | None] = []
    for j in range(HAND_JOINTS):
        raw = heatmaps[:, :, j].copy()
        above = (B.smooth(raw) > HAND_THRESHOLD).astype(np.uint8)
        if not above.any():
            out.append(None)
            continue
        count, labels = cv2.connectedComponents(above, connectivity=8)
        best = 1 + int(np.argmax([raw[labels == i].sum() for i in range(1, count)]))
        raw[labels != best] = 0
        y, x = np.unravel_index(int(np.argmax(raw)), raw.shape)
        px, py = int(x * w / HAND_GRID), int(y * h / HAND_GRID)
        out.append((float(px), float(py)) if px > 0 and py > 0 else None)
    return out


@torch.no_grad()
def face_heatmaps(net, crop_bgr: np.ndarray) -> np.ndarray:
    """The face net's last-stage heatmaps (71, h, w) of a BGR uint8 face crop of h x w."""
    h, w = crop_bgr.shape[:2]
    device = next(net.parameters()).device
    out = net(_tensor(smart_resize(crop_bgr, FACE_INPUT, FACE_INPUT), device))
    return torch.nn.functional.interpolate(out, (h, w), mode="bilinear", align_corners=True)[0].float().cpu().numpy()


def face_peaks(heatmaps: np.ndarray) -> list[Point | None]:
    """Per heatmap its first maximum (row by row) where above 0.05, in crop pixels (None: not found)."""
    out: list[Point | None] = []
    for plane in heatmaps:
        if not (plane > FACE_THRESHOLD).any():
            out.append(None)
            continue
        y, x = np.unravel_index(int(np.argmax(np.where(plane > FACE_THRESHOLD, plane, -np.inf))), plane.shape)
        out.append((float(x), float(y)) if x > 0 and y > 0 else None)
    return out


def _shift(points: list[Point | None], x0: int, y0: int) -> list[Point | None]:
    return [None if p is None else (p[0] + x0, p[1] + y0) for p in points]


def detect_parts(nets, rgb: np.ndarray, people: list, hands: bool, face: bool) -> list[dict]:
    """Per person {"left": 21 points or None, "right": .., "face": 71 points or None} in picture pixels;
    `nets`: openpose_cpm.PoseNets (hand/face nets needed when asked for)."""
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    h, w = bgr.shape[:2]
    found = []
    for person in people:
        parts = {"left": None, "right": None, "face": None}
        for x, y, side, is_left in (hand_boxes(person, h, w) if hands else []):
            crop = bgr[y:y + side, x:x + side]
            parts["left" if is_left else "right"] = _shift(hand_peaks(hand_heatmaps(nets.hand, crop), *crop.shape[:2]),
                                                           x, y)
        box = face_box(person, h, w) if face else None
        if box is not None:
            x, y, side = box
            parts["face"] = _shift(face_peaks(face_heatmaps(nets.face, bgr[y:y + side, x:x + side])), x, y)
        found.append(parts)
    return found


def hand_colour(edge: int) -> tuple[float, float, float]:
    """Bone `edge`'s RGB colour (0..255, unrounded as the reference passes it to OpenCV): hue edge / 20."""
    return tuple(c * 255 for c in colorsys.hsv_to_rgb(edge / len(HAND_EDGES), 1.0, 1.0))


def draw_hand(canvas: np.ndarray, points: list[Point | None] | None) -> None:
    import cv2

    if not points:
        return
    for k, (a, b) in enumerate(HAND_EDGES):
        if points[a] is not None and points[b] is not None:
            cv2.line(canvas, tuple(int(v) for v in points[a]), tuple(int(v) for v in points[b]), hand_colour(k),
                     thickness=HAND_LINE)
    for p in points:
        if p is not None:
            cv2.circle(canvas, (int(p[0]), int(p[1])), HAND_DOT, (0, 0, 255), thickness=-1)


def draw_face(canvas: np.ndarray, points: list[Point | None] | None) -> None:
    import cv2

    for p in points or []:
        if p is not None:
            cv2.circle(canvas, (int(p[0]), int(p[1])), FACE_DOT, (255, 255, 255), thickness=-1)


def draw(people: list, parts: list[dict] | None, h: int, w: int, body: bool = True, xinsr: bool = False) -> np.ndarray:
    """The picture: person by person its body skeleton (when `body`), hands, then face."""
    canvas = np.zeros((h, w, 3), np.uint8)
    for i, person in enumerate(people):
        if body:
            B.draw([person], h, w, xinsr, canvas=canvas)
        if parts:
            draw_hand(canvas, parts[i]["left"])
            draw_hand(canvas, parts[i]["right"])
            draw_face(canvas, parts[i]["face"])
    return canvas


def run(nets, rgb: np.ndarray, body: bool = True, hands: bool = False, face: bool = False,
        xinsr: bool = False) -> tuple[np.ndarray, dict]:
    """Detect and draw: (the RGB picture, its OpenPose JSON); the body is always detected (hands and face
    are found from it) and drawn when `body`."""
    h, w = rgb.shape[:2]
    people = B.detect(nets.body, rgb)
    parts = detect_parts(nets, rgb, people, hands, face) if hands or face else None
    return draw(people, parts, h, w, body, xinsr), B.as_openpose_json(people, h, w, parts)
