"""Read a diffusers-format model folder into ONE original-layout state dict.

Each component (unet/, vae/, text_encoder/, text_encoder_2/) is mapped onto the original key
names by its table in keymap_*.py; from there on a folder is loaded exactly like a single file.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..models import config as C
from . import detect as D
from .families import SUPPORTED, family_message, unsupported_pipeline
from .files import read_state_dict
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


def read_diffusers_folder(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Return (original-layout state dict, metadata) for a diffusers folder."""
    refuse_links_out(path, [path / n for n in _COMPONENTS])
    index = _json(path / "model_index.json") if (path / "model_index.json").is_file() else {}
    family = unsupported_pipeline(str(index.get("_class_name", "")) if isinstance(index, dict) else "")
    if family:
        raise CheckpointError(path, family_message(family, "diffusers folder"))
    if not (path / "unet").is_dir():
        raise CheckpointError(path, "diffusers folder has no unet/" + (
            " but a transformer/: a DiT-based model family, " + SUPPORTED if (path / "transformer").is_dir() else ""))
    out: dict[str, torch.Tensor] = {}
    try:
        unet_cfg = unet_config(_config(path / "unet"))
    except (KeyError, ValueError) as e:
        raise CheckpointError(path / "unet" / "config.json", f"unsupported UNet config: {e}") from None
    out.update(_prefixed(D.UNET, _map(path / "unet", unet_from_diffusers, unet_cfg)))
    vae_json = _config(path / "vae")
    vae_cfg = vae_config(vae_json)
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
        cfg = text_encoder_config(_config(folder), naming)
        if cfg.heads != max(1, cfg.width // 64):
            # Single files cannot record heads, so everything downstream assumes CLIP's 64-wide heads.
            raise CheckpointError(folder / "config.json", f"{cfg.heads} attention heads for width {cfg.width}: "
                                  "only 64-wide heads (every released CLIP text encoder) are supported")
        out.update(_prefixed(prefix, _map(folder, clip_from_transformers, cfg)))

    metadata = {D.META_SCALING: str(vae_json.get("scaling_factor", vae_cfg.scaling_factor)),
                D.META_HEADS: str(unet_cfg.num_heads), D.META_HEAD_CHANNELS: str(unet_cfg.num_head_channels)}
    scheduler = path / "scheduler" / "scheduler_config.json"
    if scheduler.is_file():
        pred = _json(scheduler).get("prediction_type")
        if pred:
            metadata[D.META_PREDICTION] = "v" if pred == "v_prediction" else pred
    unet_json = _config(path / "unet")
    if unet_json.get("sample_size"):
        side = int(unet_json["sample_size"]) * vae_cfg.downscale
        metadata[D.META_RESOLUTION] = f"{side}x{side}"
    return out, metadata


def unet_config(j: dict) -> C.UNetConfig:
    channels = list(j["block_out_channels"])
    mc = channels[0]
    layers = j.get("transformer_layers_per_block", 1)
    layers = [layers] * len(channels) if isinstance(layers, int) else list(layers)
    depth = tuple(layers[i] if "CrossAttn" in t else 0 for i, t in enumerate(j["down_block_types"]))
    head_cfg = _head_config(j, channels)
    return C.UNetConfig(
        in_channels=j.get("in_channels", 4), out_channels=j.get("out_channels", 4), model_channels=mc,
        channel_mult=tuple(c // mc for c in channels), num_res_blocks=j.get("layers_per_block", 2),
        transformer_depth=depth, transformer_depth_middle=layers[-1],
        context_dim=j.get("cross_attention_dim", 768),
        use_linear_in_transformer=bool(j.get("use_linear_projection", False)),
        adm_in_channels=j.get("projection_class_embeddings_input_dim") or 0, **head_cfg)


def _head_config(j: dict, channels: list[int]) -> dict:
    # diffusers' "attention_head_dim" is really a head COUNT unless num_attention_heads is given
    # (a historical misnomer kept for SD1's configs).
    heads = j.get("num_attention_heads") or j.get("attention_head_dim", 8)
    heads = list(heads) if isinstance(heads, (list, tuple)) else [heads] * len(channels)
    if len(set(heads)) == 1:
        return dict(num_heads=heads[0], num_head_channels=-1)
    widths = {c // h for c, h in zip(channels, heads)}
    if len(widths) == 1:
        return dict(num_head_channels=widths.pop())
    raise ValueError(f"unsupported attention head layout {heads} for channels {channels}")


def vae_config(j: dict) -> C.VAEConfig:
    channels = list(j["block_out_channels"])
    return C.VAEConfig(
        in_channels=j.get("in_channels", 3), out_ch=j.get("out_channels", 3), ch=channels[0],
        ch_mult=tuple(c // channels[0] for c in channels), num_res_blocks=j.get("layers_per_block", 2),
        z_channels=j.get("latent_channels", 4), embed_dim=j.get("latent_channels", 4),
        scaling_factor=float(j.get("scaling_factor", 0.18215)))


def text_encoder_config(j: dict, naming: str) -> C.TextEncoderConfig:
    with_proj = any("WithProjection" in a for a in j.get("architectures", []))
    return C.TextEncoderConfig(
        naming=naming, vocab_size=j.get("vocab_size", 49408), width=j["hidden_size"],
        layers=j["num_hidden_layers"], heads=j["num_attention_heads"],
        max_length=j.get("max_position_embeddings", 77), act=j.get("hidden_act", "quick_gelu"),
        projection_dim=j.get("projection_dim", 0) if with_proj else 0)


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
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(path, "missing (a diffusers folder needs a config.json per component)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(path, f"not valid JSON: {e}") from None
