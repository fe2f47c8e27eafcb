"""Flux.1 ControlNets that take the control image's pixels: XLabs-AI's (x-flux: flux-canny-, -depth-,
-hed-controlnet-v3 and earlier) and TheMistoAI's MistoLine Flux, as ComfyUI's controlnet/ folder
holds them. Their transformer parts already have Black Forest Labs' names (models/flux.py), their
own parts the names models/flux_controlnet.py gives them, except MistoLine's single-block outputs
(`single_controlnet_blocks.N`, renamed here to `controlnet_single_blocks.N`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from ..errors import CheckpointError
from ..models.config_dit import FluxConfig
from ..models.flux_controlnet import MISTOLINE, XLABS, FluxControlNetConfig
from .detect_dit import count
from .flux_controlnet_files import default_axes

Shapes = Mapping[str, tuple[int, ...]]
EMBEDDER = "pos_embed_input.weight"
HINT_TELLTALES = {XLABS: "input_hint_block.0.weight", MISTOLINE: "input_cond_block.encoder.0.weight"}
MISTOLINE_SINGLE = "single_controlnet_blocks."


def xlabs_kind(keys) -> str | None:
    """XLABS or MISTOLINE for a pixel-hint Flux ControlNet's keys, else None."""
    if "double_blocks.0.img_attn.qkv.weight" not in keys or EMBEDDER not in keys:
        return None
    return next((kind for kind, key in HINT_TELLTALES.items() if key in keys), None)


def is_xlabs_controlnet(keys) -> bool:
    return xlabs_kind(keys) is not None


def xlabs_controlnet_config(shapes: Shapes, path="<controlnet>") -> FluxControlNetConfig:
    """The config from the shapes (RoPE axes: Flux.1's for 128-wide heads; the base model's replace
    them when it is applied)."""
    kind = xlabs_kind(shapes)
    if kind is None:
        raise CheckpointError(path, "is not an XLabs or MistoLine Flux ControlNet")
    try:
        width, in_ch = shapes["img_in.weight"]
        head = shapes["double_blocks.0.img_attn.norm.key_norm.scale"][0]
        flux = FluxConfig(
            in_channels=in_ch, out_channels=in_ch, vec_in_dim=shapes["vector_in.in_layer.weight"][1],
            context_in_dim=shapes["txt_in.weight"][1], hidden_size=width,
            mlp_ratio=shapes["double_blocks.0.img_mlp.0.weight"][0] / width, num_heads=width // head,
            depth=count(shapes, "double_blocks."), depth_single_blocks=count(shapes, "single_blocks."),
            axes_dim=default_axes(head), qkv_bias="double_blocks.0.img_attn.qkv.bias" in shapes,
            guidance_embed="guidance_in.in_layer.weight" in shapes)
    except (KeyError, ZeroDivisionError, ValueError) as e:
        raise CheckpointError(path, f"an incomplete {_name(kind)}: no {e.args[0] if e.args else e}") from None
    n_out = count(shapes, "controlnet_blocks.")
    n_single = count(shapes, "controlnet_single_blocks.") + count(shapes, MISTOLINE_SINGLE)
    if n_out != flux.depth or n_single != flux.depth_single_blocks:
        raise CheckpointError(path, f"a broken {_name(kind)}: {flux.depth} double and {flux.depth_single_blocks} "
                                    f"single blocks but {n_out} and {n_single} output linears")
    return FluxControlNetConfig(flux, hint=kind)


def _name(kind: str) -> str:
    return "MistoLine Flux ControlNet" if kind == MISTOLINE else "XLabs Flux ControlNet"


def read_xlabs_controlnet(path: Path, sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor],
                                                                            FluxControlNetConfig]:
    """Our state dict and config from an XLabs or MistoLine file's tensors."""
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    cfg = xlabs_controlnet_config(shapes, path)
    renamed = {("controlnet_single_blocks." + k[len(MISTOLINE_SINGLE):] if k.startswith(MISTOLINE_SINGLE) else k): v
               for k, v in sd.items()}
    return renamed, cfg


def describe_xlabs_controlnet(shapes: Shapes) -> str:
    """A line for model listings."""
    cfg = xlabs_controlnet_config(shapes)
    who = "MistoLine" if cfg.hint == MISTOLINE else "XLabs"
    singles = f", {cfg.flux.depth_single_blocks} single" if cfg.flux.depth_single_blocks else ""
    return f"Flux.1 ControlNet ({who}, pixel hint; {cfg.flux.depth} double{singles} blocks)"
