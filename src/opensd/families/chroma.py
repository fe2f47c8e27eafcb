"""Chroma (lodestones' chroma-unlocked-v*, Chroma1-HD): Flux.1-schnell's network with one
approximator for every block's modulation, on rectified flow shifted with the image size as Flux dev
(diffusers' ChromaPipeline; ComfyUI's 1.15 without a size), conditioned on T5-XXL alone. T5's
padding is masked, in T5 and in the network, but for the first padding token (as Chroma was
trained): the conditioner zeroes the context rows it masks and net_fn masks the all-zero rows, so a
conditioning carries its mask in itself. Real CFG against a negative prompt; no distilled guidance."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..checkpoints import detect_dit as DD
from ..checkpoints.diffusers_dit import CHROMA_PARTS, read_dit_folder
from ..checkpoints.families import unsupported_family
from ..checkpoints.keymap_flux import flux_from_diffusers, flux_rows
from ..models.config_dit import CHROMA, FLUX_VAE, ChromaModelConfig
from ..models.dit_models import ChromaModel
from ..sampling.flow import FlowSampling
from .dit import DiTFamily, compute_dtype
from .dit_prompts import DiTConditioner
from .flux import size_shifted

TRANSFORMER_CLASS = "ChromaTransformer2DModel"


def text_mask(context: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: the text tokens Chroma attends to, those the conditioner left non-zero."""
    return context.abs().amax(dim=-1) > 0


class ChromaFamily(DiTFamily):
    name = "chroma"
    label = "Chroma"
    members = ("chroma",)
    clip_names = ()
    clip_context = False
    required = ("vae", "t5xxl")
    telltale = "distilled_guidance_layer.norms.0.scale"
    diffusers_telltales = ("distilled_guidance_layer.norms.0.weight", "x_embedder.weight")
    folder_parts = CHROMA_PARTS
    pipeline_prefix = "Chroma"  # ChromaPipeline, ChromaImg2ImgPipeline, ChromaInpaintPipeline
    default_vae = FLUX_VAE
    released_network = CHROMA
    default_scheduler = "simple"  # diffusers' 1, 1 - 1/n, ... (shifted)
    default_cfg = 5.0  # ChromaPipeline's guidance_scale: real CFG
    adapters = frozenset({"lora"})

    network_config = staticmethod(DD.chroma_config)
    network_config_diffusers = staticmethod(DD.chroma_config_diffusers)

    def detect(self, shapes, metadata, path, prediction=None):
        if unsupported_family(shapes):  # Chroma Radiance: the same approximator, a pixel-space network
            return None
        return super().detect(shapes, metadata, path, prediction)

    def read_folder(self, path: Path, index: dict):
        """ChromaPipeline folders, and any pipeline folder whose transformer/ is a Chroma one."""
        found = super().read_folder(path, index)
        if found is None and _class_name(path / "transformer" / "config.json") == TRANSFORMER_CLASS:
            return read_dit_folder(path, self.folder_parts)
        return found

    def from_diffusers(self, net, cfg):
        return flux_from_diffusers(net, cfg.chroma, lazy=True)

    def key_rows(self, cfg):
        return flux_rows(cfg.chroma)

    def make_config(self, net, vae, encoders, resolution) -> ChromaModelConfig:
        return ChromaModelConfig(net, vae, encoders.get("t5xxl"), resolution=resolution)

    def build(self, cfg: ChromaModelConfig) -> ChromaModel:
        return ChromaModel(cfg)

    def net_fn(self, model: ChromaModel, guidance=None, references=None):
        chroma = model.network
        dtype = compute_dtype(chroma)

        def call(x, t, context, y, control=None):
            return chroma(x.to(dtype), t, context.to(dtype), None, mask=text_mask(context))

        return call

    def sampling(self, pipe, width, height, shift=None, steps=None) -> FlowSampling:
        return size_shifted(pipe, width, height, shift)

    def conditioner(self, pipe, clip_skip, **text):
        return DiTConditioner(pipe, (), False, clip_skip, t5_padding_kept=1, **text)

    def pooled_width(self, cfg: ChromaModelConfig) -> int:
        return 0

    def context_width(self, cfg: ChromaModelConfig) -> int:
        return cfg.chroma.context_in_dim


def _class_name(config: Path) -> str:
    try:
        return str(json.loads(config.read_text(encoding="utf-8")).get("_class_name", ""))
    except (OSError, ValueError, AttributeError):
        return ""


CHROMA_FAMILY = ChromaFamily()
