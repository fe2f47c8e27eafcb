"""alibaba-pai's Z-Image-Turbo-Fun-Controlnet-Union files (1.0, 2.0, 2.1; ComfyUI's model_patches/):
diffusers-style attention names (`to_q`/`to_k`/`to_v`, `to_out.0`, `norm_q`/`norm_k`) in blocks
otherwise named as Z-Image's, read into models/z_image_controlnet.py's names (fused qkv) by the
base network's block rows. Told apart by `control_all_x_embedder.2-1.weight`; 2.x by its 33 input
channels and fifteen control blocks. A 2.0 file's `control_noise_refiner` is all zeros (diffusers
and ComfyUI then use the control blocks there, as here) and is dropped."""
from __future__ import annotations

from dataclasses import replace
from typing import Mapping

import torch

from ..errors import CheckpointError
from ..models.config_dit import ZImageConfig
from ..models.z_image_controlnet import ZImageControlNetConfig
from .detect_dit import count
from .keymap_dit import Row, from_diffusers, linear
from .keymap_z_image import block_rows

TELLTALE = "control_all_x_embedder.2-1.weight"
REFINER = "control_noise_refiner."
Shapes = Mapping[str, tuple[int, ...]]


def is_z_image_controlnet(keys) -> bool:
    return TELLTALE in keys and "control_layers.0.attention.to_q.weight" in keys


def _refiner(keys, sd: Mapping[str, torch.Tensor] | None) -> str:
    """plain (1.0), control (2.1) or layers (2.0: no refiner blocks, or all-zero ones)."""
    if REFINER + "0.before_proj.weight" in keys:
        if sd is not None and not torch.any(sd[REFINER + "0.before_proj.weight"].float() != 0):
            return "layers"
        return "control"
    return "plain" if REFINER + "0.attention.to_q.weight" in keys else "layers"


def z_image_controlnet_config(shapes: Shapes, sd: Mapping[str, torch.Tensor] | None = None,
                              path="<controlnet>") -> ZImageControlNetConfig:
    """The config from the released file's shapes (and, given them, its weights: 2.0's zero refiner)."""
    try:
        dim, patch_in = shapes[TELLTALE]
        head = shapes["control_layers.0.attention.norm_q.weight"][0]
        hidden = shapes["control_layers.0.feed_forward.w1.weight"][0]
        adaln = shapes["control_layers.0.adaLN_modulation.0.weight"][1]
        n_heads = dim // head
    except KeyError as e:
        raise CheckpointError(path, f"an incomplete Z-Image Fun ControlNet: no {e.args[0]}") from None
    except (ValueError, IndexError, ZeroDivisionError):
        raise CheckpointError(path, "a damaged Z-Image Fun ControlNet: its weights' shapes are not the released "
                                    "files' (control_all_x_embedder a matrix, norm_q a head's width)") from None
    refiner = _refiner(shapes, sd)
    n_ref = count(shapes, REFINER) if refiner != "layers" else 2
    base = ZImageConfig(dim=dim, n_heads=n_heads, ffn_hidden=hidden, adaln_dim=adaln, n_refiner_layers=n_ref,
                        axes_dims=(head - 2 * (3 * head // 8), 3 * head // 8, 3 * head // 8))
    return ZImageControlNetConfig(base, count(shapes, "control_layers."), patch_in // base.patch_size ** 2, refiner)


def _control_block(p: str, cfg: ZImageConfig, first: bool) -> list[Row]:
    rows = block_rows(p, cfg, True) + linear(p + "after_proj", p + "after_proj")
    return rows + (linear(p + "before_proj", p + "before_proj") if first else [])


def z_image_controlnet_rows(config: ZImageControlNetConfig) -> list[Row]:
    cfg = config.base
    emb = f"control_all_x_embedder.{cfg.patch_size}-1"
    rows = linear(emb, emb)
    for i in range(config.n_layers):
        rows += _control_block(f"control_layers.{i}.", cfg, i == 0)
    if config.refiner != "layers":
        for i in range(cfg.n_refiner_layers):
            p = f"{REFINER}{i}."
            rows += block_rows(p, cfg, True) if config.refiner == "plain" else _control_block(p, cfg, i == 0)
    return rows


def read_z_image_controlnet(sd: dict[str, torch.Tensor], path="<controlnet>"):
    """(our state dict, ZImageControlNetConfig) of a released Fun ControlNet file."""
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    config = z_image_controlnet_config(shapes, sd, path)
    if config.refiner == "layers":
        sd = {k: v for k, v in sd.items() if not k.startswith(REFINER)}
    try:
        return from_diffusers(sd, z_image_controlnet_rows(config), "Z-Image ControlNet"), config
    except KeyError as e:
        raise CheckpointError(path, f"unexpected Z-Image ControlNet keys: {e.args[0]}") from None


def compatible_z_image_controlnet(config: ZImageControlNetConfig, base: ZImageConfig,
                                  path="<controlnet>") -> ZImageControlNetConfig:
    """The config on the base network's shape; CheckpointError where they differ."""
    c = config.base
    bad = [f"{what} {a} (the model's: {b})" for what, a, b in
           (("width", c.dim, base.dim), ("heads", c.n_heads, base.n_heads), ("MLP width", c.ffn_hidden, base.ffn_hidden),
            ("time width", c.adaln_dim, base.adaln_dim), ("refiner blocks", c.n_refiner_layers, base.n_refiner_layers))
           if a != b]
    if bad:
        raise CheckpointError(path, f"this Z-Image ControlNet does not fit the loaded model: its {'; its '.join(bad)}")
    if config.n_layers > base.n_layers:
        raise CheckpointError(path, f"this Z-Image ControlNet has {config.n_layers} blocks; the model {base.n_layers}")
    return replace(config, base=base)


def describe_z_image_controlnet(shapes: Shapes) -> str:
    cfg = z_image_controlnet_config(shapes)
    version = "2.x" if cfg.in_channels > cfg.base.in_channels else "1.0"
    return f"Z-Image Fun ControlNet Union {version} ({cfg.n_layers} control blocks, {cfg.in_channels} input channels)"
