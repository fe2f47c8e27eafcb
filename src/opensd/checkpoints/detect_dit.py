"""Configs of SD3's MMDiT, Flux, Chroma and the text encoders they use, from key names and tensor shapes.

Works on `{key: shape}` alone, like detect.py. What no shape shows is read from metadata our own
files carry (a head width other than the released 64 or 128, Flux's RoPE split), else the
released models' values are assumed.
"""
from __future__ import annotations

import math
from functools import partial
import re
from dataclasses import replace
from typing import Mapping

from ..errors import CheckpointError
from ..models import config as C
from ..models.config_dit import (ChromaConfig, Flux2Config, FluxConfig, MMDiTConfig, QwenImageConfig, T5Config,
                                 ZImageConfig)
from . import detect as D

Shapes = Mapping[str, tuple[int, ...]]

NET = "model.diffusion_model."
TEXT = "text_encoders."
CLIP_L, CLIP_G, T5 = (f"{TEXT}{name}.transformer." for name in ("clip_l", "clip_g", "t5xxl"))
QWEN3 = f"{TEXT}qwen3_4b.transformer."
MISTRAL = f"{TEXT}mistral3_24b.transformer."  # FLUX.2 [dev]'s Mistral Small 3.1 language model, as QWEN3
QWEN25 = f"{TEXT}qwen25_7b.transformer."  # Qwen-Image's Qwen2.5-VL-7B language model (ComfyUI's name), as QWEN3  # Z-Image's text encoder, its keys as its own file's (model.layers.N...)
QWEN25_VISUAL = f"{TEXT}qwen25_7b.visual."  # its vision tower (models.qwen25vl_vision names), Qwen-Image-Edit's
# Where whole-model files of various tools keep the network: ours/SD3's/ComfyUI's first.
NET_PREFIXES = (NET, "diffusion_model.", "model.", "transformer.", "")

META_HEAD_DIM = "opensd.head_dim"       # MMDiT/Flux attention head width (released: 64 / 128)
META_AXES = "opensd.flux_axes_dim"      # Flux RoPE widths per id axis, "16,56,56"
META_Z_AXES = "opensd.z_image_axes_dim"  # Z-Image RoPE widths per id axis, "32,48,48"
META_F2_AXES = "opensd.flux2_axes_dim"  # FLUX.2 RoPE widths per id axis, "32,32,32,32"
META_QI_AXES = "opensd.qwen_image_axes_dim"  # Qwen-Image RoPE widths per id axis, "16,56,56"
META_QI_EDIT_PLUS = "opensd.qwen_image_edit_plus"  # "1": a QwenImageEditPlusPipeline folder (Edit-2509/2511)
META_QI_ZERO_COND_T = "opensd.qwen_image_zero_cond_t"  # "1": its transformer config's zero_cond_t (Edit-2511)
META_SHIFT = "opensd.flow_shift"        # a flow model's schedule shift (a diffusers folder's scheduler config)


def prefix_of(shapes: Shapes, key: str) -> str | None:
    """The prefix under which `key` is stored, or None."""
    return next((p for p in NET_PREFIXES if p + key in shapes), None)


def count(shapes: Shapes, prefix: str) -> int:
    """How many numbered blocks `prefix + N.` there are."""
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in shapes if (m := pat.match(k))})


def _head_dim(metadata: Mapping[str, str], released: int) -> int:
    return int(metadata.get(META_HEAD_DIM, released))


