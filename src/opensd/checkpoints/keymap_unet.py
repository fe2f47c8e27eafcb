"""diffusers UNet2DConditionModel names <-> original LDM `model.diffusion_model` names.

The table is generated from the UNetConfig: one (diffusers prefix, original prefix, kind) row per
block, plus per-kind renames of the parts inside a block. Transformer internals share their names.
"""
from __future__ import annotations

import torch

from ..models.config import UNetConfig

# Inside a resnet: diffusers name -> original name.
_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}

_FIXED = [
    ("time_embedding.linear_1", "time_embed.0"),
    ("time_embedding.linear_2", "time_embed.2"),
    ("add_embedding.linear_1", "label_emb.0.0"),
    ("add_embedding.linear_2", "label_emb.0.2"),
    ("conv_in", "input_blocks.0.0"),
    ("conv_norm_out", "out.0"),
    ("conv_out", "out.2"),
]


def block_table(cfg: UNetConfig) -> list[tuple[str, str, str]]:
    """Rows of (diffusers prefix, original prefix, kind) with kind in resnet/attn/down/up/plain."""
    rows = [(d, o, "plain") for d, o in _FIXED]
    n = cfg.num_res_blocks
    levels = len(cfg.channel_mult)
    index = 1
    for level in range(levels):
        for j in range(n):
            rows.append((f"down_blocks.{level}.resnets.{j}", f"input_blocks.{index}.0", "resnet"))
            if cfg.transformer_depth[level]:
                rows.append((f"down_blocks.{level}.attentions.{j}", f"input_blocks.{index}.1", "attn"))
            index += 1
        if level != levels - 1:
            rows.append((f"down_blocks.{level}.downsamplers.0.conv", f"input_blocks.{index}.0.op", "plain"))
            index += 1
    rows.append(("mid_block.resnets.0", "middle_block.0", "resnet"))
    if cfg.transformer_depth_middle:
        rows.append(("mid_block.attentions.0", "middle_block.1", "attn"))
    rows.append(("mid_block.resnets.1", f"middle_block.{2 if cfg.transformer_depth_middle else 1}", "resnet"))
    index = 0
    for up, level in enumerate(reversed(range(levels))):
        has_attn = bool(cfg.transformer_depth[level])
        for j in range(n + 1):
            rows.append((f"up_blocks.{up}.resnets.{j}", f"output_blocks.{index}.0", "resnet"))
            if has_attn:
                rows.append((f"up_blocks.{up}.attentions.{j}", f"output_blocks.{index}.1", "attn"))
            index += 1
        if level:
            rows.append((f"up_blocks.{up}.upsamplers.0.conv",
                         f"output_blocks.{index - 1}.{2 if has_attn else 1}.conv", "plain"))
    return rows


def _rename(key: str, rows: list[tuple[str, str, str]], to_original: bool) -> str | None:
    for d, o, kind in rows:
        src, dst = (d, o) if to_original else (o, d)
        if not key.startswith(src + "."):
            continue
        rest = key[len(src) + 1:]
        if kind == "resnet":
            table = _RESNET if to_original else {v: k for k, v in _RESNET.items()}
            part, _, leaf = rest.rpartition(".")
            if part not in table:
                return None
            rest = f"{table[part]}.{leaf}"
        return f"{dst}.{rest}"
    return None


def _convert(sd: dict[str, torch.Tensor], cfg: UNetConfig, to_original: bool) -> dict[str, torch.Tensor]:
    return rename_keys(sd, block_table(cfg), to_original, "UNet")


def rename_keys(sd, rows: list[tuple[str, str, str]], to_original: bool, what: str) -> dict[str, torch.Tensor]:
    """Every key renamed through `rows` (diffusers <-> original); KeyError lists keys no row covers."""
    out, unknown = {}, []
    for key, value in sd.items():
        new = _rename(key, rows, to_original)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise KeyError(f"{len(unknown)} {what} keys match no block of this config, e.g. {unknown[:5]}")
    return out


def unet_from_diffusers(sd: dict[str, torch.Tensor], cfg: UNetConfig) -> dict[str, torch.Tensor]:
    """diffusers UNet state dict -> original names (without the `model.diffusion_model.` prefix)."""
    return _convert(sd, cfg, to_original=True)


def unet_to_diffusers(sd: dict[str, torch.Tensor], cfg: UNetConfig) -> dict[str, torch.Tensor]:
    return _convert(sd, cfg, to_original=False)
