"""diffusers FluxTransformer2DModel / ChromaTransformer2DModel keys <-> Black Forest Labs' original
Flux keys and Chroma's (our attribute names), as one table generated from the FluxConfig or
ChromaConfig (cfg.modulated False: no per-block modulation, the approximator instead)."""
from __future__ import annotations

from torch import Tensor

from ..models.config_dit import FluxConfig
from .keymap_dit import Row, from_diffusers, linear, to_diffusers


def _embedder(ours: str, theirs: str) -> list[Row]:
    return linear(f"{ours}.in_layer", f"{theirs}.linear_1") + linear(f"{ours}.out_layer", f"{theirs}.linear_2")


def _qk_norm(ours: str, theirs: str, added: bool = False) -> list[Row]:
    q, k = ("norm_added_q", "norm_added_k") if added else ("norm_q", "norm_k")
    return [Row(f"{ours}.query_norm.scale", (f"{theirs}.{q}.weight",)),
            Row(f"{ours}.key_norm.scale", (f"{theirs}.{k}.weight",))]


def _approximator(cfg) -> list[Row]:
    """Chroma's distilled_guidance_layer: the same names in both layouts but for its MLPs and norms."""
    p = "distilled_guidance_layer"
    rows = linear(f"{p}.in_proj", f"{p}.in_proj") + linear(f"{p}.out_proj", f"{p}.out_proj")
    for i in range(cfg.approximator_layers):
        rows += _embedder(f"{p}.layers.{i}", f"{p}.layers.{i}")
        rows.append(Row(f"{p}.norms.{i}.scale", (f"{p}.norms.{i}.weight",)))
    return rows


def flux_rows(cfg: FluxConfig) -> list[Row]:
    dim = cfg.hidden_size
    qkv = (dim, dim, dim)
    rows = [*linear("img_in", "x_embedder"), *linear("txt_in", "context_embedder"),
            *linear("final_layer.linear", "proj_out")]
    if cfg.modulated:
        rows += [
            *_embedder("time_in", "time_text_embed.timestep_embedder"),
            *_embedder("vector_in", "time_text_embed.text_embedder"),
            # diffusers' AdaLayerNormContinuous orders it (scale, shift)
            *linear("final_layer.adaLN_modulation.1", "norm_out.linear", swap_halves=True),
        ]
    else:
        rows += _approximator(cfg)
    if cfg.guidance_embed:
        rows += _embedder("guidance_in", "time_text_embed.guidance_embedder")
    for i in range(cfg.depth):
        ours, theirs = f"double_blocks.{i}", f"transformer_blocks.{i}"
        if cfg.modulated:
            rows += linear(f"{ours}.img_mod.lin", f"{theirs}.norm1.linear")
            rows += linear(f"{ours}.txt_mod.lin", f"{theirs}.norm1_context.linear")
        rows += linear(f"{ours}.img_attn.qkv", tuple(f"{theirs}.attn.{n}" for n in ("to_q", "to_k", "to_v")), qkv,
                       bias=cfg.qkv_bias)
        rows += linear(f"{ours}.txt_attn.qkv", tuple(f"{theirs}.attn.add_{n}_proj" for n in "qkv"), qkv,
                       bias=cfg.qkv_bias)
        rows += _qk_norm(f"{ours}.img_attn.norm", f"{theirs}.attn")
        rows += _qk_norm(f"{ours}.txt_attn.norm", f"{theirs}.attn", added=True)
        rows += linear(f"{ours}.img_attn.proj", f"{theirs}.attn.to_out.0")
        rows += linear(f"{ours}.txt_attn.proj", f"{theirs}.attn.to_add_out")
        for stream, ff in (("img", "ff"), ("txt", "ff_context")):
            rows += linear(f"{ours}.{stream}_mlp.0", f"{theirs}.{ff}.net.0.proj")
            rows += linear(f"{ours}.{stream}_mlp.2", f"{theirs}.{ff}.net.2")
    for i in range(cfg.depth_single_blocks):
        ours, theirs = f"single_blocks.{i}", f"single_transformer_blocks.{i}"
        if cfg.modulated:
            rows += linear(f"{ours}.modulation.lin", f"{theirs}.norm.linear")
        rows += linear(f"{ours}.linear1", tuple(f"{theirs}.{n}" for n in ("attn.to_q", "attn.to_k", "attn.to_v",
                                                                            "proj_mlp")), qkv + (cfg.mlp_hidden,))
        rows += _qk_norm(f"{ours}.norm", f"{theirs}.attn")
        rows += linear(f"{ours}.linear2", f"{theirs}.proj_out")
    return rows


def flux_from_diffusers(sd: dict[str, Tensor], cfg: FluxConfig, lazy: bool = False) -> dict[str, Tensor]:
    return from_diffusers(sd, flux_rows(cfg), "Flux", lazy)


def flux_to_diffusers(sd: dict[str, Tensor], cfg: FluxConfig) -> dict[str, Tensor]:
    return to_diffusers(sd, flux_rows(cfg), "Flux")