# The key each config field is read from: (original layout, diffusers' layout)
_MMDIT_KEYS = {
    "patch": ("x_embedder.proj.weight", "pos_embed.proj.weight"), "blocks": ("joint_blocks.", "transformer_blocks."),
    "pos": ("pos_embed", "pos_embed.pos_embed"), "out": ("final_layer.linear.weight", "proj_out.weight"),
    "fc1": ("joint_blocks.0.x_block.mlp.fc1.weight", "transformer_blocks.0.ff.net.0.proj.weight"),
    "adm": ("y_embedder.mlp.0.weight", "time_text_embed.text_embedder.linear_1.weight"),
    "context": ("context_embedder.weight", "context_embedder.weight"),
    "qk": ("joint_blocks.0.x_block.attn.ln_q.weight", "transformer_blocks.0.attn.norm_q.weight"),
    "attn2": ("joint_blocks.{}.x_block.attn2.qkv.weight", "transformer_blocks.{}.attn2.to_q.weight"),
}
_FLUX_KEYS = {
    "in": ("img_in.weight", "x_embedder.weight"), "out": ("final_layer.linear.weight", "proj_out.weight"),
    "vec": ("vector_in.in_layer.weight", "time_text_embed.text_embedder.linear_1.weight"),
    "txt": ("txt_in.weight", "context_embedder.weight"),
    "mlp": ("double_blocks.0.img_mlp.0.weight", "transformer_blocks.0.ff.net.0.proj.weight"),
    "double": ("double_blocks.", "transformer_blocks."), "single": ("single_blocks.", "single_transformer_blocks."),
    "bias": ("double_blocks.0.img_attn.qkv.bias", "transformer_blocks.0.attn.to_q.bias"),
    "guidance": ("guidance_in.in_layer.weight", "time_text_embed.guidance_embedder.linear_1.weight"),
    # Chroma's approximator: the same names in both layouts
    "approx": ("distilled_guidance_layer.in_proj.weight",) * 2,
    "approx_layers": ("distilled_guidance_layer.layers.",) * 2,
}


def mmdit_config(shapes: Shapes, p: str, metadata: Mapping[str, str], path: str = "<state dict>",
                 diffusers: bool = False) -> MMDiTConfig:
    """SD3's MMDiT under prefix `p`, in the original layout or (`diffusers`) SD3Transformer2DModel's."""
    k = {name: p + keys[diffusers] for name, keys in _MMDIT_KEYS.items()}
    try:
        width, in_ch, patch, _ = shapes[k["patch"]]
        depth = count(shapes, k["blocks"])
        head_dim = _head_dim(metadata, 64)
        table = shapes[k["pos"]][1]
        side = math.isqrt(table)
        if side * side != table:
            raise CheckpointError(path, f"pos_embed has {table} positions, not a square table")
        return MMDiTConfig(
            depth=depth, num_heads=width // head_dim, head_dim=head_dim, patch_size=patch, in_channels=in_ch,
            out_channels=shapes[k["out"]][0] // (patch * patch), mlp_ratio=shapes[k["fc1"]][0] / width,
            adm_in_channels=shapes[k["adm"]][1], context_dim=shapes[k["context"]][1], pos_embed_max_size=side,
            qk_norm=k["qk"] in shapes,
            x_block_self_attn_layers=tuple(i for i in range(depth) if k["attn2"].format(i) in shapes))
    except KeyError as e:
        what = "diffusers SD3 transformer" if diffusers else "SD3 MMDiT"
        raise CheckpointError(path, f"an incomplete {what}: no {e.args[0]}") from None


