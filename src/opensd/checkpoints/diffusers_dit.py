"""diffusers folders of the DiT families (StableDiffusion3Pipeline, FluxPipeline, ChromaPipeline, ZImagePipeline,
Flux2KleinPipeline)
as ONE state dict in the single files' layout (detect_dit.py's prefixes), plus the metadata no shape shows.

transformer/ is renamed by keymap_mmdit / keymap_flux (Flux's and Chroma's) / keymap_z_image, vae/ by keymap_vae, the
CLIP encoders keep transformers' naming (ours), T5 and Qwen3 keep it too. Sharded weights
(`*.safetensors.index.json`, as the released SD3.5 Large and T5-XXL folders have) are read shard by shard.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import CheckpointError
from . import detect as D
from . import detect_dit as DD
from .diffusers_config import text_encoder_config, vae_config
from .diffusers_folder import _WEIGHT_NAMES, refuse_links_out
from .files import read_state_dict
from .keymap_clip import clip_from_transformers
from .keymap_flux import flux_from_diffusers
from .keymap_flux2 import flux2_from_diffusers
from .keymap_mmdit import mmdit_from_diffusers
from .keymap_mistral import mistral_state_dict
from .keymap_qwen25vl import qwen25vl_state_dict
from .keymap_qwen25vl_vision import qwen25vl_vision_state_dict
from .keymap_qwen3 import qwen3_state_dict
from .keymap_t5 import t5_state_dict
from .keymap_vae import vae_from_diffusers
from .keymap_z_image import z_image_from_diffusers

# component folder -> what it holds, per family
SD3_PARTS = {"transformer": "sd3", "vae": "vae", "text_encoder": "clip_l", "text_encoder_2": "clip_g",
             "text_encoder_3": "t5"}
FLUX_PARTS = {"transformer": "flux", "vae": "vae", "text_encoder": "clip_l", "text_encoder_2": "t5"}
CHROMA_PARTS = {"transformer": "chroma", "vae": "vae", "text_encoder": "t5"}
Z_IMAGE_PARTS = {"transformer": "z_image", "vae": "vae", "text_encoder": "qwen3"}
FLUX2_PARTS = {"transformer": "flux2", "vae": "vae", "text_encoder": "qwen3"}
FLUX2_DEV_PARTS = {"transformer": "flux2", "vae": "vae", "text_encoder": "mistral"}  # Flux2Pipeline
QWEN_IMAGE_PARTS = {"transformer": "qwen_image", "vae": "qwen_vae", "text_encoder": "qwen25vl"}
_NETWORKS = ("sd3", "flux", "chroma", "z_image", "flux2", "qwen_image")
META_QWEN_VAE_STATS = "opensd.qwen_vae_stats"  # a Qwen-Image VAE's latents_mean / latents_std (JSON)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    """A component's tensors: its single weight file, or every shard its index lists."""
    single = next((folder / n for n in _WEIGHT_NAMES if (folder / n).is_file()), None)
    if single is not None:
        return read_state_dict(single)
    for index in sorted(folder.glob("*.safetensors.index.json")):
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, AttributeError) as e:
            raise CheckpointError(index, f"not a weight index: {e}") from None
        out: dict[str, torch.Tensor] = {}
        for name in shards:
            shard = folder / Path(name).name
            if not shard.is_file():
                raise CheckpointError(shard, "missing (listed in the weight index)")
            out.update(read_state_dict(shard))
        return out
    raise CheckpointError(folder, f"no weight file (looked for {', '.join(_WEIGHT_NAMES[:2])} and shard indexes)")


def _config(folder: Path) -> dict:
    try:
        j = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(folder / "config.json", f"missing or not JSON ({e})") from None
    if not isinstance(j, dict):
        raise CheckpointError(folder / "config.json", "not a JSON object")
    return j


