"""Flux.1 (dev, schnell, Fill): double- then single-stream DiT on rectified flow, conditioned on T5-XXL
(context) and CLIP-L's pooled output; dev takes a distilled guidance scale (3.5 by default,
distinct from CFG, which stays at 1) and shifts its schedule with the image size; schnell takes
neither. Fill is dev with 320 more input features (384 = 64 + 320: the masked image's latent and
the pixel mask, packed), an inpainting model. Black Forest Labs' key layout and diffusers'."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image

from ..checkpoints import detect_dit as DD
from ..checkpoints.diffusers_dit import FLUX_PARTS
from ..checkpoints.families import known_family, unsupported_family
from ..checkpoints.keymap_flux import flux_from_diffusers, flux_rows
from ..errors import CheckpointError
from ..models.config_dit import FLUX_DEV, FLUX_VAE, FluxModelConfig
from ..models.dit_models import FluxModel
from ..sampling.flow import FlowSampling, flux_mu
from .dit import DiTFamily, compute_dtype

KONTEXT_SIDE = 16  # a Kontext reference's sides are first cut down to multiples of this (pixels per token)
# the sizes Kontext was trained at (width, height); BFL, diffusers and ComfyUI resize the reference
# image to the one nearest its aspect ratio
KONTEXT_SIZES = ((672, 1568), (688, 1504), (720, 1456), (752, 1392), (800, 1328), (832, 1248), (880, 1184),
                 (944, 1104), (1024, 1024), (1104, 944), (1184, 880), (1248, 832), (1328, 800), (1392, 752),
                 (1456, 720), (1504, 688), (1568, 672))
COMFY_SHIFT = 1.15  # ComfyUI's Flux dev default: the largest shift, whatever the size
# A conditioning's guidance that leaves the guidance embedding out (ComfyUI's FluxDisableGuidance; for
# Flux-like models trained without it); None stays "the family's default".
GUIDANCE_OFF = float("-inf")
FILL_INPUTS = 6  # Fill's input features per output feature: the latent, the masked image's, 4 for the mask


def size_shifted(pipe, width, height, shift=None) -> FlowSampling:
    """Flux dev's (and Chroma's) schedule: mu from the image size (BFL, diffusers), ComfyUI's 1.15
    without one; `shift`: mu itself."""
    if shift is None:
        side = pipe.config.size_multiple  # pixels per token
        shift = COMFY_SHIFT if width is None or height is None else flux_mu((width // side) * (height // side))
    return FlowSampling.flux(shift)


def kontext_size(width: int, height: int) -> tuple[int, int]:
    """The Kontext training size (width, height) whose aspect ratio is nearest width / height (the
    first of equals, as min over the list in diffusers and ComfyUI)."""
    _, w, h = min((abs(width / height - w / h), w, h) for w, h in KONTEXT_SIZES)
    return w, h


SCHNELL_STEPS = 4  # timestep-distilled: BFL's and diffusers' schnell examples


class FluxFamily(DiTFamily):
    name = "flux"
    label = "Flux.1"
    members = ("flux",)
    clip_names = ("clip_l",)
    clip_context = False
    required = ("vae", "clip_l", "t5xxl")
    telltale = "double_blocks.0.img_attn.norm.key_norm.scale"
    diffusers_telltales = ("single_transformer_blocks.0.attn.to_q.weight", "x_embedder.weight")
    folder_parts = FLUX_PARTS
    pipeline_prefix = ("FluxPipeline", "FluxFillPipeline", "FluxKontextPipeline")  # Kontext: dev's network
    default_vae = FLUX_VAE
    released_network = FLUX_DEV
    default_scheduler = "simple"  # BFL's and diffusers' 1, 1 - 1/n, ... (shifted)
    default_cfg = 1.0
    default_guidance = 3.5

    network_config = staticmethod(DD.flux_config)
    network_config_diffusers = staticmethod(DD.flux_config_diffusers)

    def detect(self, shapes, metadata, path, prediction=None):
        if unsupported_family(shapes) or known_family(shapes) in ("Chroma", "Flux.2"):  # Flux-like keys, other models
            return None
        cfg = super().detect(shapes, metadata, path, prediction)
        if cfg is not None and cfg.flux.in_channels not in (cfg.flux.out_channels, FILL_INPUTS * cfg.flux.out_channels):
            # Canny/Depth take a control image's latent in the extra features, which nothing here makes
            what = "Flux.1 Canny/Depth" if cfg.flux.in_channels == 2 * cfg.flux.out_channels else "an unknown Flux.1"
            raise CheckpointError(path, f"{what} network ({cfg.flux.in_channels} input features): not supported; "
                                        "Flux.1 dev, schnell and Fill are")
        return cfg

    def from_diffusers(self, net, cfg):
        return flux_from_diffusers(net, cfg.flux, lazy=True)

    def key_rows(self, cfg):
        return flux_rows(cfg.flux)

    def make_config(self, net, vae, encoders, resolution) -> FluxModelConfig:
        return FluxModelConfig(net, vae, encoders.get("clip_l"), encoders.get("t5xxl"), resolution=resolution)

    def build(self, cfg: FluxModelConfig) -> FluxModel:
        return FluxModel(cfg)

    adapters = DiTFamily.adapters | {"controlnet"}  # Flux ControlNets (adapters/flux_controlnet.py)
    reference_latents = True  # Kontext's: the network appends them to its image tokens
    reference_method = "offset"  # ComfyUI's placement without FluxKontextMultiReferenceLatentMethod

    def fit_reference(self, pipe, image):
        """A reference image as FluxKontextPipeline fits it: sides cut down to multiples of 16, then
        resized (Lanczos) to the Kontext training size nearest that aspect ratio."""
        w, h = image.width - image.width % KONTEXT_SIDE, image.height - image.height % KONTEXT_SIDE
        return image.resize(kontext_size(w, h), Image.LANCZOS)

    def defaults(self, cfg: FluxModelConfig) -> dict[str, float | int]:
        """schnell (no guidance input): 4 steps, as BFL and diffusers run it; dev: CFG 1 and guidance 3.5."""
        if cfg.flux.guidance_embed:
            return super().defaults(cfg)
        return {"cfg": self.default_cfg, "steps": SCHNELL_STEPS}

    def net_fn(self, model: FluxModel, guidance=None, references=None, reference_method: str | None = None):
        """`references`: Kontext's reference latents, model-scaled, each (1 or B, C, H, W), placed by
        `reference_method` (models.flux.REFERENCE_METHODS)."""
        flux = model.network
        scale = self.default_guidance if guidance is None else guidance
        dtype = compute_dtype(flux)
        embed = flux.cfg.guidance_embed and scale != GUIDANCE_OFF

        def call(x, t, context, y, control=None):
            """`control`: a FluxControl (models/flux_controlnet.py)."""
            g = torch.full((len(x),), float(scale), device=x.device) if embed else None
            refs = [r.to(x.device, dtype).expand(len(x), -1, -1, -1) for r in references or ()]
            return flux(x.to(dtype), t, context.to(dtype), y.to(dtype), g, refs, control and control.parts,
                        ref_method=reference_method or self.reference_method)

        return call

    def inpaint_mask_scale(self, cfg: FluxModelConfig) -> int:
        return cfg.vae.downscale  # Fill sees the mask in pixels

    def inpainting_channels(self, mask, latent):
        """Flux.1 Fill: the masked image's latent, then each latent cell's 8x8 pixel mask as 64
        channels (row by row), which the 2x2 packing turns into img_in's 64 + 256 extra features."""
        return torch.cat([latent, F.pixel_unshuffle(mask, mask.shape[-1] // latent.shape[-1]).to(latent)], dim=1)

    def sampling(self, pipe, width, height, shift=None, steps=None) -> FlowSampling:
        """dev: mu from the image size (BFL, diffusers), ComfyUI's 1.15 without one; schnell: no
        shift. `shift` gives mu itself (ModelSamplingFlux's shift, Forge's Flux shift)."""
        if shift is None and not pipe.config.flux.guidance_embed:
            shift = 0.0
        return size_shifted(pipe, width, height, shift)

    def pooled_width(self, cfg: FluxModelConfig) -> int:
        return cfg.flux.vec_in_dim

    def context_width(self, cfg: FluxModelConfig) -> int:
        return cfg.flux.context_in_dim


FLUX = FluxFamily()
