"""The UNet family: Stable Diffusion 1.x, 2.x, SDXL (base and refiner) and our small models.
eps- or v-prediction over 1000 discrete timesteps, CLIP text encoders, a 4-channel VAE."""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from ..adapters import lora_keys
from ..checkpoints import detect as D
from ..checkpoints.diffusers_folder import read_diffusers_folder
from ..models.config import ModelConfig
from ..models.stable_diffusion import StableDiffusion
from ..models.unet import reuse_context_kv
from ..pipeline.conditioning import PromptConditioner
from ..sampling.model_sampling import ModelSampling, continuous_sampling
from .base import Family


class UNetFamily(Family):
    name = "unet"
    label = "Stable Diffusion 1.x/2.x/XL"
    members = ("sd1", "sd2", "sdxl", "sdxl_refiner", "small")
    adapters = frozenset({"lora", "controlnet", "ip_adapter", "freeu", "discrete_sampling", "ldm_config",
                          "deep_cache", "pag", "deep_shrink", "continuous_sampling", "checkpoint_save",
                          "attention_speedups", "fooocus_inpaint",
                          "hypernetwork"})

    def detect(self, shapes, metadata, path, prediction=None) -> ModelConfig | None:
        if D.UNET + "input_blocks.0.0.weight" not in shapes:
            return None
        return D.detect(shapes, path, metadata, prediction)

    def read_folder(self, path, index):
        return read_diffusers_folder(path)  # last in line: it names the families it does not run

    def build(self, cfg: ModelConfig) -> StableDiffusion:
        return StableDiffusion(cfg)

    def finish(self, loaded, explicit_prediction) -> None:
        cfg = loaded.config
        if cfg.family == "sd2" and not cfg.inpainting and explicit_prediction is None and cfg.edm is None:
            guessed = guess_sd2_prediction(loaded.model)
            if guessed != cfg.prediction:
                loaded.config = loaded.model.config = replace(cfg, prediction=guessed,
                                                              resolution=768 if guessed == "v" else 512)

    def network(self, model: StableDiffusion) -> nn.Module:
        return model.unet

    def net_fn(self, model: StableDiffusion, guidance: float | None = None, references=None):
        unet = model.unet

        def call(x, t, context, y, control=None):
            return unet(x, t, context, y) if control is None else unet(x, t, context, y, control=control)

        return call

    def blocks(self, model: StableDiffusion) -> list[nn.Module]:
        unet = model.unet
        blocks = [unet.time_embed] + ([unet.label_emb] if hasattr(unet, "label_emb") else [])
        return blocks + list(unet.input_blocks) + [unet.middle_block] + list(unet.output_blocks) + [unet.out]

    def lora_modules(self, model: StableDiffusion) -> list:
        return lora_keys.lora_modules(model)

    def running(self, model: StableDiffusion):
        return reuse_context_kv(model.unet)

    def sampling(self, pipe, width, height, shift=None, steps=None) -> ModelSampling:
        cfg = pipe.config
        if cfg.edm is not None:  # CosXL: continuous sigmas in EDM's time, as ModelSamplingContinuousEDM
            return continuous_sampling("edm", cfg.prediction, cfg.edm.sigma_min, cfg.edm.sigma_max, cfg.edm.sigma_data)
        return ModelSampling(pipe.schedule, cfg.prediction, zsnr=cfg.zsnr)  # Pipeline rescaled a zsnr schedule

    def conditioner(self, pipe, clip_skip, **text):
        return PromptConditioner(pipe.model, pipe.tokenizer, pipe.device, pipe.embeddings, clip_skip, **text)

    def context_width(self, cfg) -> int:
        return cfg.unet.context_dim


@torch.no_grad()
def guess_sd2_prediction(model: StableDiffusion) -> str:
    """For SD2 files that do not say: a v-model given a flat grey input at the noisiest step
    predicts an output far below the input, an eps-model does not (the test A1111 uses)."""
    unet = model.unet
    dtype = next(unet.parameters()).dtype
    device = next(unet.parameters()).device
    x = torch.full((1, 4, 8, 8), 0.5, dtype=dtype, device=device)
    ctx = torch.full((1, 2, unet.config.context_dim), 0.5, dtype=dtype, device=device)
    out = unet(x, torch.tensor([999], device=device), ctx)
    return "v" if (out - x).float().mean().item() < -1 else "eps"


UNET = UNetFamily()
