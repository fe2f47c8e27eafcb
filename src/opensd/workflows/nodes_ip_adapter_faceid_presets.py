"""IPAdapterUnifiedLoaderFaceID (ComfyUI_IPAdapter_plus, cubiq): for a FaceID preset, the FaceID file
(models/ipadapter), its LoRA (models/loras; loaded onto the model at lora_strength, model only, as
LoraLoaderModelOnly), the ViT-H/14 image encoder (models/clip_vision) and the InsightFace pack
buffalo_l (models/insightface/models/buffalo_l), found by cubiq's file-name patterns
(get_ipadapter_file, get_lora_file, get_clipvision_file) and loaded by the loader nodes of
nodes_ip_adapter(_faceid). The IPADAPTER it returns carries the encoder and the face analysis, so
IPAdapterFaceID runs without clip_vision or insightface inputs.

Unlike IPAdapterUnifiedLoader's presets these find .bin files too (h94 publishes FaceID as .bin; they
go through the restricted loader). cubiq's loader needs the encoder for every preset; here only the
FaceID Plus presets, which read it, need it (it is carried when found). The Portrait "unnorm" preset
finds its file and IPAdapterModelLoader refuses it (not supported). Providers other than CPU and CUDA
are refused.
"""
from __future__ import annotations

from dataclasses import replace

from ..errors import InvalidArgument
from .nodes_clip_vision import clip_vision_loader
from .nodes_ip_adapter import _MODULE, IPAdapterRef, ipadapter_model_loader
from .nodes_ip_adapter_faceid import PROVIDERS, insightface_loader
from .nodes_ip_adapter_presets import ENCODER_PATTERNS, _first
from .nodes_loaders import lora_loader_model_only
from .types import ModelRef, NodeDef, register

_FILE = r"\.(safetensors|bin)$"
# preset -> {"sd15"/"sdxl": (IP-Adapter file patterns tried in order, LoRA pattern or None, h94's file
# name for the messages)}; a side the preset lacks is absent (cubiq's get_ipadapter_file / get_lora_file)
FACEID_PRESETS = {
    "FACEID": {
        "sd15": ((r"faceid.sd15" + _FILE,), r"faceid.sd15.lora\.safetensors$", "ip-adapter-faceid_sd15.bin"),
        "sdxl": ((r"faceid.sdxl" + _FILE,), r"faceid.sdxl.lora\.safetensors$", "ip-adapter-faceid_sdxl.bin")},
    "FACEID PLUS - SD1.5 only": {
        "sd15": ((r"faceid.plus.sd15" + _FILE,), r"faceid.plus.sd15.lora\.safetensors$",
                 "ip-adapter-faceid-plus_sd15.bin")},
    "FACEID PLUS V2": {
        "sd15": ((r"faceid.plusv2.sd15" + _FILE,), r"faceid.plusv2.sd15.lora\.safetensors$",
                 "ip-adapter-faceid-plusv2_sd15.bin"),
        "sdxl": ((r"faceid.plusv2.sdxl" + _FILE,), r"faceid.plusv2.sdxl.lora\.safetensors$",
                 "ip-adapter-faceid-plusv2_sdxl.bin")},
    "FACEID PORTRAIT (style transfer)": {
        "sd15": ((r"portrait.v11.sd15" + _FILE, r"portrait.sd15" + _FILE), None,
                 "ip-adapter-faceid-portrait-v11_sd15.bin"),
        "sdxl": ((r"portrait.sdxl" + _FILE,), None, "ip-adapter-faceid-portrait_sdxl.bin")},
    "FACEID PORTRAIT UNNORM - SDXL only (strong)": {
        "sdxl": ((r"portrait.sdxl.unnorm" + _FILE,), None, "ip-adapter-faceid-portrait_sdxl_unnorm.bin")},
}
UNIFIED_PROVIDERS = ("CPU", "CUDA", "ROCM", "DirectML", "OpenVINO", "CoreML")  # cubiq's list for this node
INSIGHTFACE_PACK = "buffalo_l"  # the pack cubiq's loader runs


def lora_file_name(ipadapter_name: str) -> str:
    """h94's name of a FaceID file's LoRA: ip-adapter-faceid_sd15.bin -> ip-adapter-faceid_sd15_lora.safetensors."""
    return ipadapter_name.rsplit(".", 1)[0] + "_lora.safetensors"


def ipadapter_unified_loader_faceid(call, model, preset, lora_strength, provider, ipadapter=None):
    if not isinstance(model, ModelRef):
        raise InvalidArgument("model: expected a MODEL")
    if preset not in FACEID_PRESETS:
        raise InvalidArgument(f"preset: {preset!r} is not one of {', '.join(FACEID_PRESETS)}")
    if not 0 <= float(lora_strength) <= 1:
        raise InvalidArgument(f"lora_strength: {lora_strength} is not between 0 and 1")
    if provider not in UNIFIED_PROVIDERS:
        raise InvalidArgument(f"provider: {provider!r} is not one of {', '.join(UNIFIED_PROVIDERS)}")
    if PROVIDERS.get(provider) is None:
        raise InvalidArgument(f"provider: {provider} is not available in opensd; use CPU or CUDA")
    if ipadapter is not None and not isinstance(ipadapter, IPAdapterRef):
        raise InvalidArgument("ipadapter: expected an IPADAPTER")
    side = "sdxl" if model.pipe.config.family == "sdxl" else "sd15"
    if side not in FACEID_PRESETS[preset]:
        raise InvalidArgument(f"preset: {preset!r} has no {'SDXL' if side == 'sdxl' else 'SD1.5'} model")
    patterns, lora_pattern, published = FACEID_PRESETS[preset][side]
    folders = call.ctx.folders
    name = _first(folders, "ipadapter", patterns)
    if name is None:
        raise InvalidArgument(f"preset: {preset!r} needs its FaceID file in models/ipadapter ({published}, or a "
                              f".safetensors/.bin name matching {' or '.join(patterns)})")
    lora = None if lora_pattern is None else _first(folders, "loras", (lora_pattern,))
    if lora_pattern is not None and lora is None:
        raise InvalidArgument(f"preset: {preset!r} needs the FaceID LoRA in models/loras ({lora_file_name(published)}"
                              f", or a name matching {lora_pattern})")
    encoder = _first(folders, "clip_vision", (ENCODER_PATTERNS[False],))
    if encoder is None and "PLUS" in preset:
        raise InvalidArgument(f"preset: {preset!r} needs the ViT-H/14 image encoder in models/clip_vision "
                              f"(CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors, or a name matching "
                              f"{ENCODER_PATTERNS[False]})")
    (ref,) = ipadapter_model_loader(call, name)
    clip_vision = None if encoder is None else clip_vision_loader(call, encoder)[0]
    (faces,) = insightface_loader(call, provider, INSIGHTFACE_PACK)
    if lora is not None:
        (model,) = lora_loader_model_only(call, model, lora, lora_strength)
    return model, replace(ref, clip_vision=clip_vision, insightface=faces)


register(NodeDef(
    "IPAdapterUnifiedLoaderFaceID", ipadapter_unified_loader_faceid,
    {"model": ("MODEL", {}), "preset": (list(FACEID_PRESETS), {}),
     "lora_strength": ("FLOAT", {"default": 0.6, "min": 0, "max": 1, "step": 0.01}),
     "provider": (list(UNIFIED_PROVIDERS), {})},
    ("MODEL", "IPADAPTER"), output_names=("MODEL", "ipadapter"), optional={"ipadapter": ("IPADAPTER", {})},
    category="ipadapter/faceid", display_name="IPAdapter Unified Loader FaceID", module=_MODULE))
