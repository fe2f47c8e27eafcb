"""FLUX.2's keys: BFL's single file (ComfyUI's diffusion_models/, our module's) against diffusers'
Flux2Transformer2DModel (separate q, k, v in the double blocks; the single blocks' fused
`attn.to_qkv_mlp_proj`; shared `*_modulation.linear`; the final adaLN as (scale, shift)). No
Linear of either layout has a bias."""
from __future__ import annotations

from torch import Tensor

from ..models.config_dit import Flux2Config
from .keymap_dit import Row, from_diffusers, linear, to_diffusers


def _lin(ours: str, theirs: str | tuple[str, ...], sizes: tuple[int, ...] = (), swap: bool = False) -> list[Row]:
    return linear(ours, theirs, sizes, swap, bias=False)


def _qk(ours: str, theirs: str, q: str, k: str) -> list[Row]:
    return [Row(f"{ours}.query_norm.scale", (f"{theirs}.{q}.weight",)),
            Row(f"{ours}.key_norm.scale", (f"{theirs}.{k}.weight",))]


def flux2_rows(cfg: Flux2Config) -> list[Row]:
    dim = cfg.hidden_size
    qkv = (dim, dim, dim)
    rows = _lin("img_in", "x_embedder") + _lin("txt_in", "context_embedder")
    embedders = [("time_in", "timestep_embedder")] + ([("guidance_in", "guidance_embedder")] if cfg.guidance_embed else [])
    for ours, theirs in embedders:
        rows += _lin(f"{ours}.in_layer", f"time_guidance_embed.{theirs}.linear_1")
        rows += _lin(f"{ours}.out_layer", f"time_guidance_embed.{theirs}.linear_2")
    for name in ("double_stream_modulation_img", "double_stream_modulation_txt", "single_stream_modulation"):
        rows += _lin(f"{name}.lin", f"{name}.linear")
    for i in range(cfg.depth):
        o, d = f"double_blocks.{i}", f"transformer_blocks.{i}"
        rows += _lin(f"{o}.img_attn.qkv", tuple(f"{d}.attn.to_{n}" for n in "qkv"), qkv)
        rows += _lin(f"{o}.txt_attn.qkv", tuple(f"{d}.attn.add_{n}_proj" for n in "qkv"), qkv)
        rows += _lin(f"{o}.img_attn.proj", f"{d}.attn.to_out.0") + _lin(f"{o}.txt_attn.proj", f"{d}.attn.to_add_out")
        rows += _qk(f"{o}.img_attn.norm", f"{d}.attn", "norm_q", "norm_k")
        rows += _qk(f"{o}.txt_attn.norm", f"{d}.attn", "norm_added_q", "norm_added_k")
        for stream, ff in (("img", "ff"), ("txt", "ff_context")):
            rows += _lin(f"{o}.{stream}_mlp.0", f"{d}.{ff}.linear_in") + _lin(f"{o}.{stream}_mlp.2", f"{d}.{ff}.linear_out")
    for i in range(cfg.depth_single_blocks):
        o, d = f"single_blocks.{i}", f"single_transformer_blocks.{i}.attn"
        rows += _lin(f"{o}.linear1", f"{d}.to_qkv_mlp_proj") + _lin(f"{o}.linear2", f"{d}.to_out")
        rows += _qk(f"{o}.norm", d, "norm_q", "norm_k")
    rows += _lin("final_layer.linear", "proj_out")
    return rows + _lin("final_layer.adaLN_modulation.1", "norm_out.linear", swap=True)


def flux2_from_diffusers(sd: dict[str, Tensor], cfg: Flux2Config, lazy: bool = False) -> dict[str, Tensor]:
    return from_diffusers(sd, flux2_rows(cfg), "FLUX.2", lazy)


def flux2_to_diffusers(sd: dict[str, Tensor], cfg: Flux2Config) -> dict[str, Tensor]:
    return to_diffusers(sd, flux2_rows(cfg), "FLUX.2")
