"""What travels between the front door and a Ray worker for an A1111 generation job.

The stored payload names model files by their path on the front door. A worker is sent names instead
(relative to their kind's folder, as the model lists show them) and finds each one inside its own
models folder, so nothing it is sent can lead it outside that folder. The lines of the wildcards a
prompt uses go along too: the wildcards folder lives with the front door's data, not on the workers."""
from __future__ import annotations

from pathlib import Path

from ..adapters.lora import prompt_lora_tags
from ..errors import InvalidArgument
from ..library.models_dir import BUILTIN_CHECKPOINT, ModelFolders
from ..library.network_models import resolve_model
from ..text.dynamic_prompts import check_template
from ..text.wildcards import Wildcards

KIND = "a1111"


def remote(job) -> bool:
    """A job a Ray worker runs: a plain A1111 generation (a script's many generations, training, merges,
    extras and ComfyUI graphs run on the front door's own worker)."""
    return (job.kind == KIND and not job.payload.get("script")) or job.kind == "comfy"


def model_name(folders: ModelFolders, kind: str, path: str | Path) -> str:
    """The name of the model file `path` inside the `kind` folders, as a worker's ModelFolders resolves it."""
    path = Path(path).resolve()
    if kind == "checkpoints" and path == BUILTIN_CHECKPOINT.resolve():
        return path.name
    # a whole model may be a network in diffusion_models/ (library/network_models.py), named inside it
    for folder in folders.folders(kind) + (folders.folders("unet") if kind == "checkpoints" else []):
        if path.is_relative_to(folder):
            return path.relative_to(folder).as_posix()
    raise InvalidArgument(f"{kind}: {path.name} is not inside the models folder, so the Ray workers cannot "
                          "load it (start the server with --models-dir on a folder every node mounts)")


def models_of(folders: ModelFolders, payload: dict) -> tuple[str, str | None, tuple[str, ...]]:
    """(checkpoint, VAE, LoRA names) a job needs loaded: what a worker is chosen by."""
    vae = payload.get("vae_path")
    loras = sorted({Path(t.name).stem.lower() for t in prompt_lora_tags(payload.get("prompt") or "")})
    return (model_name(folders, "checkpoints", payload["model_path"]),
            model_name(folders, "vae", vae) if vae else None, tuple(loras))


def to_wire(folders: ModelFolders, wildcards: Wildcards, payload: dict) -> dict:
    """The payload as a worker gets it: model names for paths (checkpoint, VAE, ControlNets, refiner), the
    wildcard lines it needs, no output folder."""
    wire = {k: v for k, v in payload.items() if k not in ("model_path", "vae_path", "output")}
    wire["model"], wire["vae"], _ = models_of(folders, payload)
    wire["controlnet"] = [_unit_to_wire(folders, u) for u in payload.get("controlnet") or []]
    if payload.get("refiner"):
        wire["refiner"] = {k: v for k, v in payload["refiner"].items() if k != "path"} \
            | {"model": model_name(folders, "checkpoints", payload["refiner"]["path"])}
    used = _Recording(wildcards)
    hires = payload["kwargs"].get("hires") or {}
    for text in (payload.get("prompt"), payload.get("negative_prompt"), hires.get("prompt"),
                 hires.get("negative_prompt")):
        if text:
            check_template(text, used)
    wire["wildcards"] = used.seen
    return wire


def from_wire(folders: ModelFolders, wire: dict) -> tuple[dict, Wildcards]:
    """On the worker: the payload with this worker's own paths for the models named, and the wildcards."""
    payload = {k: v for k, v in wire.items() if k not in ("model", "vae", "wildcards")}
    payload["model_path"] = str(resolve_model(folders, wire["model"]))
    payload["vae_path"] = str(folders.resolve("vae", wire["vae"])) if wire.get("vae") else None
    payload["controlnet"] = [_unit_from_wire(folders, u) for u in wire.get("controlnet") or []]
    if wire.get("refiner"):
        payload["refiner"] = {k: v for k, v in wire["refiner"].items() if k != "model"} \
            | {"path": str(resolve_model(folders, wire["refiner"]["model"]))}
    return payload, Shipped(wire.get("wildcards") or {})


class _Recording(Wildcards):
    """The front door's wildcards, noting each one a prompt reads."""

    def __init__(self, inner: Wildcards):
        super().__init__(inner.root, inner.flag)
        self.seen: dict[str, list[str]] = {}

    def values(self, name: str, where: str = "prompt") -> list[str]:
        self.seen[name] = super().values(name, where)
        return self.seen[name]


class Shipped(Wildcards):
    """Wildcards sent with a job: the lines the front door read for it."""

    def __init__(self, lines: dict[str, list[str]]):
        super().__init__(None)
        self.lines = lines

    def values(self, name: str, where: str = "prompt") -> list[str]:
        if name not in self.lines:  # the front door checked every wildcard the prompts use
            raise InvalidArgument(f"{where}: wildcard __{name}__ was not sent to this worker")
        return self.lines[name]


def unit_kind(folders: ModelFolders, unit: dict) -> str:
    """The folder kind a planned ControlNet-extension unit's model is in: an IP-Adapter unit's adapter
    may be in ipadapter/ (ComfyUI) or ControlNet/ (A1111's extension)."""
    if unit.get("kind") != "ip_adapter":
        return "controlnet"
    path = Path(unit["path"]).resolve()
    return "ipadapter" if any(path.is_relative_to(f) for f in folders.folders("ipadapter")) else "controlnet"


def _unit_to_wire(folders: ModelFolders, unit: dict) -> dict:
    kind = unit_kind(folders, unit)
    wire = {k: v for k, v in unit.items() if k not in ("path", "encoder")}
    wire["model"] = model_name(folders, kind, unit["path"])
    if unit.get("kind") == "ip_adapter":  # and its CLIP image encoder (FaceID has none) and InsightFace pack
        wire |= {"model_kind": kind,
                 "encoder": unit["encoder"] and model_name(folders, "clip_vision", unit["encoder"])}
        if unit.get("faces"):
            wire["faces"] = {k: model_name(folders, "insightface", v) for k, v in unit["faces"].items()}
    if unit.get("weights"):  # the preprocessor's model file, or files ({"body", "hand", ...})
        wire["weights"] = _each(unit["weights"], lambda w: model_name(folders, "preprocessors", w))
    return wire


def _unit_from_wire(folders: ModelFolders, wire: dict) -> dict:
    unit = {k: v for k, v in wire.items() if k not in ("model", "model_kind", "encoder")}
    unit["path"] = str(folders.resolve(wire.get("model_kind", "controlnet"), wire["model"]))
    if wire.get("kind") == "ip_adapter":
        unit["encoder"] = wire["encoder"] and str(folders.resolve("clip_vision", wire["encoder"]))
        if wire.get("faces"):
            unit["faces"] = {k: str(folders.resolve("insightface", v)) for k, v in wire["faces"].items()}
    if wire.get("weights"):
        unit["weights"] = _each(wire["weights"], lambda w: str(folders.resolve("preprocessors", w)))
    return unit


def _each(weights, fn):
    """`fn` of a preprocessor's one file, or of each file of a {"body", "hand", ...} dict (None kept)."""
    if isinstance(weights, dict):
        return {k: None if v is None else fn(v) for k, v in weights.items()}
    return fn(weights)
