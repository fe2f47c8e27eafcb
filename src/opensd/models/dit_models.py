"""The whole SD3, Flux, Chroma and Z-Image models as modules whose state-dict keys are the single files' keys.

SD3's files (and ComfyUI's whole-model files of both families) store the network under
`model.diffusion_model.`, the VAE under `first_stage_model.` and the text encoders under
`text_encoders.{clip_l,clip_g,t5xxl}.transformer.`, each encoder in transformers' naming. An
encoder the config leaves out is not built (each is optional).
"""
from __future__ import annotations

from torch import nn

from .clip import HFEmbedder
from .chroma import Chroma
from .config_dit import (ChromaModelConfig, Flux2ModelConfig, FluxModelConfig, QwenImageModelConfig, SD3ModelConfig,
                         T5Config, ZImageModelConfig)
from .flux import Flux
from .flux2 import Flux2
from .mmdit import MMDiT
from .qwen25vl_vision import QwenVisionTower
from .qwen3 import Qwen3Config, Qwen3TextEncoder
from .qwen_image import QwenImage
from .qwen_vae import QwenImageVAE
from .stable_diffusion import DiffusionWrapper
from .t5 import T5EncoderModel
from .config import VAEConfig
from .vae import AutoencoderKL
from .z_image import ZImage


class T5Embedder(nn.Module):
    """`text_encoders.t5xxl`: keys `transformer.shared.weight`, `transformer.encoder.…`."""

    def __init__(self, cfg: T5Config):
        super().__init__()
        self.cfg = cfg
        self.transformer = T5EncoderModel(cfg)

    def forward(self, input_ids, attention_mask=None):
        return self.transformer(input_ids, attention_mask)


class _DiTModel(nn.Module):
    def __init__(self, cfg, network: nn.Module, encoders: dict, vae: VAEConfig | None = None,
                 vae_module: nn.Module | None = None):
        super().__init__()
        self.config = cfg
        self.model = DiffusionWrapper(network)
        self.first_stage_model = vae_module if vae_module is not None else AutoencoderKL(vae or cfg.vae)
        self.text_encoders = nn.ModuleDict({k: v for k, v in encoders.items() if v is not None})

    @property
    def network(self) -> nn.Module:
        return self.model.diffusion_model

    @property
    def vae(self) -> AutoencoderKL:
        return self.first_stage_model

    def encoder(self, name: str) -> nn.Module | None:
        """The text encoder `name` ("clip_l", "clip_g", "t5xxl"), or None when the model has none."""
        return self.text_encoders[name] if name in self.text_encoders else None


class SD3Model(_DiTModel):
    def __init__(self, cfg: SD3ModelConfig):
        super().__init__(cfg, MMDiT(cfg.mmdit), {
            "clip_l": cfg.clip_l and HFEmbedder(cfg.clip_l), "clip_g": cfg.clip_g and HFEmbedder(cfg.clip_g),
            "t5xxl": cfg.t5 and T5Embedder(cfg.t5)})


class FluxModel(_DiTModel):
    def __init__(self, cfg: FluxModelConfig):
        super().__init__(cfg, Flux(cfg.flux), {
            "clip_l": cfg.clip_l and HFEmbedder(cfg.clip_l), "t5xxl": cfg.t5 and T5Embedder(cfg.t5)})


class ChromaModel(_DiTModel):
    def __init__(self, cfg: ChromaModelConfig):
        super().__init__(cfg, Chroma(cfg.chroma), {"t5xxl": cfg.t5 and T5Embedder(cfg.t5)})


class ZImageModel(_DiTModel):
    """Z-Image: the network, Flux's VAE and (`text_encoders.qwen3_4b`) the Qwen3 text encoder, whose
    keys under `transformer.` are its own file's (`model.layers.N...`)."""

    def __init__(self, cfg: ZImageModelConfig):
        super().__init__(cfg, ZImage(cfg.z_image), {"qwen3_4b": cfg.qwen3 and Qwen3Embedder(cfg.qwen3)})


class PatchedVAE(nn.Module):
    """FLUX.2's VAE as the pipeline uses it: encode gives, and decode takes, the patched and
    normalised 128-channel latent (config_dit.PatchedLatentConfig), by the statistics in the VAE's
    `bn` (models/flux2_latents.py)."""

    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.inner = vae

    def encode(self, x):
        mean, logvar = self.inner.encode(x)
        return self.inner.bn.normalize(mean), logvar

    def decode(self, z):
        return self.inner.decode(self.inner.bn.denormalize(z))


class Flux2Model(_DiTModel):
    """FLUX.2: the network, its 32-channel VAE and the text encoder: [klein]'s Qwen3 under
    `text_encoders.qwen3_4b` (our own prefix for Qwen3-4B and -8B alike), [dev]'s Mistral under
    `text_encoders.mistral3_24b` (ComfyUI's name); keys as the files'."""

    def __init__(self, cfg: Flux2ModelConfig):
        encoders = {"qwen3_4b": cfg.qwen3 and Qwen3Embedder(cfg.qwen3),
                    "mistral3_24b": cfg.mistral and Qwen3Embedder(cfg.mistral)}
        super().__init__(cfg, Flux2(cfg.flux2), encoders, cfg.vae.file)

    @property
    def vae(self) -> PatchedVAE:
        return PatchedVAE(self.first_stage_model)


class QwenImageModel(_DiTModel):
    """Qwen-Image: the network, its VAE (the Wan 2.1 VAE for single frames, Wan's key names) and
    the Qwen2.5-VL-7B text encoder (its config `qwen25vl`, None when the model comes without one)."""

    def __init__(self, cfg: QwenImageModelConfig):
        super().__init__(cfg, QwenImage(cfg.qwen_image), qwen25vl_encoders(cfg), vae_module=QwenImageVAE(cfg.vae))


class Qwen3Embedder(nn.Module):
    """`text_encoders.qwen3_4b`: keys `transformer.model.…` (the file's `model.…`)."""

    def __init__(self, cfg: Qwen3Config):
        super().__init__()
        self.cfg = cfg
        self.transformer = Qwen3TextEncoder(cfg)

    def forward(self, input_ids, attention_mask=None, layer: int = -2):
        return self.transformer(input_ids, attention_mask, layer)


def qwen25vl_encoders(cfg: QwenImageModelConfig) -> dict:
    """Qwen-Image's text encoder by name: `text_encoders.qwen25_7b` (ComfyUI's name), Qwen2.5-VL-7B's
    language model as a Qwen3TextEncoder with Qwen2's switches, keys under `transformer.model.`."""
    embedder = cfg.qwen25vl and Qwen3Embedder(cfg.qwen25vl)
    if embedder is not None and cfg.qwen25vl_vision is not None:  # keys `text_encoders.qwen25_7b.visual.`
        embedder.visual = QwenVisionTower(cfg.qwen25vl_vision)
    return {"qwen25_7b": embedder}
