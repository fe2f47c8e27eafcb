"""Any checkpoint (single file or diffusers folder) as an original-layout state dict, its metadata
and the config detected from it: the one reading path behind loading, merging and converting."""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import CheckpointError
from ..models import config as C
from . import detect as D
from .diffusers_folder import is_diffusers_folder, read_diffusers_folder
from .files import read_metadata, read_state_dict
from .keymap_vae import fix_ldm_vae_shapes


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
    sd = fix_vae(sd)
    cfg = D.detect({k: tuple(v.shape) for k, v in sd.items()}, str(path), metadata, prediction)
    return sd, metadata, cfg


def fix_vae(sd: dict[str, torch.Tensor], strip: bool = False) -> dict[str, torch.Tensor]:
    """Old LDM VAE attention weights as 1x1 convs; with `strip`, only the VAE without its prefix."""
    vae = fix_ldm_vae_shapes({k[len(D.VAE):]: v for k, v in sd.items() if k.startswith(D.VAE)})
    if strip:
        return vae
    rest = {k: v for k, v in sd.items() if not k.startswith(D.VAE)}
    rest.update({D.VAE + k: v for k, v in vae.items()})
    return rest
