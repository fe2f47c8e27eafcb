"""InsightFace face analysis (deepinsight/insightface, MIT code; its model packs are for non-commercial
research use) for the IP-Adapter FaceID variants: find the largest face, align it, embed it. Two ONNX
files of a model pack the user already has run through onnxruntime (``pip install "opensd[faceid]"``;
an ONNX file is a protobuf graph, nothing in it is executed as code):

* the SCRFD detector (``det_10g.onnx`` in buffalo_l, ``scrfd_10g_bnkps.onnx`` in antelopev2;
  adapters/insightface_detect.py): boxes and five keypoints (eyes, nose, mouth corners);
* the ArcFace recogniser (``w600k_r50.onnx`` in buffalo_l, ``glintr100.onnx`` in antelopev2): the face
  warped onto the 112 x 112 ArcFace template by the least-squares similarity transform (Umeyama's) of
  its five keypoints, bilinear, black outside (``align``), fed as (x - 127.5) / 127.5 in RGB order,
  gives a 512-wide identity embedding; FaceID takes it divided by its length (``normed``).

The pack is a folder of the models folder, where ComfyUI_IPAdapter_plus and the A1111 ControlNet
extension's FaceAnalysis look: ``models/insightface/models/buffalo_l`` (or ``.../antelopev2``);
``models/insightface/buffalo_l`` is accepted too. The other files of a pack (landmarks, gender/age)
are not used. When a picture holds several faces the largest box is taken (InstantID's rule; the
references take the best-scored, usually the same face).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InvalidArgument
from ..onnx_files import onnxruntime, session
from . import insightface_detect
from .dwpose_detect import feed
from .preprocessor_files import cached

PACKS = ("buffalo_l", "antelopev2")
DETECTORS = ("det_10g.onnx", "scrfd_10g_bnkps.onnx")
RECOGNISERS = ("w600k_r50.onnx", "glintr100.onnx")
SOURCE = "insightface's model packs (github.com/deepinsight/insightface, python-package model zoo)"
EMBED_DIM = 112, 512  # the recogniser's input side and embedding width
MEAN = STD = 127.5
# the five keypoints' places on the 112 x 112 ArcFace crop (insightface's arcface_dst)
TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                     [70.7299, 92.2041]])
DET_SIZES = tuple(range(640, 256, -64))  # cubiq's retry sizes when no face is found at 640


def _pick(folder: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise InvalidArgument(f"insightface: {folder} has no {what} ({' or '.join(names)}); it is published in "
                          f"{SOURCE}")


def find_pack(folders, name: str = "buffalo_l") -> dict[str, str]:
    """{"detector": path, "recogniser": path} of the model pack `name` (a pack name looked up under
    models/insightface, or a folder); an InvalidArgument naming what is missing."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidArgument(f"insightface: a model pack name is required ({', '.join(PACKS)})")
    given = Path(name).expanduser()
    if given.is_dir():
        folder = given
    else:
        roots = [] if folders is None else folders.folders("insightface")
        places = [r / sub / name for r in roots for sub in ("models", "")]
        folder = next((p for p in places if p.is_dir()), None)
        if folder is None:
            where = " or ".join(str(p) for p in places) or "models/insightface/models/" + name
            raise InvalidArgument(f"insightface: the model pack {name!r} is not installed: put its .onnx files in "
                                  f"{where}; the packs are published in {SOURCE}")
    return {"detector": str(_pick(folder, DETECTORS, "face detector")),
            "recogniser": str(_pick(folder, RECOGNISERS, "face recogniser"))}


@dataclass
class FaceAnalysis:
    detector: object    # onnxruntime.InferenceSession of the SCRFD file
    recogniser: object  # ... of the ArcFace file
    name: str = "insightface"


@dataclass
class Face:
    box: np.ndarray        # (4,) x1, y1, x2, y2 in picture pixels
    keypoints: np.ndarray  # (5, 2): left eye, right eye, nose, left and right mouth corner
    score: float
    embedding: np.ndarray | None = None  # (512,) as the recogniser gives it (largest_face's face has it)

    @property
    def normed(self) -> np.ndarray:
        return self.embedding / np.linalg.norm(self.embedding)


