"""What an IP-Adapter FaceID reads from a picture (h94/IP-Adapter-FaceID's and cubiq's recipe): the
largest face's InsightFace identity embedding, normalised to length 1 (adapters/insightface.py), and
for FaceID Plus the face aligned onto the ArcFace template at 224 x 224 (256 for SDXL adapters, as
cubiq's node crops it), which CLIP vision then encodes. The negative is an all-zero embedding (and,
for Plus, the hidden states of an all-zero pixel input, as for the Plus adapters)."""
from __future__ import annotations

import numpy as np
import torch

from . import insightface

SDXL_WIDTH = 2048


def crop_size(adapter) -> int:
    """The side of the aligned face crop a FaceID Plus adapter's CLIP input is made from."""
    return 256 if adapter.width == SDXL_WIDTH else 224


def face_inputs(analysis, rgb: np.ndarray, crop: int | None = None, field: str = "image",
                sizes: tuple[int, ...] = (insightface.insightface_detect.SIZE,)):
    """(the largest face's normalised identity embedding (1, 512) float32, its aligned crop×crop RGB uint8
    face or None when `crop` is None) of an RGB uint8 picture; InvalidArgument naming `field` without a face."""
    if not isinstance(analysis, insightface.FaceAnalysis):
        from ..errors import InvalidArgument
        raise InvalidArgument("insightface: IP-Adapter FaceID needs the InsightFace face analysis (a model pack "
                              f"such as {' or '.join(insightface.PACKS)})")
    face = insightface.largest_face(analysis, rgb, field, sizes)
    ids = torch.from_numpy(face.normed.astype(np.float32))[None]
    return ids, None if crop is None else insightface.align(rgb, face.keypoints, crop)
