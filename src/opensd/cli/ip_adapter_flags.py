"""`opensd generate --ip-adapter FILE --ip-adapter-image IMG [--ip-adapter-scale S] --clip-vision FILE`:
an image prompt (IP-Adapter, adapters/ip_adapter.py). Names are looked up in the models folder:
the adapter in ipadapter/ (ComfyUI) or ControlNet/ (A1111's extension keeps it there), the image
encoder in clip_vision/. A FaceID adapter (ip-adapter-faceid*.bin) reads the face of the image through
InsightFace (--insightface, default the buffalo_l pack in models/insightface/models/); only FaceID Plus
also needs --clip-vision. Its LoRA is an ordinary --lora."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import InvalidArgument
from .common import float_arg, open_image
from .model_flags import resolve_model

ENCODERS = "ViT-H/14 (FaceID Plus too), or ViT-bigG/14 for ip-adapter_sdxl"


def add_flags(gen: argparse.ArgumentParser) -> None:
    g = gen.add_argument_group("IP-Adapter (image prompt)")
    g.add_argument("--ip-adapter", metavar="FILE_OR_NAME",
                   help="an IP-Adapter file: base (ip-adapter_sd15, ip-adapter_sdxl, ip-adapter_sdxl_vit-h), "
                        "Plus (ip-adapter-plus[-face]_sd15, ip-adapter-plus[-face]_sdxl_vit-h), "
                        "ip-adapter-full-face_sd15, or FaceID (ip-adapter-faceid[-plusv2|-portrait]_sd15/_sdxl.bin)")
    g.add_argument("--ip-adapter-image", type=Path, metavar="IMAGE", help="the image prompt for --ip-adapter")
    g.add_argument("--ip-adapter-scale", type=float_arg, metavar="S",
                   help="how strongly the image prompt acts, 0..2 (default 1)")
    g.add_argument("--clip-vision", metavar="FILE_OR_NAME", help=f"the IP-Adapter's CLIP image encoder ({ENCODERS})")
    g.add_argument("--insightface", metavar="PACK_OR_DIR",
                   help="FaceID adapters: InsightFace's model pack (buffalo_l, the default, or antelopev2 in "
                        "models/insightface/models/, or a folder with det_10g.onnx and w600k_r50.onnx)")


def check(args: argparse.Namespace) -> None:
    """Flag combinations, before anything loads."""
    if args.ip_adapter is None:
        for flag in ("ip_adapter_image", "ip_adapter_scale", "clip_vision", "insightface"):
            if getattr(args, flag) is not None:
                raise InvalidArgument(f"{flag.replace('_', '-')}: needs --ip-adapter FILE")
        return
    if args.ip_adapter_image is None:
        raise InvalidArgument("ip-adapter-image: --ip-adapter needs an image prompt (--ip-adapter-image IMAGE)")


def spec_from_args(args: argparse.Namespace, pipe, folders):
    """The IPAdapterSpec the flags ask for, or None."""
    if args.ip_adapter is None:
        return None
    from ..adapters.ip_adapter import IPAdapterSpec, load_ip_adapter_for
    from ..checkpoints.clip_vision_files import load_clip_vision

    from ..models.ip_adapter_faceid import is_faceid

    image = open_image(args.ip_adapter_image, "ip-adapter-image")
    loaded = load_ip_adapter_for(_find_adapter(folders, args.ip_adapter), pipe)
    faceid = is_faceid(loaded.adapter)
    faces = None
    if faceid:
        from ..adapters import insightface
        faces = insightface.load(insightface.find_pack(folders, args.insightface or "buffalo_l"), str(pipe.device))
    elif args.insightface is not None:
        raise InvalidArgument(f"insightface: {loaded.name} is not an IP-Adapter FaceID; --insightface is for those")
    needs_encoder = not faceid or loaded.adapter.image_proj.clip_dim is not None
    if args.clip_vision is None and needs_encoder:
        raise InvalidArgument(f"clip-vision: --ip-adapter {loaded.name} needs its CLIP image encoder (--clip-vision "
                              f"FILE; {ENCODERS})")
    encoder = None if args.clip_vision is None else load_clip_vision(
        resolve_model(folders, "clip_vision", args.clip_vision, "clip-vision"), pipe.device, pipe.dtype)
    scale = 1.0 if args.ip_adapter_scale is None else args.ip_adapter_scale
    spec = IPAdapterSpec(loaded, encoder, image, scale, faces=faces)
    print(f"opensd: ip-adapter {spec.model.name} scale {scale:g}", file=sys.stderr)
    return spec


def _find_adapter(folders, name: str) -> Path:
    try:
        return resolve_model(folders, "ipadapter", name, "ip-adapter")
    except InvalidArgument as first:
        if Path(name).exists() or folders.root is None:
            raise
        try:
            return resolve_model(folders, "controlnet", name, "ip-adapter")
        except InvalidArgument:
            raise first from None
