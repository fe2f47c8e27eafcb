"""SD3 ControlNet files. InstantX's, in diffusers' SD3ControlNetModel layout: the MMDiT parts renamed by
the MMDiT key table, the ControlNet's own parts (`pos_embed_input.proj`, `controlnet_blocks.N`) kept.
Stability's SD3.5 ControlNets (sd3.5_large_controlnet_*, no text stream): the single files'
`transformer_blocks.N.{attn.qkv,attn.proj,mlp.fc1,mlp.fc2,adaLN_modulation.1}` are already our names,
their `time_text_embed.*` are renamed, a `control_type` scalar tags blur/canny/depth; diffusers'
conversion of them (separate q/k/v, `ff.net.*`, `norm1.linear`) is read too."""
from __future__ import annotations

from dataclasses import replace
from typing import Mapping

import torch

from ..errors import CheckpointError
from ..models.config_dit import MMDiTConfig
from ..models.sd3_controlnet import SD35ControlNetConfig
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


def is_sd35_layout(keys) -> bool:
    """Stability's SD3.5 ControlNets (single file or diffusers' conversion): no text stream."""
    return "pos_embed_input.proj.weight" in keys and "context_embedder.weight" not in keys and any(
        f"transformer_blocks.0.attn.{n}.weight" in keys for n in ("qkv", "to_q"))


def _sd35_rows(depth: int, dim: int) -> list:
    rows = linear("t_embedder.mlp.0", "time_text_embed.timestep_embedder.linear_1")
    rows += linear("t_embedder.mlp.2", "time_text_embed.timestep_embedder.linear_2")
    rows += linear("y_embedder.mlp.0", "time_text_embed.text_embedder.linear_1")
    rows += linear("y_embedder.mlp.2", "time_text_embed.text_embedder.linear_2")
    rows += linear("pos_embed_input.proj", "pos_embed_input.proj")
    for i in range(depth):
        ours, theirs = f"transformer_blocks.{i}", f"transformer_blocks.{i}"
        rows += linear(f"controlnet_blocks.{i}", f"controlnet_blocks.{i}")
        rows += linear(f"{ours}.attn.qkv", tuple(f"{theirs}.attn.to_{n}" for n in "qkv"), (dim,) * 3)
        rows += linear(f"{ours}.attn.proj", f"{theirs}.attn.to_out.0")
        rows += linear(f"{ours}.adaLN_modulation.1", f"{theirs}.norm1.linear")
        rows += linear(f"{ours}.mlp.fc1", f"{theirs}.ff.net.0.proj") + linear(f"{ours}.mlp.fc2", f"{theirs}.ff.net.2")
    return rows


def read_sd35_controlnet(sd: dict[str, torch.Tensor], head_dim: int = 64, path="<controlnet>"):
    """(our state dict, SD35ControlNetConfig) of a Stability SD3.5 ControlNet, single file or diffusers."""
    sd = dict(sd)
    tag = sd.pop("control_type", None)
    if tag is not None and tag.numel() != 1:
        raise CheckpointError(path, f"an SD3.5 ControlNet's control_type should be one number, not {tuple(tag.shape)}")
    try:
        width, in_ch, p, _ = sd["pos_embed_input.proj.weight"].shape
        blocks = count(sd, "transformer_blocks.")
        fc1 = sd.get("transformer_blocks.0.mlp.fc1.weight", sd.get("transformer_blocks.0.ff.net.0.proj.weight"))
        cfg = MMDiTConfig(depth=blocks, num_heads=width // head_dim, head_dim=head_dim, patch_size=p,
                          in_channels=in_ch, out_channels=in_ch, mlp_ratio=fc1.shape[0] / width,
                          adm_in_channels=sd["time_text_embed.text_embedder.linear_1.weight"].shape[1])
    except (KeyError, AttributeError) as e:
        raise CheckpointError(path, f"an incomplete SD3.5 ControlNet: no {e.args[0] if e.args else 'MLP'}") from None
    if "transformer_blocks.0.attn.qkv.weight" in sd:  # the single file: only the embedders are renamed
        renamed = {r.diffusers[0]: r.original for r in _sd35_rows(0, width)}
        sd = {renamed.get(k, k): v for k, v in sd.items()}
    else:
        try:
            sd = from_diffusers(sd, _sd35_rows(blocks, width), "SD3.5 ControlNet")
        except KeyError as e:
            raise CheckpointError(path, f"unexpected SD3.5 ControlNet keys: {e.args[0]}") from None
    return sd, SD35ControlNetConfig(cfg, -1 if tag is None else round(float(tag)))


def read_sd3_controlnet(sd: dict[str, torch.Tensor], head_dim: int = 64, path="<controlnet>"):
    """(our state dict, config) of a diffusers-layout SD3 ControlNet; SD3.5's: read_sd35_controlnet."""
    if is_sd35_layout(sd):
        return read_sd35_controlnet(sd, head_dim, path)
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


def compatible_sd3_controlnet(config, base: MMDiTConfig, path="<controlnet>"):
    """CheckpointError unless the ControlNet's (an MMDiTConfig or SD35ControlNetConfig) residuals and
    inputs fit the base MMDiT."""
    cfg = getattr(config, "mmdit", config)
    fields = [("width", cfg.hidden_size, base.hidden_size), ("patch", cfg.patch_size, base.patch_size),
              ("latent channels", cfg.in_channels, base.in_channels),
              ("pooled width", cfg.adm_in_channels, base.adm_in_channels)]
    if cfg is config:  # InstantX's have a text stream; SD3.5's take none
        fields.append(("text width", cfg.context_dim, base.context_dim))
    bad = [f"{what} {a} (the model's: {b})" for what, a, b in fields if a != b]
    if bad:
        raise CheckpointError(path, f"this SD3 ControlNet does not fit the loaded model: its {'; its '.join(bad)}")
    return config
