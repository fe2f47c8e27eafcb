"""diffusers SD3Transformer2DModel keys <-> SD3's original MMDiT keys (our attribute names, without
`model.diffusion_model.`), as one table generated from the MMDiTConfig."""
from __future__ import annotations

from torch import Tensor

from ..models.config_dit import MMDiTConfig
from .keymap_dit import Row, from_diffusers, linear, to_diffusers


def mmdit_rows(cfg: MMDiTConfig) -> list[Row]:
    dim = cfg.hidden_size
    qkv = (dim, dim, dim)
    rows = [
        *linear("x_embedder.proj", "pos_embed.proj"),
        Row("pos_embed", ("pos_embed.pos_embed",)),
        *linear("t_embedder.mlp.0", "time_text_embed.timestep_embedder.linear_1"),
        *linear("t_embedder.mlp.2", "time_text_embed.timestep_embedder.linear_2"),
        *linear("y_embedder.mlp.0", "time_text_embed.text_embedder.linear_1"),
        *linear("y_embedder.mlp.2", "time_text_embed.text_embedder.linear_2"),
        *linear("context_embedder", "context_embedder"),
        *linear("final_layer.linear", "proj_out"),
        *linear("final_layer.adaLN_modulation.1", "norm_out.linear", swap_halves=True),
    ]
    for i in range(cfg.depth):
        ours, theirs = f"joint_blocks.{i}", f"transformer_blocks.{i}"
        x, ctx = f"{ours}.x_block", f"{ours}.context_block"
        last = i == cfg.depth - 1
        rows += linear(f"{x}.attn.qkv", tuple(f"{theirs}.attn.{n}" for n in ("to_q", "to_k", "to_v")), qkv)
        rows += linear(f"{ctx}.attn.qkv", tuple(f"{theirs}.attn.add_{n}_proj" for n in "qkv"), qkv)
        rows += linear(f"{x}.attn.proj", f"{theirs}.attn.to_out.0")
        rows += linear(f"{x}.adaLN_modulation.1", f"{theirs}.norm1.linear")
        # The last text stream's adaLN is diffusers' AdaLayerNormContinuous: (scale, shift).
        rows += linear(f"{ctx}.adaLN_modulation.1", f"{theirs}.norm1_context.linear", swap_halves=last)
        rows += linear(f"{x}.mlp.fc1", f"{theirs}.ff.net.0.proj") + linear(f"{x}.mlp.fc2", f"{theirs}.ff.net.2")
        if not last:
            rows += linear(f"{ctx}.attn.proj", f"{theirs}.attn.to_add_out")
            rows += linear(f"{ctx}.mlp.fc1", f"{theirs}.ff_context.net.0.proj")
            rows += linear(f"{ctx}.mlp.fc2", f"{theirs}.ff_context.net.2")
        if cfg.qk_norm:
            for ln, name in (("ln_q", "norm_q"), ("ln_k", "norm_k")):
                rows += linear(f"{x}.attn.{ln}", f"{theirs}.attn.{name}", bias=False)
                rows += linear(f"{ctx}.attn.{ln}", f"{theirs}.attn.{name.replace('norm_', 'norm_added_')}",
                               bias=False)
        if i in cfg.x_block_self_attn_layers:
            rows += linear(f"{x}.attn2.qkv", tuple(f"{theirs}.attn2.{n}" for n in ("to_q", "to_k", "to_v")), qkv)
            rows += linear(f"{x}.attn2.proj", f"{theirs}.attn2.to_out.0")
            if cfg.qk_norm:
                rows += linear(f"{x}.attn2.ln_q", f"{theirs}.attn2.norm_q", bias=False)
                rows += linear(f"{x}.attn2.ln_k", f"{theirs}.attn2.norm_k", bias=False)
    return rows


def mmdit_from_diffusers(sd: dict[str, Tensor], cfg: MMDiTConfig, lazy: bool = False) -> dict[str, Tensor]:
    return from_diffusers(sd, mmdit_rows(cfg), "MMDiT", lazy)


def mmdit_to_diffusers(sd: dict[str, Tensor], cfg: MMDiTConfig) -> dict[str, Tensor]:
    return to_diffusers(sd, mmdit_rows(cfg), "MMDiT")
