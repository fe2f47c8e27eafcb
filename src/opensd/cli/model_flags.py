"""Model flags by name: `-m NAME`, `--vae NAME`, `--lora NAME`, `--control NAME,...` and upscaler
names are looked up in the models folder (library/user_config: --models-dir, $OPENSD_MODELS_DIR or
the config file) by the same code the server uses (ModelFolders.resolve; -m also finds the DiT networks
in diffusion_models/ that the folder completes, library/network_models.py). A path that exists is
taken as it is; the built-in model and its ControlNet are found by name with no folder set."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InvalidArgument
from ..library.models_dir import ModelFolders
from ..library.user_config import MODELS_DIR_ENV, config_path, models_dir

MODELS_DIR_HELP = (f"an A1111 or ComfyUI models/ folder where -m, --vae, --lora, --control and upscalers "
                   f"are found by name (default: ${MODELS_DIR_ENV}, else models_dir in the config file)")


def add_models_dir_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models-dir", type=Path, help=MODELS_DIR_HELP)


def model_folders(args: argparse.Namespace) -> ModelFolders:
    """The models folder the flags, environment or config file set (only the built-in models without)."""
    return ModelFolders(models_dir(getattr(args, "models_dir", None)))


def whole_model(folders: ModelFolders, name: str) -> Path:
    """A checkpoint, or a network in diffusion_models/ the folder completes, by name (network_models)."""
    from ..library.network_models import resolve_model as whole  # reads headers with torch: only when named
    return whole(folders, name)


def resolve_model(folders: ModelFolders, kind: str, value, flag: str) -> Path:
    """`value` as a path when it exists, else a model of `kind` by name; errors name `flag`."""
    path = Path(value)
    if path.exists():
        return path
    if path.expanduser().is_absolute():
        raise InvalidArgument(f"{flag}: {value} does not exist")
    try:  # a checkpoint's name may also be a network's the models folder completes (network_models)
        return whole_model(folders, str(value)) if kind == "checkpoints" else folders.resolve(kind, str(value))
    except InvalidArgument as e:
        problem = str(e).split(": ", 1)[-1]
    if folders.root is None:
        problem = (f"{value} does not exist, and no models folder is set to find it by name in (--models-dir, "
                   f"${MODELS_DIR_ENV} or models_dir in {config_path()})")
    raise InvalidArgument(f"{flag}: {problem}")


def resolve_generate_models(args: argparse.Namespace, source: dict | None = None) -> ModelFolders:
    """Turn generate's model names into paths (in place) and fill the folders the flags leave unset
    (embeddings) from the models folder; returns the folders, for LoRAs, ControlNets and upscalers.
    With no -m, the checkpoint an image's parameters (`source`, from --from) name is taken from the
    models folder when it is there, by name and hash as A1111 does when it pastes parameters."""
    folders = model_folders(args)
    if args.model is None and source and folders.root is not None and source.get("Model hash"):
        for name in (source["Model hash"], f"{source.get('Model', '')} [{source['Model hash']}]"):
            try:
                args.model = whole_model(folders, name)
                break
            except InvalidArgument:
                continue  # not here: the built-in model, and --from reports the difference
    if args.model is not None:
        args.model = resolve_model(folders, "checkpoints", args.model, "model")
    if args.vae is not None:
        args.vae = resolve_model(folders, "vae", args.vae, "vae")
    args.text_encoder = [resolve_model(folders, "clip", t, "text-encoder") for t in getattr(args, "text_encoder", [])]
    if args.embeddings_dir is None and folders.root is not None:
        found = folders.folders("embeddings")
        args.embeddings_dir = found[0] if found else None
    return folders


def use_folders(pipe, folders: ModelFolders, loras_dir) -> None:
    """Let the loaded pipeline find LoRAs (prompt tags, --lora NAME) and hires upscalers by name in
    the models folder, as the server's pipelines do; --loras-dir keeps its own folder."""
    from ..upscale import Upscalers

    if folders.root is None:
        return
    if loras_dir is None:
        pipe.lora_folders = folders
    pipe.hypernet_folders = folders
    pipe.upscalers = Upscalers(folders, pipe.device, allow_paths=True)
