"""ComfyUI_IPAdapter_plus' FaceID nodes (cubiq), with its names and inputs: IPAdapterInsightFaceLoader
(provider, model_name -> INSIGHTFACE: the model pack in models/insightface/models/<model_name>, run by
onnxruntime; adapters/insightface.py) and IPAdapterFaceID (MODEL, face_image).

IPAdapterFaceID takes an IPADAPTER of a FaceID, FaceID Portrait or FaceID Plus (v2) file. Each picture's
largest face (detected at 640, then at smaller sizes down to 320 as cubiq's node retries) gives its
normalised identity embedding and its crop aligned on the ArcFace template (224 x 224, 256 for SDXL
adapters), which is the face_image output and, for FaceID Plus, what CLIP vision encodes; the
negative is a zero embedding (Plus: with image_negative's hidden states, else a black image's). v2 files
("v2" in the name) add the id tokens back with weight_faceidv2. combine_embeds combines the pictures'
embeddings (and hidden states) as the other nodes do. The FaceID LoRA is loaded with LoraLoaderModelOnly,
as in ComfyUI; IPAdapterUnifiedLoaderFaceID (nodes_ip_adapter_faceid_presets) finds and loads all four, and
its IPADAPTER brings the encoder and the InsightFace. Not available: embeds_scaling other than "V only" and
attention masks (as elsewhere), and the ROCM provider.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..adapters import insightface as face_analysis
from ..adapters.ip_adapter import cached, check_encoder, image_features
from ..adapters.ip_adapter_faceid import crop_size, face_inputs
from ..adapters.ip_adapter_weights import WEIGHT_TYPES
from ..errors import InvalidArgument
from ..models.ip_adapter import HIDDEN
from ..models.ip_adapter_faceid import is_faceid, project_faces
from .nodes_clip_vision import CHUNK, ClipVisionRef
from .nodes_ip_adapter import _END, _MODULE, _START, COMBINE, SCALING, check_options, combined, with_patch
from .types import NodeDef, register

PROVIDERS = {"CPU": "cpu", "CUDA": "cuda", "ROCM": None}


@dataclass(frozen=True)
class InsightFaceRef:
    """INSIGHTFACE: the loaded face analysis (two onnxruntime sessions) and the pack's name."""
    analysis: face_analysis.FaceAnalysis
    name: str


def insightface_loader(call, provider, model_name):
    if provider not in PROVIDERS:
        raise InvalidArgument(f"provider: {provider!r} is not one of {', '.join(PROVIDERS)}")
    if PROVIDERS[provider] is None:
        raise InvalidArgument("provider: ROCM is not available in opensd; use CPU or CUDA")
    if model_name not in face_analysis.PACKS:
        raise InvalidArgument(f"model_name: {model_name!r} is not one of {', '.join(face_analysis.PACKS)}")
    files = face_analysis.find_pack(call.ctx.folders, model_name)
    return (InsightFaceRef(face_analysis.load(files, PROVIDERS[provider]), model_name),)


register(NodeDef(
    "IPAdapterInsightFaceLoader", insightface_loader,
    {"provider": (list(PROVIDERS), {}), "model_name": (list(face_analysis.PACKS), {})}, ("INSIGHTFACE",),
    category="ipadapter/loaders", display_name="IPAdapter InsightFace Loader", module=_MODULE))


