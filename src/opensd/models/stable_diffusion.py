"""The whole latent-diffusion model as one module whose state-dict keys are a real checkpoint's keys.

`StableDiffusion(cfg).load_state_dict(file_tensors)` consumes an original-layout file directly:
`model.diffusion_model.*` (UNet), `first_stage_model.*` (VAE), and `cond_stage_model.*` (SD1/SD2)
or `conditioner.embedders.N.*` (SDXL) for the text encoders.
"""
from __future__ import annotations

from torch import nn

from .clip import build_text_encoder
from .config import ModelConfig
from .unet import UNetModel
from .vae import AutoencoderKL

# Families whose text encoders sit under SGM's `conditioner.embedders.N` rather than LDM's
# single `cond_stage_model`.
SGM_FAMILIES = ("sdxl", "sdxl_refiner")


class DiffusionWrapper(nn.Module):
    def __init__(self, unet: UNetModel):
        super().__init__()
        self.diffusion_model = unet


class Conditioner(nn.Module):
    def __init__(self, encoders: list[nn.Module]):
        super().__init__()
        self.embedders = nn.ModuleList(encoders)


class StableDiffusion(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = DiffusionWrapper(UNetModel(cfg.unet))
        self.first_stage_model = AutoencoderKL(cfg.vae)
        encoders = [build_text_encoder(c) for c in cfg.text_encoders]
        if cfg.family in SGM_FAMILIES:
            self.conditioner = Conditioner(encoders)
        else:
            (self.cond_stage_model,) = encoders

    @property
    def unet(self) -> UNetModel:
        return self.model.diffusion_model

    @property
    def vae(self) -> AutoencoderKL:
        return self.first_stage_model

    @property
    def text_encoders(self) -> list[nn.Module]:
        if self.config.family in SGM_FAMILIES:
            return list(self.conditioner.embedders)
        return [self.cond_stage_model]
