"""IP-Adapter units of the A1111 ControlNet extension (``alwayson_scripts.controlnet.args``), as
sd-webui-controlnet takes them: ``module`` "ip-adapter_clip_sd15" (a CLIP ViT-H/14 image encoder),
"ip-adapter_clip_sdxl" (ViT-bigG/14), "ip-adapter_clip_sdxl_plus_vith" (ViT-H/14) or
"ip-adapter-auto" (the encoder the adapter file takes), ``model`` a base IP-Adapter file in the
ipadapter or ControlNet folder, ``weight`` its scale and ``image`` the image prompt.

The image encoder is the file in models/clip_vision whose projection width the module (or, for
auto, the adapter) asks for: 1024 for ViT-H/14, 1280 for ViT-bigG/14. One IP-Adapter unit per
request; ``guidance_start``/``guidance_end`` other than the whole run are accepted but not acted
on (listed in info["unsupported_fields"])."""
from __future__ import annotations

from pathlib import Path

from ..checkpoints.clip_vision_files import detect_vision
from ..checkpoints.files import read_safetensors_header
from ..checkpoints.ip_adapter_files import variant
from ..errors import CheckpointError, InvalidArgument, OpenSDError
from . import images_io
from .a1111_units import HASH_SUFFIX, image_field, number, unit_list

# module -> the projection width of the CLIP image encoder it runs (None: the adapter's)
MODULES = {"ip-adapter_clip_sd15": 1024, "ip-adapter_clip_h": 1024, "ip-adapter_clip_sdxl_plus_vith": 1024,
           "ip-adapter_clip_sdxl": 1280, "ip-adapter_clip_g": 1280, "ip-adapter-auto": None}
ENCODER_NAMES = {1024: "CLIP ViT-H/14", 1280: "CLIP ViT-bigG/14"}


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


def _image_dim(path: Path, field: str) -> int:
    """The adapter's image embedding width, from its header (refusing what load_ip_adapter refuses)."""
    if path.suffix.lower() != ".safetensors":
        raise InvalidArgument(f"{field}.model: {path.name} is a pickle (.bin/.pt); use the .safetensors IP-Adapter "
                              "file of the same name")
    try:
        entries, _ = read_safetensors_header(path)
    except OpenSDError as e:
        raise InvalidArgument(f"{field}.model: {e}") from None
    other = variant(entries)
    if other is not None:
        raise InvalidArgument(f"{field}.model: {other} is not supported; only the base IP-Adapter is")
    shape = entries.get("image_proj.proj.weight", {}).get("shape")
    if not shape or len(shape) != 2:
        raise InvalidArgument(f"{field}.model: {path.name} is not an IP-Adapter (no image_proj.proj.weight)")
    return shape[1]


def _encoder(folders, width: int, field: str) -> Path:
    """The first CLIP vision file whose projection is `width` wide."""
    for m in folders.list("clip_vision"):
        if m.path.suffix.lower() != ".safetensors":
            continue
        try:
            entries, metadata = read_safetensors_header(m.path)
            cfg = detect_vision({k: tuple(v["shape"]) for k, v in entries.items()}, metadata, m.path)
        except (OpenSDError, KeyError, ValueError):
            continue  # an OpenCLIP-layout or damaged file: not picked by its header
        if cfg.projection_dim == width:
            return m.path
    raise InvalidArgument(f"{field}.module: no {ENCODER_NAMES.get(width, f'{width}-wide')} image encoder in "
                          "models/clip_vision (this IP-Adapter needs one)")


def parse_unit(unit: dict, index: int, field: str, folders, max_pixels: int) -> dict:
    """The stored plan of one IP-Adapter unit (422s naming the field)."""
    module = str(unit.get("module") or "ip-adapter-auto").strip().lower()
    if module not in MODULES:
        raise InvalidArgument(f"{field}.module: {unit.get('module')!r} is not supported for IP-Adapter units "
                              f"(only the base adapter: {', '.join(MODULES)})")
    model = unit.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidArgument(f"{field}.model: an IP-Adapter file name is required")
    path = _adapter_path(folders, HASH_SUFFIX.sub("", model), field)
    dim = _image_dim(path, field)
    width = MODULES[module] or dim
    if width != dim:
        raise InvalidArgument(f"{field}.module: {module} gives {ENCODER_NAMES[width]} embeddings ({width} wide); "
                              f"{path.stem} takes {dim}-wide ones")
    image = image_field(unit)
    if image is None:
        raise InvalidArgument(f"{field}.image: an IP-Adapter unit needs its image prompt")
    images_io.decode_b64(image, f"{field}.image", max_pixels)
    return {"index": index, "kind": "ip_adapter", "path": str(path), "encoder": str(_encoder(folders, width, field)),
            "weight": number(unit, "weight", field, 1.0, 0.0, 2.0),
            "start": number(unit, "guidance_start", field, 0.0, 0.0, 1.0),
            "end": number(unit, "guidance_end", field, 1.0, 0.0, 1.0)}


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
            return IPAdapterSpec(cached("adapter", u["path"], pipe), cached("encoder", u["encoder"], pipe), image,
                                 u["weight"])
        except (InvalidArgument, CheckpointError) as e:
            raise InvalidArgument(f"{field}: {e}") from None
    return None


def unsupported(unit: dict, field: str) -> list[tuple[str, str]]:
    start, end = unit.get("guidance_start", 0.0), unit.get("guidance_end", 1.0)
    if (start not in (None, 0, 0.0)) or (end not in (None, 1, 1.0)):
        return [(f"{field}.guidance_start", "IP-Adapter units act in every step; start/end are not implemented")]
    return []