def _faces(image, analysis, crop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalised identity embeddings (n, 512), aligned crops (n, crop, crop, 3) in 0..1) of each picture."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] < 3 or min(image.shape) < 1:
        raise InvalidArgument("image: expected an RGB IMAGE (batch, height, width, 3)")
    ids, crops = [], []
    for picture in image:
        rgb = (picture[..., :3].float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        face_id, face = face_inputs(analysis, np.ascontiguousarray(rgb), crop, "image", face_analysis.DET_SIZES)
        ids.append(face_id)
        crops.append(torch.from_numpy(face.astype(np.float32) / 255.0))
    return torch.cat(ids), torch.stack(crops)


def _hidden(clip_vision, pixels: torch.Tensor) -> torch.Tensor:
    encoder = clip_vision.model
    device = next(encoder.parameters()).device
    with torch.inference_mode():
        return torch.cat([image_features(encoder, chunk.to(device), HIDDEN).float().cpu()
                          for chunk in pixels.split(CHUNK)])


def ipadapter_faceid(call, model, ipadapter, image, weight, weight_faceidv2, weight_type, combine_embeds, start_at,
                     end_at, embeds_scaling, image_negative=None, attn_mask=None, clip_vision=None, insightface=None):
    pipe = check_options(model, ipadapter, weight_type, embeds_scaling, attn_mask)
    insightface = insightface if insightface is not None else ipadapter.insightface
    if not isinstance(insightface, InsightFaceRef):
        raise InvalidArgument("insightface: IPAdapterFaceID needs the INSIGHTFACE of IPAdapterInsightFaceLoader "
                              "(or an IPADAPTER from IPAdapterUnifiedLoaderFaceID)")
    loaded = cached("adapter", ipadapter.path, pipe)
    adapter = loaded.adapter
    if not is_faceid(adapter):
        raise InvalidArgument(f"ipadapter: {ipadapter.name} is not an IP-Adapter FaceID file; use IPAdapterAdvanced")
    ids, crops = _faces(image, insightface.analysis, crop_size(adapter))
    clip_dim = adapter.image_proj.clip_dim
    with torch.no_grad():
        if clip_dim is None:
            ids = combined(ids, combine_embeds)
            cond, uncond = project_faces(adapter, ids), project_faces(adapter, torch.zeros_like(ids))
        else:
            clip_vision = clip_vision if clip_vision is not None else ipadapter.clip_vision
            if not isinstance(clip_vision, ClipVisionRef):
                raise InvalidArgument(f"clip_vision: {ipadapter.name} (FaceID Plus) also reads the face through CLIP "
                                      "vision: connect the ViT-H/14 CLIP_VISION")
            check_encoder(HIDDEN, clip_dim, clip_vision.model.config, ipadapter.name, "clip_vision")
            hidden = combined(_hidden(clip_vision, crops), combine_embeds)
            ids = combined(ids, combine_embeds)
            size = clip_vision.model.config.image_size
            black = torch.zeros(1, size, size, 3) if image_negative is None else image_negative[..., :3].float()
            negative = _hidden(clip_vision, black)[:1].expand(len(hidden), -1, -1)
            v2 = loaded.v2
            cond = project_faces(adapter, ids, hidden, float(weight_faceidv2), v2)
            uncond = project_faces(adapter, torch.zeros_like(ids), negative, float(weight_faceidv2), v2)
    cond, uncond = (t.reshape(1, -1, adapter.width) for t in (cond, uncond))
    return with_patch(model, adapter, cond, uncond, weight, weight_type, start_at, end_at), crops


register(NodeDef(
    "IPAdapterFaceID", ipadapter_faceid,
    {"model": ("MODEL", {}), "ipadapter": ("IPADAPTER", {}), "image": ("IMAGE", {}),
     "weight": ("FLOAT", {"default": 1.0, "min": -1, "max": 3, "step": 0.05}),
     "weight_faceidv2": ("FLOAT", {"default": 1.0, "min": -1, "max": 5.0, "step": 0.05}),
     "weight_type": (WEIGHT_TYPES, {}), "combine_embeds": (COMBINE, {}), "start_at": _START, "end_at": _END,
     "embeds_scaling": (SCALING, {})},
    ("MODEL", "IMAGE"), output_names=("MODEL", "face_image"),
    optional={"image_negative": ("IMAGE", {}), "attn_mask": ("MASK", {}), "clip_vision": ("CLIP_VISION", {}),
              "insightface": ("INSIGHTFACE", {})},
    category="ipadapter/faceid", display_name="IPAdapter FaceID", module=_MODULE))
