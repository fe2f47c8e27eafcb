"""Flux.1 ControlNet files: diffusers' FluxControlNetModel layout (InstantX's Canny and Union,
Shakker-Labs' Union-Pro and Union-Pro-2.0; a single .safetensors as ComfyUI's controlnet/ folder
holds them, or a diffusers folder). The transformer parts are renamed to Black Forest Labs' names
with the Flux key table; the ControlNet's own parts keep diffusers' names. SD3's ControlNets are
told apart here (read by sd3_controlnet_files.py); XLabs' and MistoLine's pixel-hint ones are read by
xlabs_controlnet_files.py.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Mapping

import torch

from ..errors import CheckpointError
from ..models.config_dit import FluxConfig
from ..models.flux_controlnet import FluxControlNetConfig
from .detect_dit import count
from .keymap_dit import from_diffusers, linear
from .keymap_flux import flux_rows
from .sd3_controlnet_files import is_sd35_layout

Shapes = Mapping[str, tuple[int, ...]]
TELLTALE = "controlnet_x_embedder.weight"
SD3_TELLTALE = "pos_embed_input.proj.weight"
PIXEL_HINT_TELLTALES = ("input_hint_block.0.weight", "input_cond_block.encoder.0.weight")


def is_sd3_controlnet(keys) -> bool:
    """InstantX's SD3 ControlNets in diffusers' layout (joint blocks with a text stream) and Stability's
    SD3.5 ones (no text stream)."""
    instantx = "context_embedder.weight" in keys and "transformer_blocks.0.attn.add_q_proj.weight" in keys
    return SD3_TELLTALE in keys and (instantx or is_sd35_layout(keys))


def is_flux_controlnet(keys) -> bool:
    return TELLTALE in keys and ("x_embedder.weight" in keys or "transformer_blocks.0.attn.to_q.weight" in keys)


def other_dit_controlnet(keys) -> tuple[str, str] | None:
    """(family, what it is) of a DiT ControlNet layout not supported (SD3's unknown ones, a Flux one in
    Black Forest Labs' names without XLabs' or MistoLine's hint block), else None."""
    bfl = "double_blocks.0.img_attn.qkv.weight" in keys and "controlnet_x_embedder.weight" not in keys
    if bfl and ("pos_embed_input.weight" in keys) != any(k in keys for k in PIXEL_HINT_TELLTALES):
        return "flux", "a Flux ControlNet in XLabs' layout without its hint block or embedder"
    if (SD3_TELLTALE in keys and not is_sd3_controlnet(keys)) or (TELLTALE in keys and "pos_embed.proj.weight" in keys):
        return "sd3", "an SD3 ControlNet of an unknown layout"
    if TELLTALE in keys and "input_hint_block.0.conv_in.weight" in keys:
        return "flux", "a Flux ControlNet with a pixel hint block (XLabs-style)"
    return None


def refuse_other_dit_controlnets(keys, path) -> None:
    """CheckpointError for the DiT ControlNet layouts not supported yet."""
    other = other_dit_controlnet(keys)
    if other is not None:
        raise CheckpointError(path, f"{other[1]}: not supported; use a Flux.1 ControlNet as released (InstantX's, "
                                    "Shakker-Labs' Union-Pro, XLabs' v3, MistoLine) or an SD3 one in diffusers' layout")


def flux_controlnet_config(shapes: Shapes, path="<controlnet>", axes: tuple[int, ...] | None = None
                           ) -> FluxControlNetConfig:
    """The config from a diffusers-layout state dict's shapes (RoPE axes: from config.json when known,
    else Flux.1's; the base model's replace them when it is applied)."""
    try:
        width, in_ch = shapes["x_embedder.weight"]
        blocks = "transformer_blocks.0" if "transformer_blocks.0.attn.norm_q.weight" in shapes \
            else "single_transformer_blocks.0"
        head = shapes[f"{blocks}.attn.norm_q.weight"][0]
        mlp = shapes.get("transformer_blocks.0.ff.net.0.proj.weight") or \
            shapes["single_transformer_blocks.0.proj_mlp.weight"]
        guidance = "time_text_embed.guidance_embedder.linear_1.weight" in shapes
        flux = FluxConfig(
            in_channels=in_ch, out_channels=in_ch, vec_in_dim=shapes["time_text_embed.text_embedder.linear_1.weight"][1],
            context_in_dim=shapes["context_embedder.weight"][1], hidden_size=width, mlp_ratio=mlp[0] / width,
            num_heads=width // head, depth=count(shapes, "transformer_blocks."),
            depth_single_blocks=count(shapes, "single_transformer_blocks."),
            axes_dim=axes or default_axes(head),
            qkv_bias=f"{blocks}.attn.to_q.bias" in shapes, guidance_embed=guidance)
    except (KeyError, ZeroDivisionError) as e:
        raise CheckpointError(path, f"an incomplete Flux ControlNet: no {e.args[0] if e.args else e}") from None
    modes = shapes.get("controlnet_mode_embedder.weight", (0,))[0]
    return FluxControlNetConfig(flux, union_modes=modes)


def default_axes(head: int) -> tuple[int, ...]:
    """RoPE widths per id axis for a head width: Flux.1's for 128, else in the same proportions."""
    return (16, 56, 56) if head == 128 else (head // 4, 3 * head // 8, 3 * head // 8)


def _rows(cfg: FluxControlNetConfig):
    rows = [r for r in flux_rows(cfg.flux) if not r.original.startswith("final_layer.")]
    rows += linear("controlnet_x_embedder", "controlnet_x_embedder")
    for i in range(cfg.flux.depth):
        rows += linear(f"controlnet_blocks.{i}", f"controlnet_blocks.{i}")
    for i in range(cfg.flux.depth_single_blocks):
        rows += linear(f"controlnet_single_blocks.{i}", f"controlnet_single_blocks.{i}")
    if cfg.union_modes:
        rows += linear("controlnet_mode_embedder", "controlnet_mode_embedder", bias=False)
    return rows


def read_flux_controlnet(path: Path, sd: dict[str, torch.Tensor], config_json: dict | None = None
                         ) -> tuple[dict[str, torch.Tensor], FluxControlNetConfig]:
    """Our state dict and config from a diffusers-layout Flux ControlNet's tensors."""
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    refuse_other_dit_controlnets(shapes, path)
    axes = None
    if config_json and isinstance(config_json.get("axes_dims_rope"), list):
        axes = tuple(int(a) for a in config_json["axes_dims_rope"])
    cfg = flux_controlnet_config(shapes, path, axes)
    try:
        return from_diffusers(sd, _rows(cfg), "Flux ControlNet"), cfg
    except KeyError as e:
        raise CheckpointError(path, f"unexpected Flux ControlNet keys: {e.args[0]}") from None


def compatible_flux_controlnet(cfg: FluxControlNetConfig, base: FluxConfig, path="<controlnet>") -> FluxControlNetConfig:
    """The config with the base model's RoPE, or CheckpointError when it does not fit the base Flux."""
    mine = cfg.flux
    fields = [("width", mine.hidden_size, base.hidden_size), ("heads", mine.num_heads, base.num_heads),
              ("latent features", mine.in_channels, base.out_channels),
              ("text width", mine.context_in_dim, base.context_in_dim),
              ("pooled width", mine.vec_in_dim, base.vec_in_dim)]
    bad = [f"{what} {a} (the model's: {b})" for what, a, b in fields if a != b]
    if bad:
        raise CheckpointError(path, f"this Flux ControlNet does not fit the loaded model: its {'; its '.join(bad)}")
    return replace(cfg, flux=replace(mine, axes_dim=base.axes_dim, theta=base.theta),
                   base_blocks=(base.depth, base.depth_single_blocks))


def describe_sd3_controlnet(shapes: Shapes) -> str:
    """A line for model listings."""
    kind = "SD3.5 ControlNet" if is_sd35_layout(shapes) else "SD3 ControlNet"
    return f"{kind} ({count(shapes, 'transformer_blocks.')} blocks)"


def describe_flux_controlnet(shapes: Shapes) -> str:
    """A line for model listings."""
    cfg = flux_controlnet_config(shapes)
    kind = f"Union, {cfg.union_modes} modes" if cfg.union_modes else "single purpose"
    return (f"Flux.1 ControlNet ({kind}; {cfg.flux.depth} double, {cfg.flux.depth_single_blocks} single blocks)")
