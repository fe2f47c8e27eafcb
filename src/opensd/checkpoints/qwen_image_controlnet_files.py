"""Qwen-Image ControlNet files. InstantX's (diffusers' QwenImageControlNetModel): the single
.safetensors (ComfyUI's controlnet/ folder) and the diffusers folder hold the same keys, diffusers'
names, which are ours (models/qwen_image_controlnet.py): `img_in`, `txt_norm`, `txt_in`,
`time_text_embed.*`, `transformer_blocks.N.*` as the base network's, `controlnet_blocks.N`,
`controlnet_x_embedder`. Told apart as ComfyUI tells them: `controlnet_blocks.0.weight` with a
Qwen-Image block's `img_mlp` (Flux's InstantX files share `controlnet_x_embedder` and `to_q`).
DiffSynth's blockwise ones (below) keep their own names, which are ours.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Mapping

from ..errors import CheckpointError
from ..models.config_dit import QwenImageConfig
from ..models.qwen_image_blockwise import BlockwiseConfig
from ..models.qwen_image_controlnet import QwenImageControlNetConfig
from .detect_dit import count

Shapes = Mapping[str, tuple[int, ...]]
TELLTALE = "transformer_blocks.0.img_mlp.net.0.proj.weight"
FOLDER_CLASS = "QwenImageControlNetModel"


def is_qwen_image_controlnet(keys) -> bool:
    return "controlnet_blocks.0.weight" in keys and TELLTALE in keys


def qwen_image_controlnet_config(shapes: Shapes, base: QwenImageConfig, path="<controlnet>") -> QwenImageControlNetConfig:
    """The config on the base network's shape (RoPE, patches), its block count the file's;
    CheckpointError where the file's widths differ from the model's."""
    try:
        dim, in_ch = shapes["img_in.weight"]
        mine = {"width": dim, "head width": shapes["transformer_blocks.0.attn.norm_q.weight"][0],
                "text width": shapes["txt_in.weight"][1], "input channels": in_ch,
                "MLP width": shapes[TELLTALE][0]}
        control_in = shapes["controlnet_x_embedder.weight"][1]
    except KeyError as e:
        raise CheckpointError(path, f"an incomplete Qwen-Image ControlNet: no {e.args[0]}") from None
    except (ValueError, IndexError):
        raise CheckpointError(path, "a damaged Qwen-Image ControlNet: its weights' shapes are not the released "
                                    "files' (img_in, txt_in, controlnet_x_embedder: matrices)") from None
    theirs = {"width": base.hidden_size, "head width": base.attention_head_dim, "text width": base.joint_attention_dim,
              "input channels": base.in_channels, "MLP width": base.mlp_hidden}
    bad = [f"{k} {mine[k]} (the model's: {theirs[k]})" for k in mine if mine[k] != theirs[k]]
    if bad:
        raise CheckpointError(path, f"this Qwen-Image ControlNet does not fit the loaded model: its {'; its '.join(bad)}")
    if control_in != in_ch:
        raise CheckpointError(path, f"a Qwen-Image ControlNet with {control_in - in_ch} extra control channels "
                                    "(InstantX's Qwen-Image-ControlNet-Inpainting): not supported; the Union file is")
    return QwenImageControlNetConfig(replace(base, num_layers=count(shapes, "controlnet_blocks.")))


def describe_qwen_image_controlnet(shapes: Shapes, path="<controlnet>") -> str:
    try:
        extra = shapes["controlnet_x_embedder.weight"][1] - shapes["img_in.weight"][1]
    except (KeyError, IndexError):
        raise CheckpointError(path, "a damaged Qwen-Image ControlNet: img_in and controlnet_x_embedder are "
                                    "not matrices") from None
    what = "Inpainting (not supported)" if extra else "Union"
    return f"Qwen-Image ControlNet {what} (InstantX, {count(shapes, 'controlnet_blocks.')} blocks)"


# DiffSynth-Studio's blockwise ControlNets (models/qwen_image_blockwise.py): `img_in` and
# `controlnet_blocks.N.{x_rms,y_rms,input_proj,output_proj}`, told apart as ComfyUI's ModelPatchLoader does
BLOCKWISE_TELLTALE = "controlnet_blocks.0.y_rms.weight"


def is_qwen_image_blockwise(keys) -> bool:
    return BLOCKWISE_TELLTALE in keys and "img_in.weight" in keys


def blockwise_config(shapes: Shapes, base: QwenImageConfig | None = None, path="<controlnet>") -> BlockwiseConfig:
    """The config of a blockwise file; with `base` (the model's), CheckpointError where they differ."""
    if len(shapes["img_in.weight"]) != 2:
        raise CheckpointError(path, f"a damaged Qwen-Image blockwise ControlNet: img_in.weight is "
                                    f"{tuple(shapes['img_in.weight'])}, not a matrix")
    dim, in_ch = shapes["img_in.weight"]
    n = count(shapes, "controlnet_blocks.")
    cfg = BlockwiseConfig(n_layers=n, dim=dim, in_channels=4 * 16, extra_channels=in_ch - 4 * 16)
    if base is None:
        return cfg
    if dim != base.hidden_size or n > base.num_layers or cfg.extra_channels not in (0, 4):
        raise CheckpointError(path, f"this Qwen-Image blockwise ControlNet ({dim} wide, {n} blocks, {in_ch} input "
                                    f"channels) does not fit the loaded model ({base.hidden_size} wide, "
                                    f"{base.num_layers} blocks)")
    return replace(cfg, in_channels=base.in_channels)


def describe_qwen_image_blockwise(shapes: Shapes) -> str:
    cfg = blockwise_config(shapes)
    kind = "inpainting, " if cfg.extra_channels else ""
    return f"Qwen-Image blockwise ControlNet (DiffSynth, {kind}{cfg.n_layers} blocks)"
