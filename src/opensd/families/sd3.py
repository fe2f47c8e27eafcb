"""Stable Diffusion 3 / 3.5 (Medium, Large, Large Turbo): an MMDiT on rectified flow with shift
(3.0 by default), conditioned on CLIP-L + CLIP-G + T5-XXL, each optional."""
from __future__ import annotations

from ..checkpoints import detect_dit as DD
from ..checkpoints.diffusers_dit import SD3_PARTS
from ..checkpoints.keymap_mmdit import mmdit_from_diffusers, mmdit_rows
from ..models.config_dit import SD3_MEDIUM, SD3_VAE, SD3ModelConfig
from ..models.dit_models import SD3Model
from ..sampling.flow import FlowSampling
from .dit import DiTFamily, compute_dtype


class SD3Family(DiTFamily):
    name = "sd3"
    label = "Stable Diffusion 3"
    members = ("sd3",)
    clip_names = ("clip_l", "clip_g")
    clip_context = True
    telltale = "joint_blocks.0.context_block.attn.qkv.weight"
    diffusers_telltales = ("transformer_blocks.0.attn.add_q_proj.weight", "pos_embed.proj.weight")
    folder_parts = SD3_PARTS
    pipeline_prefix = "StableDiffusion3"
    default_vae = SD3_VAE
    released_network = SD3_MEDIUM  # what text encoders alone are paired with (its widths: 2048 pooled, 4096)

    network_config = staticmethod(DD.mmdit_config)
    network_config_diffusers = staticmethod(DD.mmdit_config_diffusers)

    def from_diffusers(self, net, cfg):
        return mmdit_from_diffusers(net, cfg.mmdit, lazy=True)

    def key_rows(self, cfg):
        return mmdit_rows(cfg.mmdit)

    def make_config(self, net, vae, encoders, resolution) -> SD3ModelConfig:
        return SD3ModelConfig(net, vae, encoders.get("clip_l"), encoders.get("clip_g"), encoders.get("t5xxl"),
                              resolution=resolution)

    def build(self, cfg: SD3ModelConfig) -> SD3Model:
        return SD3Model(cfg)

    adapters = DiTFamily.adapters | {"controlnet"}  # SD3 ControlNets (adapters/sd3_controlnet.py)

    def net_fn(self, model: SD3Model, guidance=None, references=None):
        mmdit = model.network
        dtype = compute_dtype(mmdit)

        def call(x, t, context, y, control=None):
            """`control`: an SD3Control (models/sd3_controlnet.py)."""
            return mmdit(x.to(dtype), t, context.to(dtype), y.to(dtype), control and control.parts)

        return call

    def sampling(self, pipe, width, height, shift=None, steps=None) -> FlowSampling:
        return FlowSampling.sd3(pipe.config.shift if shift is None else shift)

    def pooled_width(self, cfg: SD3ModelConfig) -> int:
        return cfg.mmdit.adm_in_channels

    def context_width(self, cfg: SD3ModelConfig) -> int:
        return cfg.mmdit.context_dim


SD3 = SD3Family()
