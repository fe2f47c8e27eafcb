"""Any checkpoint (single file or diffusers folder) as an original-layout state dict, its metadata
and the config detected from it: the one reading path behind loading, merging and converting."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..models import config as C
from . import detect as D
from .diffusers_folder import is_diffusers_folder, read_diffusers_folder
from .files import read_metadata, read_state_dict
from .keymap_vae import fix_ldm_vae_keys, fix_ldm_vae_shapes
from .markers import marker_metadata


def read_checkpoint(path, prediction: C.Prediction | None = None
                    ) -> tuple[dict[str, torch.Tensor], dict[str, str], C.ModelConfig]:
    path = Path(path)
    if is_diffusers_folder(path):
        try:
            sd, metadata = read_diffusers_folder(path)
        except ValueError as e:
            raise CheckpointError(path, str(e)) from None
    else:
        sd, metadata = read_state_dict(path), read_metadata(path)
        metadata = {**metadata, **marker_metadata(sd)}  # the EDM bounds its marker tensors hold
    sd = fix_vae(sd)
    cfg = D.detect({k: tuple(v.shape) for k, v in sd.items()}, str(path), metadata, prediction)
    return sd, metadata, cfg


def fix_vae(sd: dict[str, torch.Tensor], strip: bool = False) -> dict[str, torch.Tensor]:
    """Old LDM VAE attention weights as 1x1 convs, FLUX.2's single-file names as ours; with `strip`,
    only the VAE without its prefix."""
    vae = fix_ldm_vae_shapes(fix_ldm_vae_keys({k[len(D.VAE):]: v for k, v in sd.items() if k.startswith(D.VAE)}))
    if strip:
        return vae
    rest = {k: v for k, v in sd.items() if not k.startswith(D.VAE)}
    rest.update({D.VAE + k: v for k, v in vae.items()})
    return rest


def declared_vae_scaling(path: Path, sd: dict[str, torch.Tensor]) -> float | None:
    """The latent scaling factor a file given as a VAE says it was made for: its metadata, the
    diffusers config.json beside it, or, for a whole checkpoint, its family's; None when it does not
    say (a bare VAE file: SD1's and SDXL's VAEs have the same shapes, so shapes cannot tell)."""
    metadata = read_metadata(path)
    if D.META_SCALING in metadata:
        try:
            return float(metadata[D.META_SCALING])
        except ValueError:
            return None
    config = path.parent / "config.json"
    if config.is_file():
        try:
            j = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            j = None
        if isinstance(j, dict) and j.get("_class_name") == "AutoencoderKL" and \
                isinstance(j.get("scaling_factor"), (int, float)):
            return float(j["scaling_factor"])
    if D.UNET + "input_blocks.0.0.weight" in sd:
        try:
            return D.detect({k: tuple(v.shape) for k, v in sd.items()}, str(path), metadata).vae.scaling_factor
        except CheckpointError:
            return None
    return None