def load(files: dict, device: str = "cpu") -> FaceAnalysis:
    """The two sessions of `files` (find_pack's), checked, kept as the one cached preprocessor model."""
    ort = onnxruntime("insightface", "faceid")

    def make():
        detector, recogniser = (session(ort, files[k], device, "insightface")
                                for k in ("detector", "recogniser"))
        if len(detector.get_outputs()) != 9:
            raise InvalidArgument(f"insightface: {Path(files['detector']).name} has {len(detector.get_outputs())} "
                                  "outputs; an SCRFD face detector with keypoints has 9")
        shape = recogniser.get_inputs()[0].shape
        if len(recogniser.get_outputs()) != 1 or list(shape[1:]) != [3, EMBED_DIM[0], EMBED_DIM[0]]:
            raise InvalidArgument(f"insightface: {Path(files['recogniser']).name} takes {shape}; an ArcFace "
                                  f"recogniser takes (n, 3, {EMBED_DIM[0]}, {EMBED_DIM[0]}) faces")
        return FaceAnalysis(detector, recogniser, Path(files["recogniser"]).parent.name)

    return cached(("insightface", files["detector"], files["recogniser"], str(device)), make)


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2 x 3 similarity transform (rotation, uniform scale, shift) taking the points `src` closest to
    `dst` in least squares (Umeyama, 1991; what skimage's SimilarityTransform.estimate solves)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sv, vt = np.linalg.svd(cov)
    sign = np.array([1.0, -1.0 if np.linalg.det(cov) < 0 else 1.0])
    var = (s ** 2).sum() / len(src)
    if var == 0:
        raise InvalidArgument("insightface: the face's keypoints all coincide; it cannot be aligned")
    rot = u @ np.diag(sign) @ vt
    scale = (sv * sign).sum() / var
    return np.hstack([scale * rot, (mu_d - scale * rot @ mu_s)[:, None]])


def template(size: int) -> np.ndarray:
    """The ArcFace keypoint template for a size x size crop, as insightface's norm_crop scales it (sizes
    that are multiples of 112 scale it; multiples of 128 scale by size / 128 and shift it right)."""
    if size % 112 == 0:
        return TEMPLATE * (size / 112)
    if size % 128 == 0:
        return TEMPLATE * (size / 128) + [8.0 * size / 128, 0.0]
    raise InvalidArgument(f"insightface: an aligned face crop is 112 x k or 128 x k pixels, not {size}")


def align(rgb: np.ndarray, keypoints: np.ndarray, size: int = 112) -> np.ndarray:
    """The face of `keypoints` warped onto the ArcFace template: a size x size RGB uint8 crop."""
    import cv2

    matrix = similarity(keypoints, template(size))
    return cv2.warpAffine(rgb, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0)


def embed(recogniser, crop: np.ndarray) -> np.ndarray:
    """The (512,) identity embedding of an aligned 112 x 112 RGB crop."""
    x = (crop.astype(np.float32) - MEAN) / STD
    out = feed(recogniser, np.ascontiguousarray(x.transpose(2, 0, 1)[None]))[0].reshape(-1)
    if out.size != EMBED_DIM[1]:
        raise InvalidArgument(f"insightface: the recogniser gave a {out.size}-wide embedding; FaceID takes "
                              f"{EMBED_DIM[1]}-wide ArcFace ones")
    return out.astype(np.float64)


def faces(analysis: FaceAnalysis, rgb: np.ndarray, size: int | None = None) -> list[Face]:
    """Every face of an RGB uint8 picture (detected at `size`, default the detector's), largest box first,
    not yet embedded."""
    boxes, points, scores = insightface_detect.detect_faces(analysis.detector, rgb, size)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return [Face(boxes[i], points[i], float(scores[i])) for i in np.argsort(-areas, kind="stable")]


def largest_face(analysis: FaceAnalysis, rgb: np.ndarray, field: str = "image",
                 sizes: tuple[int, ...] = (insightface_detect.SIZE,)) -> Face:
    """The largest face of the picture with its embedding, tried at each detection size in turn (cubiq's
    node retries smaller ones); an InvalidArgument naming `field` when there is none."""
    if insightface_detect.fixed_size(analysis.detector):
        sizes = (None,)  # a detector of a fixed input size runs at that size only
    for size in sizes:
        found = faces(analysis, rgb, size)
        if found:
            face = found[0]
            face.embedding = embed(analysis.recogniser, align(rgb, face.keypoints))
            return face
    raise InvalidArgument(f"{field}: InsightFace found no face in the picture (FaceID needs one, seen from the front)")
