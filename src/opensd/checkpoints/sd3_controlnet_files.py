"""SD3 ControlNet files in diffusers' SD3ControlNetModel layout: the MMDiT parts renamed by the
MMDiT key table, the ControlNet's own parts (`pos_embed_input.proj`, `controlnet_blocks.N`) kept.
SD3.5's ControlNets (Stability's sd3.5_large_controlnet_*: no text stream) are not read yet."""
from __future__ import annotations

from dataclasses import replace
from typing import Mapping

import torch

from ..errors import CheckpointError
from ..models.config_dit import MMDiTConfig
from .detect_dit import count
from .keymap_dit import from_diffusers, linear
from .keymap_mmdit import mmdit_rows


def sd3_controlnet_config(shapes: Mapping[str, tuple[int, ...]], head_dim: int = 64, path="<controlnet>") -> MMDiTConfig:
    """The config from diffusers-layout shapes; the head width comes from config.json (64 released)."""
    try:
        width, in_ch, p, _ = shapes["pos_embed.proj.weight"]
        return MMDiTConfig(depth=count(shapes, "transformer_blocks."), num_heads=width // head_dim, head_dim=head_dim,
                           patch_size=p, in_channels=in_ch, out_channels=in_ch,
                           mlp_ratio=shapes["transformer_blocks.0.ff.net.0.proj.weight"][0] / width,
                           adm_in_channels=shapes["time_text_embed.text_embedder.linear_1.weight"][1],
                           context_dim=shapes["context_embedder.weight"][1],
                           pos_embed_max_size=round(shapes["pos_embed.pos_embed"][1] ** 0.5),
                           qk_norm="transformer_blocks.0.attn.norm_q.weight" in shapes)
    except KeyError as e:
        raise CheckpointError(path, f"an incomplete SD3 ControlNet: no {e.args[0]}") from None


def read_sd3_controlnet(sd: dict[str, torch.Tensor], head_dim: int = 64, path="<controlnet>"):
    """(our state dict, config) of a diffusers-layout SD3 ControlNet."""
    cfg = sd3_controlnet_config({k: tuple(v.shape) for k, v in sd.items()}, head_dim, path)
    whole = replace(cfg, depth=cfg.depth + 1)
    rows = [r for r in mmdit_rows(whole) if not r.original.startswith(("final_layer.", f"joint_blocks.{cfg.depth}."))]
    rows += linear("pos_embed_input.proj", "pos_embed_input.proj")
    for i in range(cfg.depth):
        rows += linear(f"controlnet_blocks.{i}", f"controlnet_blocks.{i}")
    try:
        return from_diffusers(sd, rows, "SD3 ControlNet"), cfg
    except KeyError as e:
        raise CheckpointError(path, f"unexpected SD3 ControlNet keys: {e.args[0]}") from None


def compatible_sd3_controlnet(cfg: MMDiTConfig, base: MMDiTConfig, path="<controlnet>") -> MMDiTConfig:
    """CheckpointError unless the ControlNet's residuals and inputs fit the base MMDiT."""
    fields = [("width", cfg.hidden_size, base.hidden_size), ("patch", cfg.patch_size, base.patch_size),
              ("latent channels", cfg.in_channels, base.in_channels),
              ("text width", cfg.context_dim, base.context_dim), ("pooled width", cfg.adm_in_channels, base.adm_in_channels)]
    bad = [f"{what} {a} (the model's: {b})" for what, a, b in fields if a != b]
    if bad:
        raise CheckpointError(path, f"this SD3 ControlNet does not fit the loaded model: its {'; its '.join(bad)}")
    return cfg
