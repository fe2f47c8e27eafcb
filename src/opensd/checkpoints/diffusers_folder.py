"""Read a diffusers-format model folder into ONE original-layout state dict.

Each component (unet/, vae/, text_encoder/, text_encoder_2/) is mapped onto the original key
names by its table in keymap_*.py; from there on a folder is loaded exactly like a single file.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import CheckpointError
from . import detect as D
from . import markers
from .markers import META_ZSNR
from .diffusers_config import check_scheduler, text_encoder_config, unet_config, vae_config
from .families import SUPPORTED, family_message, unsupported_pipeline
from .files import read_state_dict
from .safe_pickle import first_line
from .keymap_clip import clip_from_transformers
from .keymap_unet import unet_from_diffusers
from .keymap_vae import vae_from_diffusers

# Weight file names diffusers and transformers write, best first (safetensors before pickles).
_WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "model.safetensors",
                 "diffusion_pytorch_model.fp16.safetensors", "model.fp16.safetensors",
                 "diffusion_pytorch_model.bin", "pytorch_model.bin",
                 "diffusion_pytorch_model.fp16.bin", "pytorch_model.fp16.bin")

_COMPONENTS = ("model_index.json", "unet", "vae", "text_encoder", "text_encoder_2", "scheduler")


def is_diffusers_folder(path: Path) -> bool:
    return path.is_dir() and ((path / "model_index.json").is_file() or (path / "unet").is_dir())


def refuse_links_out(folder: Path, entries) -> None:
    """CheckpointError if any of `entries` (files or component folders of the model `folder`) leads
    outside it: a downloaded folder could point its "weights" at any file on the machine. The Hugging
    Face cache links each file of repo/snapshots/<rev>/ to repo/blobs/, so there the repo is the bound."""
    bound = folder.resolve()
    if bound.parent.name == "snapshots":
        bound = bound.parent.parent
    for entry in entries:
        for f in [entry, *(entry.iterdir() if entry.is_dir() else ())]:
            if f.exists() and not f.resolve().is_relative_to(bound):
                raise CheckpointError(f, f"is a link leading outside the model folder {folder}; "
                                         "refusing to read files a model folder points at elsewhere")


MODEL_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                 "diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.bin")


def model_folder(path: Path, what: str) -> tuple[dict, Path]:
    """(config.json, weights file) of a one-model diffusers folder (a ControlNet, a T2I-Adapter);
    CheckpointError naming `what` when either is missing, unreadable or links out of the folder."""
    cfg_file = path / "config.json"
    weights = next((path / n for n in MODEL_WEIGHTS if (path / n).is_file()), None)
    if not cfg_file.is_file() or weights is None:
        raise CheckpointError(path, f"a diffusers {what} folder needs config.json and "
                                    "diffusion_pytorch_model.safetensors")
    refuse_links_out(path, [cfg_file, weights])
    try:
        j = json.loads(cfg_file.read_text())
    except ValueError as e:
        raise CheckpointError(cfg_file, f"unsupported {what} config: {e}") from None
    if not isinstance(j, dict):
        raise CheckpointError(cfg_file, f"unsupported {what} config: not a JSON object")
    return j, weights


def read_index(path: Path) -> dict:
    """A folder's model_index.json ({} when it has none, as some hand-made UNet folders)."""
    index = path / "model_index.json"
    return _json(index) if index.is_file() else {}


