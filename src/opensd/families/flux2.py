"""FLUX.2 [klein] (4B and 9B, distilled and base) and [dev] (32B): a double- then single-stream DiT on
rectified flow, conditioned on three hidden states of its text encoder side by side (klein: Qwen3,
4B for klein 4B, 8B for klein 9B; dev: Mistral Small 3.1's language model), with FLUX.2's
32-channel VAE whose latent the model sees patched 2x2 and normalised (128 channels).

Files: the network alone as ComfyUI keeps it (diffusion_models/flux-2-klein-4b.safetensors, BFL's
naming, with or without `model.diffusion_model.`), diffusers' transformer file, or a
Flux2KleinPipeline folder; the text encoder from text_encoders/ (qwen_3_4b / qwen_3_8b, told apart
by width) and the VAE from vae/ (flux2-vae.safetensors). [dev]: ComfyUI's
diffusion_models/flux2_dev_fp8mixed.safetensors (or BFL's flux2-dev.safetensors, a GGUF), the text
encoder text_encoders/mistral_3_small_flux2_{fp8,bf16}.safetensors with its tokenizer beside it
(mistral_tokenizer/), or a Flux2Pipeline folder.

Sampling is diffusers' Flux2KleinPipeline's and ComfyUI's Flux2Scheduler's: times 1, 1 - 1/n, ...
shifted exponentially by mu from the image's token count and the step count (flow.flux2_mu); the
network takes sigma itself. The distilled models run without CFG (CFG 1), the base models with
CFG 4 against an empty negative prompt (the pipeline's guidance_scale, the same number here).

FLUX.2 [dev] is guidance-distilled: its network takes the guidance scale (Flux2Pipeline's
guidance_scale, 4 by default; ComfyUI's FluxGuidance) as an input and runs without CFG (CFG 1), 50
steps by default, on the same schedule.
"""
from __future__ import annotations

import math
from dataclasses import replace

import torch

from PIL import Image

from ..checkpoints import detect as D
from ..checkpoints import detect_dit as DD
from ..checkpoints.diffusers_dit import FLUX2_DEV_PARTS, FLUX2_PARTS
from ..checkpoints.diffusers_dit import read_dit_folder
from ..checkpoints.keymap_flux2 import flux2_from_diffusers, flux2_rows
from ..errors import CheckpointError
from ..models.config_dit import (FLUX2_DEV, FLUX2_KLEIN_4B, FLUX2_KLEIN_9B, FLUX2_VAE, Flux2ModelConfig,
                                 PatchedLatentConfig)
from ..models.dit_models import Flux2Model
from ..sampling.flow import FlowSampling, flux2_mu
from .dit import compute_dtype, resolution_of
from .flux2_dev import DEV_GUIDANCE, MistralEncoder, has_mistral
from .flux2_prompts import Flux2Conditioner
from .qwen_dit import QwenDiTFamily, has_qwen3, has_vae, require_parts

COMFY_SHIFT = 2.02  # ComfyUI's FLUX.2 mu when no size and step count are known (its sampling settings)
BASE_CFG = 4.0  # Flux2KleinPipeline's guidance_scale default, used by the base (undistilled) models
REFERENCE_AREA = 1024 * 1024  # Flux2KleinPipeline's largest reference image, in pixels
BASE_STEPS = 50  # Flux2KleinPipeline's num_inference_steps default
META_DISTILLED = "opensd.flux2_distilled"  # "1"/"0": a Flux2KleinPipeline folder's is_distilled
QWEN_NAMES = {2560: "Qwen3-4B text encoder (text_encoders/qwen_3_4b.safetensors)",
              4096: "Qwen3-8B text encoder (text_encoders/qwen_3_8b.safetensors)"}


def encoder_name(width: int) -> str:
    return QWEN_NAMES.get(width, f"Qwen3 text encoder {width} wide")


