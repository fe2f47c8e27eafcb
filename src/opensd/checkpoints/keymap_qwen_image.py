"""Qwen-Image's keys: the released single file (ComfyUI's diffusion_models/qwen_image_*.safetensors),
our module and diffusers' QwenImageTransformer2DModel all use the same names, so each row maps a key
to itself (the table serves the LoRA names: kohya's, PEFT's and ComfyUI's)."""
from __future__ import annotations

from ..models.config_dit import QwenImageConfig
from .keymap_dit import Row, linear

_ATTN_LINEARS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
_ATTN_NORMS = ("norm_q", "norm_k", "norm_added_q", "norm_added_k")


def _same(path: str) -> list[Row]:
    return linear(path, path)


def qwen_image_rows(cfg: QwenImageConfig) -> list[Row]:
    rows = []
    for path in ("img_in", "txt_in", "time_text_embed.timestep_embedder.linear_1",
                 "time_text_embed.timestep_embedder.linear_2", "norm_out.linear", "proj_out"):
        rows += _same(path)
    rows.append(Row("txt_norm.weight", ("txt_norm.weight",)))
    for i in range(cfg.num_layers):
        b = f"transformer_blocks.{i}."
        rows += _same(b + "img_mod.1") + _same(b + "txt_mod.1")
        for name in _ATTN_LINEARS:
            rows += _same(b + "attn." + name)
        rows += [Row(f"{b}attn.{n}.weight", (f"{b}attn.{n}.weight",)) for n in _ATTN_NORMS]
        for stream in ("img_mlp", "txt_mlp"):
            rows += _same(f"{b}{stream}.net.0.proj") + _same(f"{b}{stream}.net.2")
    return rows
