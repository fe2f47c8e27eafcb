"""IP-Adapter units of the A1111 ControlNet extension (``alwayson_scripts.controlnet.args``), as
sd-webui-controlnet takes them: ``module`` "ip-adapter_clip_sd15" (a CLIP ViT-H/14 image encoder),
"ip-adapter_clip_sdxl" (ViT-bigG/14), "ip-adapter_clip_sdxl_plus_vith" (ViT-H/14) or
"ip-adapter-auto" (the encoder the adapter file takes), ``model`` an IP-Adapter file (base, Plus,
Plus Face or Full Face) in the ipadapter or ControlNet folder, ``weight`` its scale and ``image`` the
image prompt.

FaceID: ``module`` "ip-adapter_face_id" takes a FaceID or FaceID Portrait file (ip-adapter-faceid_sd15.bin,
...), "ip-adapter_face_id_plus" a FaceID Plus (v2) file and also a ViT-H/14 encoder; both need InsightFace's
buffalo_l model pack in models/insightface/models/buffalo_l (det_10g.onnx, w600k_r50.onnx; the extension
keeps it in its annotator downloads' insightface/models/buffalo_l). The extension encodes the whole
picture with CLIP for face_id_plus; opensd encodes the aligned face, as h94's and cubiq's code do. v2's
shortcut weight is 1 (the extension's). The FaceID LoRA is a LoRA of the prompt
(``<lora:ip-adapter-faceid_sd15_lora:0.6>``), as in the extension.

The image encoder is the file in models/clip_vision of the module's encoder (ViT-H/14: 1024-wide
projection, 1280-wide hidden states; ViT-bigG/14: 1280 and 1664), or for auto the first whose
output the adapter reads (pooled embedding or hidden states) is as wide as it takes. One IP-Adapter unit per
request; ``guidance_start``/``guidance_end`` other than the whole run are accepted but not acted
on (listed in info["unsupported_fields"])."""
from __future__ import annotations

from pathlib import Path

from ..checkpoints.clip_vision_files import detect_vision
from ..checkpoints.files import read_safetensors_header
from ..checkpoints.ip_adapter_files import describe_ip_adapter
from ..errors import CheckpointError, InvalidArgument, OpenSDError
from ..models.ip_adapter import HIDDEN, POOLED, encoder_width
from ..models.ip_adapter_faceid import is_faceid
from . import images_io
from .a1111_units import HASH_SUFFIX, image_field, number, unit_list

# the CLIP image encoders of the modules: the widths of their pooled embedding and hidden states
ENCODERS = {"CLIP ViT-H/14": {POOLED: 1024, HIDDEN: 1280}, "CLIP ViT-bigG/14": {POOLED: 1280, HIDDEN: 1664}}
# module -> the CLIP image encoder it runs (None: the one the adapter reads)
MODULES = {"ip-adapter_clip_sd15": "CLIP ViT-H/14", "ip-adapter_clip_h": "CLIP ViT-H/14",
           "ip-adapter_clip_sdxl_plus_vith": "CLIP ViT-H/14", "ip-adapter_clip_sdxl": "CLIP ViT-bigG/14",
           "ip-adapter_clip_g": "CLIP ViT-bigG/14", "ip-adapter-auto": None,
           "ip-adapter_face_id": None, "ip-adapter_face_id_plus": "CLIP ViT-H/14"}
FACE_MODULES = {"ip-adapter_face_id": False, "ip-adapter_face_id_plus": True}  # module -> takes FaceID Plus
INSIGHTFACE_PACK = "buffalo_l"  # the pack both references run for these modules


def is_unit(unit: dict) -> bool:
    """Whether a ControlNet unit is an IP-Adapter one (by its module, or an ip-adapter model name)."""
    module, model = unit.get("module"), unit.get("model")
    return (isinstance(module, str) and module.strip().lower().startswith("ip-adapter")) or \
        (isinstance(model, str) and Path(model.strip()).name.lower().startswith(("ip-adapter", "ip_adapter")))


def _adapter_path(folders, name: str, field: str) -> Path:
    for kind in ("ipadapter", "controlnet"):
        try:
            return folders.resolve(kind, name)
        except InvalidArgument as e:
            problem = str(e).split(": ", 1)[-1]
    raise InvalidArgument(f"{field}.model: {problem}")


def _described(path: Path, field: str):
    """The adapter file's IPAdapter (meta device), refusing what load_ip_adapter refuses."""
    try:
        return describe_ip_adapter(path)
    except OpenSDError as e:
        raise InvalidArgument(f"{field}.model: {e}") from None


def _encoder(folders, wanted: dict[str, int], name: str, field: str) -> Path:
    """The first CLIP vision file whose outputs are as wide as `wanted` (output -> width) says."""
    for m in folders.list("clip_vision"):
        if m.path.suffix.lower() != ".safetensors":
            continue
        try:
            entries, metadata = read_safetensors_header(m.path)
            cfg = detect_vision({k: tuple(v["shape"]) for k, v in entries.items()}, metadata, m.path)
        except (OpenSDError, KeyError, ValueError):
            continue  # an OpenCLIP-layout or damaged file: not picked by its header
        if all(encoder_width(cfg, source) == width for source, width in wanted.items()):
            return m.path
    raise InvalidArgument(f"{field}.module: no {name} image encoder in models/clip_vision (this IP-Adapter needs "
                          "one)")


