"""OpenPose's body post-processing and drawing, as ControlNet's openpose preprocessor does it:

1. the network's heatmaps and part affinity fields (PAFs), upsampled to the image (``maps``);
2. joint candidates: local maxima of each Gaussian-smoothed (sigma 3) heatmap above 0.1 (``peaks``);
3. limbs: every pair of candidates of a limb's two joints scored by the line integral of the limb's
   PAF between them (10 samples; at least 80% above 0.05, and a mean, less a penalty for limbs longer
   than half the image height, above 0), kept greedily best first, each joint used once (``limbs``);
4. people: the limbs joined into skeletons over shared joints, those with fewer than 4 joints or a
   mean score under 0.4 dropped (``assemble``);
5. the skeletons drawn on black: 17 limbs as ellipses (stick width 4) in 60% of their colour, then
   18 joint dots of radius 4 (``draw``), the picture ControlNet's openpose models were trained on.

Joints (0-based): 0 nose, 1 neck, 2-4 right shoulder/elbow/wrist, 5-7 left, 8-10 right hip/knee/ankle,
11-13 left, 14/15 right/left eye, 16/17 right/left ear.
"""
from __future__ import annotations

import math

import numpy as np
import torch

JOINTS = 18
BOX, STRIDE, PAD_VALUE = 368, 8, 128
PEAK_THRESHOLD, PAF_THRESHOLD = 0.1, 0.05
SAMPLES = 10
# limbs as (joint, joint), 0-based; the first 17 are drawn, the last two (ear-shoulder) only link people
LIMBS = [(1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
         (1, 0), (0, 14), (14, 16), (0, 15), (15, 17), (2, 16), (5, 17)]
# each limb's (x, y) channels in the network's 38 PAF channels
PAF_CHANNELS = [(12, 13), (20, 21), (14, 15), (16, 17), (22, 23), (24, 25), (0, 1), (2, 3), (4, 5), (6, 7),
                (8, 9), (10, 11), (28, 29), (30, 31), (34, 35), (32, 33), (36, 37), (18, 19), (26, 27)]
COLOURS = [(255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
           (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
           (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85)]
DRAWN_LIMBS = 17
STICK = 4


@torch.no_grad()
def maps(net, rgb: np.ndarray, scales=(0.5,)) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps (H, W, 19) and PAFs (H, W, 38) of an RGB uint8 picture, averaged over `scales` (of a
    368-pixel-high box; controlnet_aux uses 0.5 only)."""
    import cv2

    bgr = np.ascontiguousarray(rgb[:, :, ::-1])  # the Caffe-trained net reads BGR
    h, w = bgr.shape[:2]
    heat_sum, paf_sum = np.zeros((h, w, 19), np.float32), np.zeros((h, w, 38), np.float32)
    device = next(net.parameters()).device
    for s in scales:
        k = s * BOX / h
        small = cv2.resize(bgr, (0, 0), fx=k, fy=k, interpolation=cv2.INTER_CUBIC)
        sh, sw = small.shape[:2]
        padded = np.pad(small, ((0, -sh % STRIDE), (0, -sw % STRIDE), (0, 0)), constant_values=PAD_VALUE)
        x = torch.from_numpy(padded).float().permute(2, 0, 1)[None].to(device) / 256.0 - 0.5
        paf, heat = net(x)
        for out, acc in ((heat, heat_sum), (paf, paf_sum)):
            arr = out[0].permute(1, 2, 0).float().cpu().numpy()
            arr = cv2.resize(arr, (0, 0), fx=STRIDE, fy=STRIDE, interpolation=cv2.INTER_CUBIC)[:sh, :sw]
            acc += cv2.resize(arr, (w, h), interpolation=cv2.INTER_CUBIC).reshape(h, w, -1) / len(scales)
    return heat_sum, paf_sum


def smooth(plane: np.ndarray) -> np.ndarray:
    """A sigma-3 Gaussian blur, mirrored at the edges, over 4 sigmas (scipy's gaussian_filter defaults)."""
    import cv2

    return cv2.GaussianBlur(plane.astype(np.float32), (25, 25), 3, borderType=cv2.BORDER_REFLECT)


def peaks(heatmaps: np.ndarray) -> list[np.ndarray]:
    """Per joint, its candidates as rows (x, y, score, id), ids numbering all candidates in order."""
    found, next_id = [], 0
    for j in range(JOINTS):
        raw = heatmaps[:, :, j]
        s = smooth(raw)
        # at least as high as the four neighbours (outside the map counts as 0) and above the threshold
        p = np.pad(s, 1)
        is_peak = ((s >= p[:-2, 1:-1]) & (s >= p[2:, 1:-1]) & (s >= p[1:-1, :-2]) & (s >= p[1:-1, 2:])
                   & (s > PEAK_THRESHOLD))
        ys, xs = np.nonzero(is_peak)
        ids = np.arange(next_id, next_id + len(xs))
        found.append(np.stack([xs, ys, raw[ys, xs], ids], 1).astype(np.float64).reshape(-1, 4))
        next_id += len(xs)
    return found


def _pair_score(a: np.ndarray, b: np.ndarray, paf: np.ndarray, height: int) -> float | None:
    """The PAF line integral from candidate a to b, or None when the pair fails the criteria."""
    d = b[:2] - a[:2]
    length = max(float(np.hypot(*d)), 0.001)
    u = d / length
    xs = np.rint(np.linspace(a[0], b[0], SAMPLES)).astype(int)
    ys = np.rint(np.linspace(a[1], b[1], SAMPLES)).astype(int)
    along = paf[ys, xs, 0] * u[0] + paf[ys, xs, 1] * u[1]
    score = along.mean() + min(0.5 * height / length - 1, 0)
    if (along > PAF_THRESHOLD).sum() > 0.8 * SAMPLES and score > 0:
        return float(score)
    return None


def limbs(candidates: list[np.ndarray], pafs: np.ndarray) -> list[np.ndarray | None]:
    """Per limb, its chosen connections as rows (id a, id b, score, index a, index b); None where one
    of its joints has no candidate."""
    out = []
    for (ja, jb), (cx, cy) in zip(LIMBS, PAF_CHANNELS):
        ca, cb = candidates[ja], candidates[jb]
        if not len(ca) or not len(cb):
            out.append(None)
            continue
        paf = pafs[:, :, [cx, cy]]
        pairs = []
        for i, a in enumerate(ca):
            for j, b in enumerate(cb):
                s = _pair_score(a, b, paf, pafs.shape[0])
                if s is not None:
                    pairs.append((s, i, j))
        pairs.sort(key=lambda p: -p[0])  # stable: ties keep candidate order
        chosen, used_a, used_b = [], set(), set()
        for s, i, j in pairs:
            if i in used_a or j in used_b:
                continue
            chosen.append((ca[i][3], cb[j][3], s, i, j))
            used_a.add(i), used_b.add(j)
            if len(chosen) >= min(len(ca), len(cb)):
                break
        out.append(np.array(chosen, np.float64).reshape(-1, 5))
    return out


def assemble(candidates: list[np.ndarray], connections: list[np.ndarray | None]) -> np.ndarray:
    """People as rows of 18 candidate ids (-1: not found), total score, joint count."""
    table = np.concatenate(candidates) if candidates else np.zeros((0, 4))
    people = np.zeros((0, JOINTS + 2))
    for k, conn in enumerate(connections):
        if conn is None:
            continue
        ja, jb = LIMBS[k]
        for id_a, id_b, score, _, _ in conn:
            owners = [p for p in range(len(people)) if people[p, ja] == id_a or people[p, jb] == id_b][:2]
            if len(owners) == 1:
                p = people[owners[0]]
                if p[jb] != id_b:
                    p[jb] = id_b
                    p[-1] += 1
                    p[-2] += table[int(id_b), 2] + score
            elif len(owners) == 2:
                p, q = people[owners[0]], people[owners[1]]
                if not np.any((p[:JOINTS] >= 0) & (q[:JOINTS] >= 0)):  # disjoint: one person, merged
                    p[:JOINTS] = np.where(q[:JOINTS] >= 0, q[:JOINTS], p[:JOINTS])
                    p[-2:] += q[-2:]
                    p[-2] += score
                    people = np.delete(people, owners[1], 0)
                else:
                    p[jb] = id_b
                    p[-1] += 1
                    p[-2] += table[int(id_b), 2] + score
            elif k < DRAWN_LIMBS:  # the ear-shoulder limbs never start a person
                row = np.full(JOINTS + 2, -1.0)
                row[ja], row[jb] = id_a, id_b
                row[-1] = 2
                row[-2] = table[int(id_a), 2] + table[int(id_b), 2] + score
                people = np.vstack([people, row])
    keep = (people[:, -1] >= 4) & (people[:, -2] / np.maximum(people[:, -1], 1) >= 0.4)
    return people[keep]


def keypoints(candidates: list[np.ndarray], people: np.ndarray) -> list[list[tuple[float, float] | None]]:
    """Each person's 18 joints as pixel (x, y), None where not found."""
    table = np.concatenate(candidates) if candidates else np.zeros((0, 4))
    return [[None if idx < 0 else (float(table[int(idx), 0]), float(table[int(idx), 1])) for idx in row[:JOINTS]]
            for row in people]


def detect(net, rgb: np.ndarray) -> list[list[tuple[float, float] | None]]:
    """The people in an RGB uint8 picture: per person, 18 joints in pixels (None where not found)."""
    heat, paf = maps(net, rgb)
    cands = peaks(heat)
    return keypoints(cands, assemble(cands, limbs(cands, paf)))


def stick_scale(h: int, w: int, xinsr: bool) -> int:
    """xinsir's SDXL openpose ControlNet wants thicker sticks on big pictures."""
    side = max(h, w)
    return 1 if not xinsr or side < 500 else min(2 + side // 1000, 7)


def draw(people, h: int, w: int, xinsr: bool = False, canvas: np.ndarray | None = None) -> np.ndarray:
    """The skeletons on a black RGB uint8 canvas of h x w (or drawn into `canvas`)."""
    import cv2

    canvas = np.zeros((h, w, 3), np.uint8) if canvas is None else canvas
    width = STICK * stick_scale(h, w, xinsr)
    for person in people:
        for (ja, jb), colour in zip(LIMBS[:DRAWN_LIMBS], COLOURS):
            a, b = person[ja], person[jb]
            if a is None or b is None:
                continue
            cx, cy = (a[0] + b[0]) / 2, (a[1] + b[1]) / 2
            length = math.hypot(a[0] - b[0], a[1] - b[1])
            angle = math.degrees(math.atan2(a[1] - b[1], a[0] - b[0]))
            poly = cv2.ellipse2Poly((int(cx), int(cy)), (int(length / 2), width), int(angle), 0, 360, 1)
            cv2.fillConvexPoly(canvas, poly, [int(c * 0.6) for c in colour])
        for joint, colour in zip(person, COLOURS):
            if joint is not None:
                cv2.circle(canvas, (int(joint[0]), int(joint[1])), 4, colour, thickness=-1)
    return canvas


def as_openpose_json(people, h: int, w: int, parts: list[dict] | None = None, pixels: bool = False) -> dict:
    """The OpenPose JSON of controlnet_aux's POSE_KEYPOINT: per person 18 (x, y, confidence) with x and y
    as fractions of the canvas (`pixels`: in pixels, as its DWPose writes them), (0, 0, 0) for a missing
    joint; with `parts` (openpose_parts.detect_parts) the hands' 21 and the face's points the same way,
    None for a hand or face not looked for or found."""
    sx, sy = (1.0, 1.0) if pixels else (w, h)

    def flat(points):
        if not points:
            return None
        return [v for j in points for v in ((j[0] / sx, j[1] / sy, 1.0) if j is not None else (0.0, 0.0, 0.0))]

    parts = parts or [{}] * len(people)
    return {"people": [{"pose_keypoints_2d": flat(p), "face_keypoints_2d": flat(q.get("face")),
                        "hand_left_keypoints_2d": flat(q.get("left")), "hand_right_keypoints_2d": flat(q.get("right"))}
                       for p, q in zip(people, parts)],
            "canvas_height": h, "canvas_width": w}
