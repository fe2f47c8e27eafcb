"""Decide the architecture of an original-layout state dict from its key names and tensor shapes.

Works on shapes alone (a `{key: shape}` mapping), so it runs on meta tensors and on a
safetensors header without reading any weights.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import replace
from typing import Mapping

from ..errors import CheckpointError
from ..models import config as C
from . import markers as M
from .families import family_message, unsupported_family, what_else
from .keymap_qwen_vae import is_qwen_vae

Shapes = Mapping[str, tuple[int, ...]]

UNET = "model.diffusion_model."
VAE = "first_stage_model."
# Text-encoder prefixes by family layout.
LDM_HF = "cond_stage_model.transformer."
LDM_OPENCLIP = "cond_stage_model.model."
SGM = "conditioner.embedders."

# Metadata keys we read: the ecosystem's ModelSpec keys and our own for what shapes cannot say.
META_PREDICTION = "modelspec.prediction_type"
META_RESOLUTION = "modelspec.resolution"
META_SCALING = "opensd.vae_scaling_factor"
# The UNet's head split is not visible in any shape; small models and diffusers folders state it.
META_HEADS = "opensd.unet_num_heads"
META_HEAD_CHANNELS = "opensd.unet_num_head_channels"


def detect(shapes: Shapes, path: str = "<state dict>", metadata: Mapping[str, str] | None = None,
           prediction: C.Prediction | None = None) -> C.ModelConfig:
    """Return the ModelConfig of an original-layout checkpoint, or raise CheckpointError saying what
    the file looks like instead."""
    metadata = metadata or {}
    if UNET + "input_blocks.0.0.weight" not in shapes:
        raise CheckpointError(path, what_else(shapes, UNET))
    family = unsupported_family(shapes)  # an SD-like UNet of another family (SVD, Kolors)
    if family:
        raise CheckpointError(path, family_message(family))
    encoders = _text_encoders(shapes, path)
    family = _family(shapes, encoders)
    unet = infer_unet(shapes, UNET, sd1_heads=family == "sd1")
    if family == "small" and unet.adm_in_channels:  # our small models' only "y" is the CFG scale
        unet = replace(unet, guidance_embed=True)
    if family == "sd2" and unet.adm_in_channels:  # Stable unCLIP 2.1: "y" is the image embedding
        unet = replace(unet, unclip=True)
    if META_HEADS in metadata or META_HEAD_CHANNELS in metadata:
        unet = replace(unet, num_heads=int(metadata.get(META_HEADS, -1)),
                       num_head_channels=int(metadata.get(META_HEAD_CHANNELS, -1)))
    vae = infer_vae(shapes, VAE, path)
    scaling = metadata.get(META_SCALING)
    if scaling is not None:
        vae = replace(vae, scaling_factor=float(scaling))
    elif family in ("sdxl", "sdxl_refiner"):
        vae = replace(vae, scaling_factor=C.SDXL_VAE.scaling_factor)
    # SD2 defaults to v (the 768 models); its 9-channel inpainting model is eps.
    default = "v" if family == "sd2" and unet.in_channels == 4 else "eps"
    pred = prediction or declared_prediction(shapes, metadata) or default
    resolution = {"sd1": 512, "sd2": 768 if pred == "v" else 512, "sdxl": 1024, "sdxl_refiner": 1024}.get(family, 512)
    if META_RESOLUTION in metadata:
        resolution = int(str(metadata[META_RESOLUTION]).lower().split("x")[0])
    return M.with_sampling(C.ModelConfig(family, unet, vae, encoders, pred, resolution), shapes, metadata, path)


def metadata_for(cfg: C.ModelConfig) -> dict[str, str]:
    """The metadata a single file needs so `detect` recovers `cfg` exactly (what shapes cannot say)."""
    return {META_RESOLUTION: f"{cfg.resolution}x{cfg.resolution}",
            META_SCALING: str(cfg.vae.scaling_factor),
            META_PREDICTION: {"v": "v", "edm": "edm"}.get(cfg.prediction, "epsilon"),
            META_HEADS: str(cfg.unet.num_heads), META_HEAD_CHANNELS: str(cfg.unet.num_head_channels)
            } | M.metadata_of(cfg)


def _family(shapes: Shapes, encoders: tuple[C.TextEncoderConfig, ...]) -> C.Family:
    if any(k.startswith(SGM) for k in shapes):
        return "sdxl" if len(encoders) == 2 else "sdxl_refiner"
    if encoders[0].naming == "openclip":
        return "sd2"
    mc = shapes[UNET + "input_blocks.0.0.weight"][0]
    if encoders[0].width == 768 and encoders[0].layers == 12 and mc == 320:
        return "sd1"
    return "small"


def _text_encoders(shapes: Shapes, path: str) -> tuple[C.TextEncoderConfig, ...]:
    if LDM_HF + "text_model.embeddings.token_embedding.weight" in shapes:
        return (infer_hf_clip(shapes, LDM_HF),)
    if LDM_OPENCLIP + "token_embedding.weight" in shapes:
        enc = infer_openclip(shapes, LDM_OPENCLIP)
        # SD2 conditions on the 23rd layer: "penultimate" of the original 24, or the last layer of
        # the 23-layer encoder that diffusers' conversion keeps.
        return (replace(enc, skip=max(1, enc.layers - 22), final_norm=True, pooled=False),)
    first, second = f"{SGM}0.", f"{SGM}1."
    if first + "transformer.text_model.embeddings.token_embedding.weight" in shapes:
        clip_l = replace(infer_hf_clip(shapes, first + "transformer."), skip=2, final_norm=False)
        if second + "model.token_embedding.weight" not in shapes:
            raise CheckpointError(path, "SDXL layout with a first text encoder but no second (OpenCLIP "
                                        "ViT-bigG) encoder under conditioner.embedders.1")
        big_g = replace(infer_openclip(shapes, second + "model."), skip=2, final_norm=False, pooled=True)
        return (clip_l, big_g)
    if first + "model.token_embedding.weight" in shapes:
        return (replace(infer_openclip(shapes, first + "model."), skip=2, final_norm=False, pooled=True),)
    raise CheckpointError(path, "has a UNet but no text encoder we recognise (expected cond_stage_model.* "
                                "or conditioner.embedders.*); is it a UNet-only file?")


def _indices(shapes: Shapes, prefix: str) -> list[int]:
    """The distinct integers N of keys starting with `prefix + "N."`, sorted."""
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in shapes if (m := pat.match(k))})


def infer_hf_clip(shapes: Shapes, p: str) -> C.TextEncoderConfig:
    vocab, width = shapes[p + "text_model.embeddings.token_embedding.weight"]
    proj = shapes.get(p + "text_projection.weight")
    return C.TextEncoderConfig(
        naming="hf", vocab_size=vocab, width=width,
        layers=len(_indices(shapes, p + "text_model.encoder.layers.")),
        heads=max(1, width // 64),
        max_length=shapes[p + "text_model.embeddings.position_embedding.weight"][0],
        act="quick_gelu", projection_dim=proj[0] if proj else 0,
        intermediate_size=_mlp_width(shapes, p + "text_model.encoder.layers.0.mlp.fc1.weight", width))


def infer_openclip(shapes: Shapes, p: str) -> C.TextEncoderConfig:
    vocab, width = shapes[p + "token_embedding.weight"]
    proj = shapes.get(p + "text_projection")
    return C.TextEncoderConfig(
        naming="openclip", vocab_size=vocab, width=width,
        layers=len(_indices(shapes, p + "transformer.resblocks.")),
        heads=max(1, width // 64), max_length=shapes[p + "positional_embedding"][0],
        act="gelu", projection_dim=proj[1] if proj else 0, pad_token=0,
        intermediate_size=_mlp_width(shapes, p + "transformer.resblocks.0.mlp.c_fc.weight", width))


def _mlp_width(shapes: Shapes, key: str, width: int) -> int:
    """The MLP width when it is not CLIP's usual 4 x width (0 = the usual)."""
    shape = shapes.get(key)
    return shape[0] if shape and shape[0] != 4 * width else 0


