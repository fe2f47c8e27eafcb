"""Which tiny autoencoder (TAESD family) fits a model, where its files are, and loading it.

A1111 keeps them in `models/VAE-approx`, ComfyUI in `models/vae_approx`, named by latent space:
`taesd_*` (SD 1.x/2.x), `taesdxl_*` (SDXL), `taesd3_*` (SD3), `taef1_*` (Flux), each as a
`_decoder` and an `_encoder` file; a diffusers AutoencoderTiny may sit in a folder of that name.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoints.taesd_files import read_tiny_vae
from ..errors import CheckpointError
from ..models.taesd import TinyAutoencoder

# model family -> the file-name stem madebyollin publishes for its latent space ("small" models,
# like the built-in one, have latent spaces of their own: no tiny autoencoder). TAESD3 ("taesd3")
# and TAEF1 ("taef1", 16 channels) load as well, for families that use their latents.
_STEMS = {"sd1": "taesd", "sd2": "taesd", "sdxl": "taesdxl", "sdxl_refiner": "taesdxl"}
_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def tiny_vae_stem(config) -> str | None:
    """madebyollin's name for the tiny autoencoder of this model's latent space (None: there is none)."""
    return _STEMS.get(config.family)


def find_tiny_vae(folders, config) -> list[Path]:
    """The files in `folders` (first folder first) that make this model's tiny autoencoder: its
    decoder and encoder files, or one diffusers file holding both."""
    stem = tiny_vae_stem(config)
    if stem is None:
        return []
    for folder in map(Path, folders):
        parts = [p for part in ("decoder", "encoder") for p in _candidates(folder / f"{stem}_{part}")]
        if parts:
            return parts
        combined = _candidates(folder / stem / "diffusion_pytorch_model") + _candidates(folder / stem)
        if combined:
            return combined[:1]
    return []


def _candidates(base: Path) -> list[Path]:
    return [base.with_name(base.name + s) for s in _SUFFIXES if base.with_name(base.name + s).is_file()][:1]


def load_tiny_vae(paths, config, device, dtype: torch.dtype = torch.float32) -> TinyAutoencoder:
    """One tiny autoencoder from its files (madebyollin's or diffusers' layout), checked against the
    model's latent channels."""
    parts: dict = {}
    for path in paths:
        found, channels = read_tiny_vae(path)
        if channels != config.latent_channels:
            raise CheckpointError(path, f"tiny autoencoder for {channels}-channel latents; the model's have "
                                        f"{config.latent_channels}")
        parts.update(found)
    with torch.device("meta"):
        tiny = TinyAutoencoder(config.latent_channels, encoder="encoder" in parts, decoder="decoder" in parts)
    sd = {f"{part}.{k}": v.to(device=device, dtype=dtype) for part, p in parts.items() for k, v in p.items()}
    try:
        tiny.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as e:
        raise CheckpointError(paths[0], f"weights do not fit a TAESD: {str(e).splitlines()[-1].strip()}") from None
    return tiny.eval().requires_grad_(False)
