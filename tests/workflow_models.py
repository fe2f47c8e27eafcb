"""Tiny models for the workflow tests beyond workflow_fixtures' SD1-shaped one: an SDXL-shaped
checkpoint (CLIP-L-like and ViT-bigG-like encoders, pooled text and size conditioning) and the
parts of a checkpoint split into ComfyUI's separate files (vae/, unet/, clip/), as people download
them."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from test_lora_pipeline import write_random_lora
from workflow_fixtures import make_models

from opensd.checkpoints import detect as D
from opensd.checkpoints.files import read_state_dict, save_safetensors
from opensd.checkpoints.keymap_clip import clip_to_transformers
from opensd.library.models_dir import ModelFolders
from opensd.library.synthetic import TINY, write_random_checkpoint
from opensd.models import config as C

# SDXL's layout at toy size: the second (bigG-like) encoder is the wider one, as in SDXL
TINY_SDXL = C.ModelConfig(
    family="sdxl",
    unet=replace(TINY.unet, context_dim=96, adm_in_channels=64 + 6 * 256, use_linear_in_transformer=True),
    vae=replace(TINY.vae, scaling_factor=0.13025),
    text_encoders=(C.TextEncoderConfig(width=32, layers=2, heads=1, skip=2, final_norm=False),
                   C.TextEncoderConfig(naming="openclip", width=64, layers=2, heads=1, act="gelu",
                                       projection_dim=64, skip=2, final_norm=False, pad_token=0, pooled=True)),
    resolution=64,
)


def write_sdxl(path: Path) -> Path:
    return write_random_checkpoint(path, TINY_SDXL)


def _strip(sd: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def split_parts(ckpt: Path, root: Path, name: str) -> dict[str, str]:
    """The checkpoint's VAE, UNet and text encoders as separate files under root's vae/, unet/ and
    clip/, in the layouts ComfyUI's separate downloads use (no prefixes; text encoders in
    transformers' naming). Returns {part: file name}."""
    sd = read_state_dict(ckpt)
    cfg = D.detect({k: tuple(v.shape) for k, v in sd.items()}, str(ckpt))
    out = {}
    for folder, part, tensors in [("vae", "vae", _strip(sd, D.VAE)), ("unet", "unet", _strip(sd, D.UNET))]:
        (root / folder).mkdir(parents=True, exist_ok=True)
        save_safetensors(tensors, root / folder / f"{name}_{part}.safetensors",
                         metadata=D.metadata_for(cfg) if part == "unet" else None)
        out[part] = f"{name}_{part}.safetensors"
    (root / "clip").mkdir(parents=True, exist_ok=True)
    if cfg.family == "sdxl":
        encoders = [("l", _strip(sd, f"{D.SGM}0.transformer."), cfg.text_encoders[0]),
                    ("g", _strip(sd, f"{D.SGM}1.model."), cfg.text_encoders[1])]
    else:
        encoders = [("l", _strip(sd, D.LDM_HF), cfg.text_encoders[0])]
    for tag, tensors, enc in encoders:
        save_safetensors(clip_to_transformers(tensors, enc), root / "clip" / f"{name}_clip_{tag}.safetensors")
        out[f"clip_{tag}"] = f"{name}_clip_{tag}.safetensors"
    return out



def make_all_models(root: Path, configs: dict[str, str]) -> tuple[ModelFolders, dict[str, str]]:
    """workflow_fixtures' models folder (checkpoints/tiny.safetensors) plus checkpoints/tiny_xl.safetensors,
    both also split into part files (names: "vae", "unet", "clip_l" and "xl_vae", "xl_unet",
    "xl_clip_l", "xl_clip_g"), loras/style.safetensors and configs/<name> with the given yaml texts."""
    folders = make_models(root)
    write_sdxl(root / "checkpoints" / "tiny_xl.safetensors")
    names = split_parts(root / "checkpoints" / "tiny.safetensors", root, "tiny")
    xl = split_parts(root / "checkpoints" / "tiny_xl.safetensors", root, "xl")
    names.update({f"xl_{k}": v for k, v in xl.items()})
    write_random_lora(root / "loras" / "style.safetensors", 1)
    (root / "configs").mkdir()
    for name, text in configs.items():
        (root / "configs" / name).write_text(text)
    return folders, names
