"""Whole-image models by name: the checkpoints, then the DiT networks (Flux.1, Chroma, SD3.5,
Z-Image) kept as ComfyUI keeps them, in diffusion_models/ (or unet/), whose text encoders and VAE the
models folder holds (text_encoders/ or clip/, vae/: checkpoints/part_files.py finds them as the
loader does). Every face that lists or picks a model by name (the CLI's -m, the A1111 API's
sd-models and sd_model_checkpoint, our model list and the web UI's picker) uses `whole_models`,
and `resolve_model`.

A network is judged from its safetensors or GGUF header alone (no tensor is read): its family must be
a DiT family, and every part it cannot run without (the family's `needed_parts`) must be found
beside it. The header's answer is remembered by the file's stamp (size, modification time); the
parts are looked for at each listing (their headers are remembered the same way). A UNet-only SD
file, a video model, a ControlNet, a LoRA or a pickle there is not listed (ComfyUI's UNETLoader
still offers every file). A network named as a checkpoint is (the same relative name) is left out:
the checkpoint has the name.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..checkpoints.part_files import find_parts, label
from ..errors import InvalidArgument, OpenSDError
from ..families.dit import DiTFamily
from ..stamp_cache import by_stamp
from .model_info import header_model
from .models_dir import AmbiguousName, ModelFile, ModelFolders

log = logging.getLogger(__name__)
NETWORK_KINDS = ("unet", "unet_gguf")  # diffusion_models/ and unet/: weight files, then .gguf ones


def whole_models(folders: ModelFolders) -> list[ModelFile]:
    """The checkpoints (sorted by name), then the networks the models folder completes (sorted by
    name, kind "unet"), each name once."""
    checkpoints = folders.list("checkpoints")
    taken = {m.name for m in checkpoints}
    networks = []
    for kind in NETWORK_KINDS:
        for m in folders.list(kind):
            if m.name not in taken and completable(m.path):
                taken.add(m.name)
                networks.append(ModelFile("unet", m.name, m.path))
    return checkpoints + sorted(networks, key=lambda m: m.name.lower())


def resolve_model(folders: ModelFolders, name: str) -> Path:
    """The whole model `name` names, found as ModelFolders.resolve finds a checkpoint (name, title,
    hash, part of the name), among `whole_models`. A name only a network lacking parts has is
    refused naming the parts."""
    try:
        return folders.resolve("checkpoints", name, whole_models(folders))
    except AmbiguousName:
        raise
    except InvalidArgument:
        for kind in NETWORK_KINDS:
            try:
                path = folders.resolve(kind, name)
            except InvalidArgument:
                continue
            needed = needed_parts(path)
            missing = sorted(set(needed or ()) - set(find_parts(path, needed or [])))
            if missing:
                raise InvalidArgument(
                    f"checkpoints: {name!r} is the network {path.parent.name}/{path.name}, but the models folder "
                    f"has no {', '.join(map(label, missing))} for it (put them in text_encoders/ or clip/, and vae/)") from None
        raise


def completable(path: Path) -> bool:
    """Whether `path` is a DiT network whose needed parts the models folder it sits in holds."""
    needed = needed_parts(path)
    return needed is not None and not set(needed) - set(find_parts(path, needed))


def _needed_parts(path: Path) -> list[str] | None:
    """The parts ("vae", "clip_l", "t5xxl", "qwen3", ...) the network file at `path` must be given,
    or None when it is not a DiT network of a family we run; from its header."""
    found = header_model(path)  # the file's header, detected as the loader detects it
    if found is None or not isinstance(found[0], DiTFamily):
        return None
    family, cfg, sd = found
    try:
        return family.needed_parts({k: tuple(v.shape) for k, v in family.canonical(sd, cfg).items()})
    except (OpenSDError, ValueError, RuntimeError) as e:
        log.debug("%s: not listed as a whole model: %s", path, e)
        return None


needed_parts = by_stamp(_needed_parts)