def flux_config(shapes: Shapes, p: str, metadata: Mapping[str, str], path: str = "<state dict>",
                diffusers: bool = False, chroma: bool = False) -> FluxConfig:
    """Flux.1 under prefix `p`, in Black Forest Labs' layout or (`diffusers`) FluxTransformer2DModel's;
    `chroma`: Chroma's (a ChromaConfig), in its released layout or ChromaTransformer2DModel's."""
    k = {name: p + keys[diffusers] for name, keys in _FLUX_KEYS.items()}
    try:
        width, in_ch = shapes[k["in"]]
        head_dim = _head_dim(metadata, 128)
        axes = tuple(int(v) for v in metadata.get(META_AXES, "16,56,56").split(","))
        if sum(axes) != head_dim:
            raise CheckpointError(path, f"Flux RoPE axes {axes} do not add up to the head width {head_dim}")
        common = dict(in_channels=in_ch, out_channels=shapes[k["out"]][0], context_in_dim=shapes[k["txt"]][1],
                      hidden_size=width, mlp_ratio=shapes[k["mlp"]][0] / width, num_heads=width // head_dim,
                      depth=count(shapes, k["double"]), depth_single_blocks=count(shapes, k["single"]),
                      axes_dim=axes, qkv_bias=k["bias"] in shapes)
        if chroma:
            hidden, in_dim = shapes[k["approx"]]
            return ChromaConfig(**common, approximator_in_dim=in_dim, approximator_hidden=hidden,
                                approximator_layers=count(shapes, k["approx_layers"]))
        return FluxConfig(**common, vec_in_dim=shapes[k["vec"]][1], guidance_embed=k["guidance"] in shapes)
    except KeyError as e:
        what = "Chroma" if chroma else "Flux"
        raise CheckpointError(path, f"an incomplete {f'diffusers {what} transformer' if diffusers else f'{what} model'}: "
                                    f"no {e.args[0]}") from None


def t5_config(shapes: Shapes, p: str, path: str = "<state dict>") -> T5Config:
    """A T5 encoder in transformers' naming under `p` (shared.weight or encoder.embed_tokens.weight)."""
    try:
        emb = shapes.get(p + "shared.weight") or shapes[p + "encoder.embed_tokens.weight"]
        attn = p + "encoder.block.0.layer.0.SelfAttention."
        buckets, heads = shapes[attn + "relative_attention_bias.weight"]
        inner = shapes[attn + "q.weight"][0]
        return T5Config(vocab_size=emb[0], d_model=emb[1], d_kv=inner // heads, num_heads=heads,
                        d_ff=shapes[p + "encoder.block.0.layer.1.DenseReluDense.wi_0.weight"][0],
                        num_layers=count(shapes, p + "encoder.block."), relative_attention_num_buckets=buckets)
    except KeyError as e:
        raise CheckpointError(path, f"an incomplete T5 encoder: no {e.args[0]}") from None


def clip_config(shapes: Shapes, p: str, big: bool, projected: bool, path: str = "<state dict>") -> C.TextEncoderConfig:
    """A CLIP text encoder in transformers' naming under `p`, as SD3 and Flux use it: the
    penultimate layer without the final norm, and the pooled vector (projected for SD3's, the
    pooler output for Flux's). `big`: OpenCLIP's ViT-bigG (gelu, padded with 0)."""
    try:
        cfg = D.infer_hf_clip(shapes, p)
    except KeyError as e:
        raise CheckpointError(path, f"an incomplete CLIP text encoder: no {e.args[0]}") from None
    cfg = replace(cfg, skip=2, final_norm=False, pooled=True, projection_dim=cfg.projection_dim if projected else 0)
    return replace(cfg, act="gelu", pad_token=0) if big else cfg


def mmdit_config_diffusers(shapes: Shapes, p: str, metadata: Mapping[str, str],
                           path: str = "<state dict>") -> MMDiTConfig:
    return mmdit_config(shapes, p, metadata, path, diffusers=True)


def flux_config_diffusers(shapes: Shapes, p: str, metadata: Mapping[str, str],
                          path: str = "<state dict>") -> FluxConfig:
    return flux_config(shapes, p, metadata, path, diffusers=True)


def chroma_config(shapes: Shapes, p: str, metadata: Mapping[str, str], path: str = "<state dict>") -> ChromaConfig:
    return flux_config(shapes, p, metadata, path, chroma=True)


def chroma_config_diffusers(shapes: Shapes, p: str, metadata: Mapping[str, str],
                            path: str = "<state dict>") -> ChromaConfig:
    return flux_config(shapes, p, metadata, path, diffusers=True, chroma=True)