def parse_unit(unit: dict, index: int, field: str, folders, max_pixels: int) -> dict:
    """The stored plan of one IP-Adapter unit (422s naming the field)."""
    module = str(unit.get("module") or "ip-adapter-auto").strip().lower()
    if module not in MODULES:
        raise InvalidArgument(f"{field}.module: {unit.get('module')!r} is not supported for IP-Adapter units "
                              f"(supported: {', '.join(MODULES)})")
    model = unit.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidArgument(f"{field}.model: an IP-Adapter file name is required")
    path = _adapter_path(folders, HASH_SUFFIX.sub("", model), field)
    adapter = _described(path, field)
    if module in FACE_MODULES or is_faceid(adapter):
        return _face_unit(unit, index, field, folders, max_pixels, module, path, adapter)
    source, dim = adapter.source, adapter.image_dim
    encoder = MODULES[module]
    wanted = ENCODERS[encoder] if encoder else {source: dim}
    if wanted[source] != dim:
        what = "embeddings" if source == POOLED else "hidden states"
        raise InvalidArgument(f"{field}.module: {module} gives {encoder} {what} ({wanted[source]} wide); "
                              f"{path.stem} takes {dim}-wide ones")
    _check_image(unit, field, max_pixels)
    encoder_path = _encoder(folders, wanted, encoder or f"{dim}-wide", field)
    return _plan(unit, index, field, path, str(encoder_path))


def _check_image(unit: dict, field: str, max_pixels: int) -> None:
    image = image_field(unit)
    if image is None:
        raise InvalidArgument(f"{field}.image: an IP-Adapter unit needs its image prompt")
    images_io.decode_b64(image, f"{field}.image", max_pixels)


def _plan(unit: dict, index: int, field: str, path: Path, encoder: str | None, **extra) -> dict:
    return {"index": index, "kind": "ip_adapter", "path": str(path), "encoder": encoder,
            "weight": number(unit, "weight", field, 1.0, 0.0, 2.0),
            "start": number(unit, "guidance_start", field, 0.0, 0.0, 1.0),
            "end": number(unit, "guidance_end", field, 1.0, 0.0, 1.0), **extra}


def _face_unit(unit, index, field, folders, max_pixels, module, path, adapter) -> dict:
    """The plan of a FaceID unit: the adapter, InsightFace's pack, and for FaceID Plus the ViT-H/14 encoder."""
    from ..adapters.insightface import find_pack

    if not is_faceid(adapter):
        raise InvalidArgument(f"{field}.model: {path.stem} is not an IP-Adapter FaceID file; {module} takes "
                              "ip-adapter-faceid*_sd15 / _sdxl files")
    plus = adapter.image_proj.clip_dim is not None
    wanted = "ip-adapter_face_id_plus" if plus else "ip-adapter_face_id"
    if module != wanted:
        raise InvalidArgument(f"{field}.module: {path.stem} is an IP-Adapter FaceID{' Plus' if plus else ''} file: "
                              f"use the module {wanted}")
    _check_image(unit, field, max_pixels)
    try:
        faces = find_pack(folders, INSIGHTFACE_PACK)
    except InvalidArgument as e:
        raise InvalidArgument(f"{field}.module: {str(e).split(': ', 1)[-1]}") from None
    encoder = str(_encoder(folders, {HIDDEN: adapter.image_proj.clip_dim}, "CLIP ViT-H/14", field)) if plus else None
    return _plan(unit, index, field, path, encoder, faces=faces)


def check_count(units: list[dict]) -> None:
    found = [u for u in units if u.get("kind") == "ip_adapter"]
    if len(found) > 1:
        raise InvalidArgument(f"alwayson_scripts.controlnet.args[{found[1]['index']}]: one IP-Adapter unit per "
                              "request is supported")


def build(units: list[dict], req, pipe, max_pixels: int):
    """The IPAdapterSpec of the planned IP-Adapter unit (on the worker), or None."""
    from ..adapters.ip_adapter import IPAdapterSpec, cached

    for u in units:
        if u.get("kind") != "ip_adapter":
            continue
        field = f"alwayson_scripts.controlnet.args[{u['index']}]"
        image = images_io.decode_b64(image_field(unit_list(req)[u["index"]]), f"{field}.image", max_pixels)
        try:
            encoder = cached("encoder", u["encoder"], pipe) if u.get("encoder") else None
            faces = None
            if u.get("faces"):
                from ..adapters import insightface
                faces = insightface.load(u["faces"], str(pipe.device))
            return IPAdapterSpec(cached("adapter", u["path"], pipe), encoder, image, u["weight"], faces=faces)
        except (InvalidArgument, CheckpointError) as e:
            raise InvalidArgument(f"{field}: {e}") from None
    return None


def unsupported(unit: dict, field: str) -> list[tuple[str, str]]:
    start, end = unit.get("guidance_start", 0.0), unit.get("guidance_end", 1.0)
    if (start not in (None, 0, 0.0)) or (end not in (None, 1, 1.0)):
        return [(f"{field}.guidance_start", "IP-Adapter units act in every step; start/end are not implemented")]
    return []
