"""Upscalers: model files run through spandrel (model_file), tiled for any size (tiles), the classic
resamplers and latent modes by A1111's names (names), and the set a user has (upscalers)."""
from .model_file import load_upscale_model
from .names import LATENT_MODES, label, latent_mode
from .tiles import tiled_scale
from .upscalers import Upscalers

__all__ = ["LATENT_MODES", "Upscalers", "label", "latent_mode", "load_upscale_model", "tiled_scale"]