class Flux2Family(MistralEncoder, QwenDiTFamily):
    name = "flux2"
    label = "FLUX.2"
    members = ("flux2",)
    encoder_label = "Qwen3-4B (klein 4B), Qwen3-8B (klein 9B) or Mistral Small 3.1 ([dev])"
    folder_parts = FLUX2_PARTS
    pipeline_prefix = ("Flux2KleinPipeline", "Flux2Pipeline")
    smaller_files = ("for FLUX.2 [dev] (32B: 64 GB in bf16) ComfyUI's diffusion_models/flux2_dev_fp8mixed.safetensors "
                     "(about 35 GB) or a GGUF of it (Q4_K: about 19 GB), and text_encoders/"
                     "mistral_3_small_flux2_fp8.safetensors (about 18 GB)")
    released_network = FLUX2_KLEIN_4B
    default_vae = FLUX2_VAE
    default_scheduler = "simple"  # 1, 1 - 1/n, ... (shifted), as the pipeline's sigmas
    default_cfg = 1.0  # the distilled models (defaults gives the base models theirs)
    default_steps = 4  # the distilled models: klein is distilled to 4 steps
    default_guidance = DEV_GUIDANCE  # [dev]'s (klein has no guidance input)
    adapters = frozenset({"lora"})

    network_config = staticmethod(DD.flux2_config)
    network_config_diffusers = staticmethod(DD.flux2_config_diffusers)

    # --- files --------------------------------------------------------------------------------

    def layout(self, shapes):
        for kind, mark in zip(("original", "diffusers"), DD.FLUX2_MARK):
            p = DD.prefix_of(shapes, mark)
            if p is not None:
                return kind, p
        return None

    def detect(self, shapes, metadata, path, prediction=None):
        net = self.network_of(shapes, metadata, path)
        if net is None:
            return None
        vae = D.infer_vae(shapes, D.VAE, path) if has_vae(shapes) else FLUX2_VAE
        if net.guidance_embed:  # [dev]: guidance-distilled, Mistral's features
            mistral = self.encoder_config("mistral", shapes, path) if has_mistral(shapes) else None
            return Flux2ModelConfig(net, PatchedLatentConfig(vae), resolution=resolution_of(metadata), mistral=mistral)
        qwen3 = self.encoder_config("qwen3", shapes, path) if has_qwen3(shapes) else None
        distilled = metadata.get(META_DISTILLED, "0" if "base" in str(path).lower() else "1") == "1"
        return Flux2ModelConfig(net, PatchedLatentConfig(vae), qwen3, resolution=resolution_of(metadata),
                                distilled=distilled)

    def read_folder(self, path, index):
        """A Flux2KleinPipeline folder (its model_index.json's is_distilled kept), or FLUX.2 [dev]'s
        Flux2Pipeline folder (its text_encoder/ a Mistral3ForConditionalGeneration)."""
        if str(index.get("_class_name", "")) == "Flux2Pipeline":
            return read_dit_folder(path, FLUX2_DEV_PARTS)
        found = super().read_folder(path, index)
        if found is None:
            return None
        sd, metadata = found
        metadata[META_DISTILLED] = "1" if index.get("is_distilled", False) else "0"
        return sd, metadata

    def make_config(self, net, vae, encoders, resolution) -> Flux2ModelConfig:
        """A text encoder alone (ComfyUI's CLIPLoader): the klein network its width takes (9B for
        Qwen3-8B, else 4B's blocks), its context as wide as the encoder's three states."""
        qwen3, mistral = encoders.get("qwen3"), encoders.get("mistral")
        if mistral is not None:
            return Flux2ModelConfig(FLUX2_DEV, PatchedLatentConfig(vae), resolution=resolution, mistral=mistral)
        if qwen3 is not None:
            net = FLUX2_KLEIN_9B if qwen3.hidden_size == FLUX2_KLEIN_9B.context_in_dim // 3 else net
            net = replace(net, context_in_dim=3 * qwen3.hidden_size)
        return Flux2ModelConfig(net, PatchedLatentConfig(vae), qwen3, resolution=resolution)

    def from_diffusers(self, net, cfg):
        return flux2_from_diffusers(net, cfg.flux2, lazy=True)

    def missing_parts(self, shapes):
        vae = [] if has_vae(shapes) else ["flux2_vae"]  # part_files' kind: 32 channels with statistics
        net = self.network_of(shapes, {})
        if net is not None and net.guidance_embed:
            return vae + ([] if has_mistral(shapes) else ["mistral"])
        net = None if has_qwen3(shapes) else net
        return vae + ([] if net is None else [f"qwen3:{net.context_in_dim // 3}"])

    def needed_parts(self, shapes):
        """Every missing part: the VAE and the Qwen3 of the network's width are both required."""
        return self.missing_parts(shapes)

    def check_complete(self, cfg, shapes, path):
        if cfg.flux2.guidance_embed:
            self.check_dev(cfg, shapes, path)
            return self._check_vae(cfg, path)
        if has_mistral(shapes):
            raise CheckpointError(path, f"the text encoder is Mistral Small 3.1 (FLUX.2 [dev]'s); this FLUX.2 [klein] "
                                        f"network takes the {encoder_name(cfg.flux2.context_in_dim // 3)}")
        width = cfg.flux2.context_in_dim // 3
        require_parts(path, "FLUX.2", (("VAE (--vae; flux2-vae.safetensors in vae/)", has_vae(shapes)),
                                       (f"{encoder_name(width)} (--text-encoder)", has_qwen3(shapes))))
        have = shapes[DD.QWEN3 + "model.embed_tokens.weight"][1]
        if have != width:
            raise CheckpointError(path, f"the text encoder is a {encoder_name(have)}; this FLUX.2 [klein] "
                                        f"network takes the {encoder_name(width)}")
        self._check_vae(cfg, path)

    def _check_vae(self, cfg, path):
        if not cfg.vae.file.latent_batch_norm:
            raise CheckpointError(path, f"the VAE is not FLUX.2's ({cfg.vae.file.embed_dim} latent channels, no latent "
                                        "statistics); FLUX.2 takes its own (flux2-vae.safetensors)")

    def build(self, cfg: Flux2ModelConfig) -> Flux2Model:
        return Flux2Model(cfg)

    # --- the network and prompts --------------------------------------------------------------

    def defaults(self, cfg: Flux2ModelConfig) -> dict[str, float | int]:
        """Distilled klein: CFG 1, 4 steps (BFL's); base klein: CFG 4 and 50 steps (Flux2KleinPipeline's
        defaults); dev: CFG 1 (no CFG: guidance-distilled), guidance 4 and 50 steps (Flux2Pipeline's)."""
        if cfg.flux2.guidance_embed:
            return {"cfg": 1.0, "steps": BASE_STEPS, "distilled_guidance": self.default_guidance}
        return {"cfg": self.default_cfg, "steps": self.default_steps} if cfg.distilled else \
            {"cfg": BASE_CFG, "steps": BASE_STEPS}

    reference_latents = True  # klein edits: reference images' latents appended to the image tokens
    reference_method = "index"  # each reference at its own time id (ComfyUI's default_ref_method)

    def fit_reference(self, pipe, image):
        """A reference image as Flux2KleinPipeline fits it: above 1 MP scaled to 1 MP (Lanczos), then
        centre-cropped to multiples of the model's size step."""
        w, h = image.size
        if w * h > REFERENCE_AREA:
            scale = math.sqrt(REFERENCE_AREA / (w * h))
            image = image.resize((int(w * scale), int(h * scale)), Image.LANCZOS)
        step = pipe.config.size_multiple
        w, h = image.width - image.width % step, image.height - image.height % step
        left, top = (image.width - w) // 2, (image.height - h) // 2
        return image.crop((left, top, left + w, top + h))

    def net_fn(self, model: Flux2Model, guidance=None, references=None, reference_method: str | None = None):
        """`references`: reference images' latents (model latents, each (1 or B, 128, h, w)), placed by
        `reference_method` (models.flux2.reference_tokens; klein's "index" without one); `guidance`:
        [dev]'s distilled guidance (4 without one; ignored by klein, which has no guidance input)."""
        net = model.network
        dtype = compute_dtype(net)
        method = reference_method or self.reference_method
        scale = self.default_guidance if guidance is None else guidance

        def call(x, t, context, y, control=None):
            """t: sigma (multiplier 1), the network's own time; every context row is a token (the
            pipeline's padded 512, unmasked)."""
            refs = [r.to(x.device, dtype).expand(len(x), -1, -1, -1) for r in references or ()]
            g = torch.full((len(x),), float(scale), device=x.device) if net.cfg.guidance_embed else None
            return net(x.to(dtype), t, context.to(dtype), g, ref_latents=refs, ref_method=method)

        return call

    def sampling(self, pipe, width, height, shift=None, steps=None) -> FlowSampling:
        """mu from the image's tokens and the step count (the pipeline's, Flux2Scheduler's); ComfyUI's
        2.02 when either is unknown; `shift`: mu itself."""
        if shift is None:
            side = pipe.config.size_multiple
            known = width is not None and height is not None and steps
            shift = flux2_mu(round(width * height / side ** 2), steps) if known else COMFY_SHIFT
        return FlowSampling.flux(shift, steps)

    def conditioner(self, pipe, clip_skip, **text):
        return Flux2Conditioner(pipe, clip_skip, **text)

    def key_rows(self, cfg: Flux2ModelConfig):
        return flux2_rows(cfg.flux2)

    def context_width(self, cfg: Flux2ModelConfig) -> int:
        return cfg.flux2.context_in_dim


FLUX2_FAMILY = Flux2Family()