def read_diffusers_folder(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Return (original-layout state dict, metadata) for a diffusers folder."""
    refuse_links_out(path, [path / n for n in _COMPONENTS])
    index = read_index(path)
    family = unsupported_pipeline(str(index.get("_class_name", "")))
    if family:
        raise CheckpointError(path, family_message(family, "diffusers folder"))
    if not (path / "unet").is_dir():
        raise CheckpointError(path, "diffusers folder has no unet/" + (
            " but a transformer/: a DiT-based model family, " + SUPPORTED if (path / "transformer").is_dir() else ""))
    unet_json, vae_json = _config(path / "unet"), _config(path / "vae")
    unet_cfg = _translated(path / "unet", unet_config, unet_json, "UNet2DConditionModel")
    vae_cfg = _translated(path / "vae", vae_config, vae_json, "AutoencoderKL")
    out: dict[str, torch.Tensor] = {}
    out.update(_prefixed(D.UNET, _map(path / "unet", unet_from_diffusers, unet_cfg)))
    out.update(_prefixed(D.VAE, _map(path / "vae", vae_from_diffusers, vae_cfg)))

    te1, te2 = path / "text_encoder", path / "text_encoder_2"
    if te1.is_dir() and te2.is_dir():  # SDXL base: CLIP-L in HF naming, bigG in OpenCLIP naming
        targets = [(te1, f"{D.SGM}0.transformer.", "hf"), (te2, f"{D.SGM}1.model.", "openclip")]
    elif te2.is_dir():  # SDXL refiner: bigG only
        targets = [(te2, f"{D.SGM}0.model.", "openclip")]
    elif te1.is_dir():
        # SD2's encoder is OpenCLIP ViT-H (gelu); SD1 and small models use OpenAI CLIP (quick_gelu).
        gelu = _config(te1).get("hidden_act") == "gelu"
        targets = [(te1, D.LDM_OPENCLIP if gelu else D.LDM_HF, "openclip" if gelu else "hf")]
    else:
        raise CheckpointError(path, "diffusers folder has no text_encoder/ or text_encoder_2/")
    for folder, prefix, naming in targets:
        cfg = _translated(folder, text_encoder_config, _config(folder), None, naming)
        if cfg.heads != max(1, cfg.width // 64):
            # Single files cannot record heads, so everything downstream assumes CLIP's 64-wide heads.
            raise CheckpointError(folder / "config.json", f"{cfg.heads} attention heads for width {cfg.width}: "
                                  "only 64-wide heads (every released CLIP text encoder) are supported")
        out.update(_prefixed(prefix, _map(folder, clip_from_transformers, cfg)))

    metadata = {D.META_SCALING: str(vae_cfg.scaling_factor),
                D.META_HEADS: str(unet_cfg.num_heads), D.META_HEAD_CHANNELS: str(unet_cfg.num_head_channels),
                **markers.latent_stats_metadata(vae_cfg)}
    scheduler = path / "scheduler" / "scheduler_config.json"
    if scheduler.is_file():
        sched = _json(scheduler)
        try:
            edm = check_scheduler(sched)
        except ValueError as e:
            raise CheckpointError(scheduler, str(e)) from None
        pred = sched.get("prediction_type")
        if edm is not None:  # EDM schedulers' "epsilon" is EDM's F output
            metadata |= markers.edm_metadata(edm)
            metadata[D.META_PREDICTION] = "v" if pred == "v_prediction" else "edm"
        elif pred:
            metadata[D.META_PREDICTION] = "v" if pred == "v_prediction" else pred
        if sched.get("rescale_betas_zero_snr"):
            metadata[META_ZSNR] = "true"
    if unet_json.get("sample_size"):
        side = int(unet_json["sample_size"]) * vae_cfg.downscale
        metadata[D.META_RESOLUTION] = f"{side}x{side}"
    return out, metadata


def _translated(folder: Path, translate, j: dict, class_name: str | None, *args):
    """`translate(j, *args)`, with an unsupported or missing field reported against the config file."""
    where = folder / "config.json"
    try:
        if class_name and j.get("_class_name", class_name) != class_name:
            raise ValueError(f"_class_name = {j['_class_name']!r}: only {class_name} is supported")
        return translate(j, *args)
    except KeyError as e:
        raise CheckpointError(where, f"unsupported config: no {e.args[0]!r} field") from None
    except (ValueError, TypeError) as e:
        raise CheckpointError(where, f"unsupported config: {e}") from None


def _map(folder: Path, mapper, cfg) -> dict[str, torch.Tensor]:
    weights = next((folder / n for n in _WEIGHT_NAMES if (folder / n).is_file()), None)
    if weights is None:
        raise CheckpointError(folder, f"no weight file (looked for {', '.join(_WEIGHT_NAMES[:2])}, ...)")
    try:
        return mapper(read_state_dict(weights), cfg)
    except KeyError as e:
        raise CheckpointError(weights, f"keys do not fit the architecture in config.json: {e.args[0]}") from None


def _prefixed(prefix: str, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in sd.items()}


def _config(folder: Path) -> dict:
    return _json(folder / "config.json")


def _json(path: Path) -> dict:
    try:
        j = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(path, "missing (a diffusers folder needs a config.json per component)") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(path, f"not valid JSON: {first_line(e)}") from None
    if not isinstance(j, dict):
        raise CheckpointError(path, f"not a JSON object (got a {type(j).__name__})")
    return j
