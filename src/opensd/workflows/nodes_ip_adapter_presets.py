"""IPAdapterUnifiedLoader (ComfyUI_IPAdapter_plus, cubiq): an IP-Adapter and its CLIP image encoder
found by a preset's file name, as cubiq's loader finds them in models/ipadapter and
models/clip_vision.

The IPADAPTER it returns carries the encoder, so IPAdapter (simple), IPAdapterAdvanced and
IPAdapterEncoder run without a clip_vision input. The adapter file goes through
IPAdapterModelLoader's checks. The FaceID presets belong to IPAdapterUnifiedLoaderFaceID
(nodes_ip_adapter_faceid_presets).
A preset finds only .safetensors files.
"""
from __future__ import annotations

import re
from dataclasses import replace

from ..errors import InvalidArgument
from .nodes_clip_vision import clip_vision_loader
from .nodes_ip_adapter import _MODULE, IPAdapterRef, ipadapter_model_loader
from .types import ModelRef, NodeDef, register

# preset -> (SD1.5 file pattern(s), SDXL file pattern(s) or None: the preset has none for SDXL), tried in order;
# the patterns of cubiq's get_ipadapter_file, less the .bin alternative
PRESETS = {
    "LIGHT - SD1.5 only (low strength)": ((r"sd15.light.v11\.safetensors$", r"sd15.light\.safetensors$"), None),
    "STANDARD (medium strength)": ((r"ip.adapter.sd15\.safetensors$",), (r"ip.adapter.sdxl.vit.h\.safetensors$",)),
    "VIT-G (medium strength)": ((r"sd15.vit.g\.safetensors$",), (r"ip.adapter.sdxl\.safetensors$",)),
    "PLUS (high strength)": ((r"ip.adapter.plus.sd15\.safetensors$",), (r"plus.sdxl.vit.h\.safetensors$",)),
    "PLUS FACE (portraits)": ((r"plus.face.sd15\.safetensors$",), (r"plus.face.sdxl.vit.h\.safetensors$",)),
    "FULL FACE - SD1.5 only (portraits stronger)": ((r"full.face.sd15\.safetensors$",), None),
}
# the image encoder: ViT-bigG/14 for the VIT-G preset, ViT-H/14 for the others (cubiq's get_clipvision_file)
ENCODER_PATTERNS = {True: r"(ViT.bigG.14.*39B.b160k|ipadapter.*sdxl|sdxl.*model\.(bin|safetensors))",
                    False: r"(ViT.H.14.*s32B.b79K|ipadapter.*sd15|sd1.?5.*model\.(bin|safetensors))"}


def _first(folders, kind: str, patterns) -> str | None:
    names = [m.name for m in folders.list(kind)]
    for pattern in patterns:
        found = [n for n in names if re.search(pattern, n, re.IGNORECASE)]
        if found:
            return found[0]
    return None


def ipadapter_unified_loader(call, model, preset, ipadapter=None):
    if not isinstance(model, ModelRef):
        raise InvalidArgument("model: expected a MODEL")
    if preset not in PRESETS:
        raise InvalidArgument(f"preset: {preset!r} is not one of {', '.join(PRESETS)} (the FaceID presets are "
                              "IPAdapterUnifiedLoaderFaceID's, which also loads the InsightFace and the LoRA)")
    if ipadapter is not None and not isinstance(ipadapter, IPAdapterRef):
        raise InvalidArgument("ipadapter: expected an IPADAPTER")
    sdxl = model.pipe.config.family == "sdxl"
    sd15, xl = PRESETS[preset]
    if sdxl and xl is None:
        raise InvalidArgument(f"preset: {preset!r} has no SDXL model")
    folders = call.ctx.folders
    name = _first(folders, "ipadapter", xl if sdxl else sd15)
    if name is None:
        raise InvalidArgument(f"preset: no IP-Adapter file for {preset!r} in models/ipadapter (a .safetensors "
                              f"matching {' or '.join(xl if sdxl else sd15)})")
    vit_g = preset.startswith("VIT-G")
    encoder = _first(folders, "clip_vision", (ENCODER_PATTERNS[vit_g],))
    if encoder is None:
        raise InvalidArgument(f"preset: no {'ViT-bigG/14' if vit_g else 'ViT-H/14'} image encoder in "
                              f"models/clip_vision (a file name matching {ENCODER_PATTERNS[vit_g]})")
    (ref,) = ipadapter_model_loader(call, name)
    (clip_vision,) = clip_vision_loader(call, encoder)
    return model, replace(ref, clip_vision=clip_vision)


register(NodeDef(
    "IPAdapterUnifiedLoader", ipadapter_unified_loader,
    {"model": ("MODEL", {}), "preset": (list(PRESETS), {})}, ("MODEL", "IPADAPTER"),
    output_names=("model", "ipadapter"), optional={"ipadapter": ("IPADAPTER", {})},
    category="ipadapter", display_name="IPAdapter Unified Loader", module=_MODULE))