# Z-Image: (released single file / ComfyUI, diffusers' ZImageTransformer2DModel)
_Z_IMAGE_KEYS = {
    "in": ("x_embedder.weight", "all_x_embedder.2-1.weight"),
    "cap": ("cap_embedder.1.weight",) * 2, "layers": ("layers.",) * 2, "refiner": ("noise_refiner.",) * 2,
    "head": ("layers.0.attention.q_norm.weight", "layers.0.attention.norm_q.weight"),
    "k": ("layers.0.attention.qkv.weight", "layers.0.attention.to_k.weight"),
    "ffn": ("layers.0.feed_forward.w1.weight",) * 2,
    "t_in": ("t_embedder.mlp.0.weight",) * 2, "t_out": ("t_embedder.mlp.2.weight",) * 2,
}


def z_image_config(shapes: Shapes, p: str, metadata: Mapping[str, str], path: str = "<state dict>",
                   diffusers: bool = False) -> ZImageConfig:
    """Z-Image under prefix `p`, in the released layout or (`diffusers`) ZImageTransformer2DModel's.
    The head width is q_norm's; the RoPE split is the released one scaled to it (32, 48, 48 of 128)
    unless metadata says otherwise. Lumina Image 2.0 (the same layout with fewer key/value heads)
    is refused."""
    k = {name: p + keys[diffusers] for name, keys in _Z_IMAGE_KEYS.items()}
    try:
        dim, patch_features = shapes[k["in"]]
        head_dim = shapes[k["head"]][0]
        kv = shapes[k["k"]][0] if diffusers else shapes[k["k"]][0] - dim
        if (kv != dim) if diffusers else (kv != 2 * dim):
            raise CheckpointError(path, "a Lumina Image 2.0 network (grouped key/value heads): not supported; "
                                        "Z-Image is")
        default_axes = f"{head_dim // 4},{3 * head_dim // 8},{head_dim - head_dim // 4 - 3 * head_dim // 8}"
        axes = tuple(int(v) for v in metadata.get(META_Z_AXES, default_axes).split(","))
        if sum(axes) != head_dim:
            raise CheckpointError(path, f"Z-Image RoPE axes {axes} do not add up to the head width {head_dim}")
        return ZImageConfig(in_channels=patch_features // 4, dim=dim, n_layers=count(shapes, k["layers"]),
                            n_refiner_layers=count(shapes, k["refiner"]), n_heads=dim // head_dim,
                            ffn_hidden=shapes[k["ffn"]][0], cap_feat_dim=shapes[k["cap"]][1], axes_dims=axes,
                            adaln_dim=shapes[k["t_out"]][0], t_hidden=shapes[k["t_in"]][0])
    except KeyError as e:
        what = "diffusers Z-Image transformer" if diffusers else "Z-Image network"
        raise CheckpointError(path, f"an incomplete {what}: no {e.args[0]}") from None


def z_image_config_diffusers(shapes: Shapes, p: str, metadata: Mapping[str, str],
                             path: str = "<state dict>") -> ZImageConfig:
    return z_image_config(shapes, p, metadata, path, diffusers=True)


# FLUX.2: (BFL's single file / ComfyUI, diffusers' Flux2Transformer2DModel)
_FLUX2_KEYS = {
    "in": ("img_in.weight", "x_embedder.weight"), "txt": ("txt_in.weight", "context_embedder.weight"),
    "head": ("double_blocks.0.img_attn.norm.query_norm.scale", "transformer_blocks.0.attn.norm_q.weight"),
    "mlp": ("double_blocks.0.img_mlp.2.weight", "transformer_blocks.0.ff.linear_out.weight"),
    "double": ("double_blocks.", "transformer_blocks."), "single": ("single_blocks.", "single_transformer_blocks."),
    "guidance": ("guidance_in.in_layer.weight", "time_guidance_embed.guidance_embedder.linear_1.weight"),
}
# the key only FLUX.2 has (ComfyUI's and diffusers' telltale), per layout
FLUX2_MARK = ("double_stream_modulation_img.lin.weight", "double_stream_modulation_img.linear.weight")