def read_dit_folder(path: Path, parts: dict[str, str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state dict in the single-file layout, metadata) of an SD3 or Flux diffusers folder."""
    refuse_links_out(path, [path / n for n in parts])
    out: dict[str, torch.Tensor] = {}
    metadata: dict[str, str] = {}
    for name, kind in parts.items():
        folder = path / name
        if not folder.is_dir():
            if kind in (*_NETWORKS, "vae", "qwen_vae"):
                raise CheckpointError(path, f"diffusers folder has no {name}/")
            continue  # a text encoder left out (SD3 allows any subset)
        j = _config(folder)
        try:
            out.update(_component(folder, kind, j, metadata))
        except (KeyError, ValueError) as e:
            raise CheckpointError(folder, f"does not fit its config.json: {e}") from None
    sample = _config(path / "transformer").get("sample_size")  # in latent pixels (SD3's configs)
    if isinstance(sample, int):
        side = sample * 2 ** (len(_config(path / "vae").get("block_out_channels", (0,) * 4)) - 1)
        metadata[D.META_RESOLUTION] = f"{side}x{side}"
    return out, metadata


def _component(folder: Path, kind: str, j: dict, metadata: dict[str, str]) -> dict[str, torch.Tensor]:
    sd = weights(folder)
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    if kind == "z_image":
        metadata[DD.META_Z_AXES] = ",".join(str(a) for a in j.get("axes_dims", (32, 48, 48)))
        cfg = DD.z_image_config_diffusers(shapes, "", metadata, str(folder))
        return {DD.NET + k: v for k, v in z_image_from_diffusers(sd, cfg, lazy=True).items()}
    if kind == "flux2":
        metadata[DD.META_F2_AXES] = ",".join(str(a) for a in j.get("axes_dims_rope", (32, 32, 32, 32)))
        cfg = DD.flux2_config_diffusers(shapes, "", metadata, str(folder))
        return {DD.NET + k: v for k, v in flux2_from_diffusers(sd, cfg, lazy=True).items()}
    if kind == "qwen_image":  # diffusers' names are the single file's
        metadata[DD.META_QI_AXES] = ",".join(str(a) for a in j.get("axes_dims_rope", (16, 56, 56)))
        if j.get("zero_cond_t") is True:  # Edit-2511's transformer
            metadata[DD.META_QI_ZERO_COND_T] = "1"
        DD.qwen_image_config(shapes, "", metadata, str(folder))  # refuses what is not Qwen-Image
        return {DD.NET + k: v for k, v in sd.items()}
    if kind == "qwen_vae":  # kept in diffusers' layout: the family renames it (keymap_qwen_vae)
        stats = {k: j[k] for k in ("latents_mean", "latents_std") if isinstance(j.get(k), list)}
        metadata[META_QWEN_VAE_STATS] = json.dumps(stats)
        return {D.VAE + k: v for k, v in sd.items()}
    if kind == "qwen25vl":  # the language model, and the vision tower where there is one (Qwen-Image-Edit)
        visual = {DD.QWEN25_VISUAL + k: v for k, v in qwen25vl_vision_state_dict(sd).items()}
        return {**{DD.QWEN25 + k: v for k, v in qwen25vl_state_dict(sd)[0].items()}, **visual}
    if kind == "mistral":  # Mistral3ForConditionalGeneration: the language model alone
        return {DD.MISTRAL + k: v for k, v in mistral_state_dict(sd)[0].items()}
    if kind == "qwen3":  # transformers' Qwen3 naming is the single file's
        return {DD.QWEN3 + k: v for k, v in qwen3_state_dict(sd).items()}
    if kind in _NETWORKS:
        metadata[DD.META_HEAD_DIM] = str(j.get("attention_head_dim", 64 if kind == "sd3" else 128))
        if kind == "sd3":
            cfg = DD.mmdit_config_diffusers(shapes, "", metadata, str(folder))
            return {DD.NET + k: v for k, v in mmdit_from_diffusers(sd, cfg, lazy=True).items()}
        metadata[DD.META_AXES] = ",".join(str(a) for a in j.get("axes_dims_rope", (16, 56, 56)))
        cfg = (DD.chroma_config_diffusers if kind == "chroma" else DD.flux_config_diffusers)(shapes, "", metadata,
                                                                                            str(folder))
        return {DD.NET + k: v for k, v in flux_from_diffusers(sd, cfg, lazy=True).items()}
    if kind == "vae":
        vae = vae_config(j)
        metadata[D.META_SCALING] = str(vae.scaling_factor)
        return {D.VAE + k: v for k, v in vae_from_diffusers(sd, vae).items()}
    if kind == "t5":
        return {DD.T5 + k: v for k, v in t5_state_dict(sd).items()}
    prefix = DD.CLIP_L if kind == "clip_l" else DD.CLIP_G
    return {prefix + k: v for k, v in clip_from_transformers(sd, text_encoder_config(j, "hf")).items()}