def infer_unet(shapes: Shapes, p: str, sd1_heads: bool = False) -> C.UNetConfig:
    mc, in_ch = shapes[p + "input_blocks.0.0.weight"][:2]
    blocks = defaultdict(set)
    pat = re.compile(re.escape(p) + r"input_blocks\.(\d+)\.(\d+)\.")
    for k in shapes:
        if m := pat.match(k):
            blocks[int(m.group(1))].add(int(m.group(2)))
    levels, current = [], []
    for n in sorted(blocks)[1:]:
        if p + f"input_blocks.{n}.0.op.weight" in shapes:
            levels.append(current)
            current = []
        else:
            current.append(n)
    levels.append(current)
    mult = tuple(shapes[p + f"input_blocks.{lvl[0]}.0.out_layers.3.weight"][0] // mc for lvl in levels)
    depth = tuple(len(_indices(shapes, p + f"input_blocks.{lvl[0]}.1.transformer_blocks.")) for lvl in levels)
    middle = len(_indices(shapes, p + "middle_block.1.transformer_blocks."))
    attn_keys = [k for k in shapes if k.startswith(p) and k.endswith("attn2.to_k.weight")]
    proj_in = [k for k in shapes if k.startswith(p) and k.endswith("proj_in.weight")]
    adm = shapes.get(p + "label_emb.0.0.weight")
    heads = dict(num_heads=8, num_head_channels=-1) if sd1_heads else {}
    return C.UNetConfig(
        in_channels=in_ch, out_channels=shapes[p + "out.2.weight"][0], model_channels=mc,
        channel_mult=mult, num_res_blocks=len(levels[0]), transformer_depth=depth,
        transformer_depth_middle=middle,
        context_dim=shapes[attn_keys[0]][1] if attn_keys else 768,
        use_linear_in_transformer=bool(proj_in) and len(shapes[proj_in[0]]) == 2,
        adm_in_channels=adm[1] if adm else 0, **heads)


def infer_vae(shapes: Shapes, p: str, path: str = "<state dict>") -> C.VAEConfig:
    if is_qwen_vae(shapes, p):  # its diffusers layout has conv_in / conv_out too: refused before being misread
        raise CheckpointError(path, "a Qwen-Image (Wan 2.1) VAE: 3-D causal convolutions and RMS norms, "
                                    "for Qwen-Image only, not an SD/SDXL/SD3/Flux VAE")
    if p + "encoder.conv_in.weight" not in shapes or p + "decoder.conv_in.weight" not in shapes:
        raise CheckpointError(path, "has no VAE (first_stage_model.encoder/decoder); pass a VAE file "
                                    "with --vae")
    ch = shapes[p + "encoder.conv_in.weight"][0]
    levels = _indices(shapes, p + "encoder.down.")
    # top-level quant convs, or inside the encoder (Black Forest Labs' FLUX.2 file)
    quant = next((shapes[k] for k in (p + "quant_conv.weight", p + "encoder.quant_conv.weight") if k in shapes), None)
    return C.VAEConfig(
        in_channels=shapes[p + "encoder.conv_in.weight"][1], out_ch=shapes[p + "decoder.conv_out.weight"][0],
        ch=ch, ch_mult=tuple(shapes[p + f"encoder.down.{i}.block.0.conv2.weight"][0] // ch for i in levels),
        num_res_blocks=len(_indices(shapes, p + "encoder.down.0.block.")),
        z_channels=shapes[p + "encoder.conv_out.weight"][0] // 2,
        embed_dim=(quant or shapes[p + "encoder.conv_out.weight"])[0] // 2,
        use_quant_conv=quant is not None,
        # FLUX.2: latent statistics, and no scale (it normalises by them instead)
        **(dict(latent_batch_norm=True, scaling_factor=1.0) if p + "bn.running_mean" in shapes else {}))


def declared_prediction(shapes: Shapes, metadata: Mapping[str, str]) -> C.Prediction | None:
    """What the file says it predicts: its marker tensors first (checkpoints/markers.py), then its
    ModelSpec metadata; None when it says nothing."""
    return M.marker_prediction(shapes) or prediction_from_metadata(metadata)


def prediction_from_metadata(metadata: Mapping[str, str]) -> C.Prediction | None:
    value = str(metadata.get(META_PREDICTION, "")).lower()
    if value in ("v", "v_prediction", "v-prediction"):
        return "v"
    if value in ("epsilon", "eps"):
        return "eps"
    return "edm" if value == "edm" else None