def flux2_config(shapes: Shapes, p: str, metadata: Mapping[str, str], path: str = "<state dict>",
                 diffusers: bool = False) -> Flux2Config:
    """FLUX.2 under prefix `p`, in BFL's layout or (`diffusers`) Flux2Transformer2DModel's. The head
    width is the q norm's; the RoPE split is four equal axes unless metadata says otherwise."""
    k = {name: p + keys[diffusers] for name, keys in _FLUX2_KEYS.items()}
    try:
        width, in_ch = shapes[k["in"]]
        head_dim = shapes[k["head"]][0]
        axes = tuple(int(v) for v in metadata.get(META_F2_AXES, ",".join([str(head_dim // 4)] * 4)).split(","))
        if sum(axes) != head_dim:
            raise CheckpointError(path, f"FLUX.2 RoPE axes {axes} do not add up to the head width {head_dim}")
        return Flux2Config(in_channels=in_ch, hidden_size=width, num_heads=width // head_dim,
                           depth=count(shapes, k["double"]), depth_single_blocks=count(shapes, k["single"]),
                           mlp_ratio=shapes[k["mlp"]][1] / width, context_in_dim=shapes[k["txt"]][1],
                           axes_dim=axes, guidance_embed=k["guidance"] in shapes)
    except KeyError as e:
        what = "diffusers FLUX.2 transformer" if diffusers else "FLUX.2 network"
        raise CheckpointError(path, f"an incomplete {what}: no {e.args[0]}") from None


flux2_config_diffusers = partial(flux2_config, diffusers=True)


# Qwen-Image: one layout (the released single file, ComfyUI's and diffusers' names are the same)
QWEN_IMAGE_MARK = ("txt_norm.weight", "transformer_blocks.0.img_mod.1.weight")


def qwen_image_config(shapes: Shapes, p: str, metadata: Mapping[str, str], path: str = "<state dict>") -> QwenImageConfig:
    """Qwen-Image under prefix `p`. The head width is the q norm's; the RoPE split is the released
    one (16, 56, 56 of 128) scaled to it unless metadata says otherwise."""
    b = p + "transformer_blocks.0."
    try:
        dim, in_ch = shapes[p + "img_in.weight"]
        head_dim = shapes[b + "attn.norm_q.weight"][0]
        first = head_dim // 8
        default_axes = f"{first},{(head_dim - first) // 2},{head_dim - first - (head_dim - first) // 2}"
        axes = tuple(int(v) for v in metadata.get(META_QI_AXES, default_axes).split(","))
        if sum(axes) != head_dim or any(a % 2 for a in axes):
            raise CheckpointError(path, f"Qwen-Image RoPE axes {axes} must be even and add up to the head width "
                                        f"{head_dim}")
        out = shapes[p + "proj_out.weight"][0]
        if out % 4 or in_ch != out:
            raise CheckpointError(path, f"a Qwen-Image network of {in_ch} input and {out} output features: not the "
                                        "2x2 patches of a latent")
        zero_cond_t = metadata.get(META_QI_ZERO_COND_T) == "1"
        return QwenImageConfig(in_channels=in_ch, out_channels=out // 4, num_layers=count(shapes, p + "transformer_blocks."),
                               attention_head_dim=head_dim, num_attention_heads=dim // head_dim,
                               joint_attention_dim=shapes[p + "txt_in.weight"][1], axes_dims_rope=axes,
                               mlp_ratio=shapes[b + "img_mlp.net.0.proj.weight"][0] / dim,
                               edit_plus=zero_cond_t or metadata.get(META_QI_EDIT_PLUS) == "1", zero_cond_t=zero_cond_t)
    except KeyError as e:
        raise CheckpointError(path, f"an incomplete Qwen-Image network: no {e.args[0]}") from None
