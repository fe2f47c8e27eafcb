"""Key map between transformers' CLIP text models and our text encoders.

Diffusers folders hold the text encoders as transformers ``CLIPTextModel`` (``text_encoder/``; SD1,
SD2, SDXL) and ``CLIPTextModelWithProjection`` (``text_encoder_2/``; SDXL). Their files use keys
``text_model.embeddings.…``, ``text_model.encoder.layers.{i}.…``, ``text_model.final_layer_norm.…``
and, with projection, ``text_projection.weight``. transformers >= 5.6 builds ``CLIPTextModel``
without the ``text_model.`` level in memory (it strips it on load); both forms are accepted here.

Our models (``opensd.models.clip``) use the original checkpoint names:

* naming "hf" (OpenAI CLIP-L): the transformers names themselves, with ``text_model.``.
* naming "openclip" (ViT-H, ViT-bigG): open_clip names. q/k/v are fused into one
  ``in_proj_weight`` / ``in_proj_bias`` (q, k, v stacked in that order along dim 0, as
  nn.MultiheadAttention does), and ``text_projection`` is a bare [width, proj] matrix applied as
  ``x @ P``, i.e. the transpose of transformers' Linear weight.

The keys map to keys below the model; the caller adds or strips checkpoint prefixes
(``cond_stage_model.model.`` etc.). Only keys are mapped; a missing key is for the strict load that
follows to report.

SD2 in diffusers: the ``text_encoder`` is a CLIPTextModel with 23 layers; the 24th layer of ViT-H
(and its text projection) was dropped at conversion because SD2 conditions on the penultimate
layer followed by the final LayerNorm. Map it with an openclip config of ``layers=23, skip=1,
final_norm=True, projection_dim=0``: layer 23's output with ln_final is exactly what the full
24-layer model gives for skip=2.
"""
from __future__ import annotations

import re

import torch

from ..models.clip import DEFAULT_LOGIT_SCALE
from ..models.config import TextEncoderConfig

_TM = "text_model."
# Keys transformers keeps as buffers; old files carry them, nothing reads them.
_IGNORED = {"embeddings.position_ids"}

# transformers name below ``text_model.`` -> open_clip name, for the non-layer tensors.
_OPENCLIP_TOP = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
# Per-layer parts that are a plain rename (transformers -> open_clip).
_OPENCLIP_LAYER = {
    "layer_norm1.weight": "ln_1.weight",
    "layer_norm1.bias": "ln_1.bias",
    "layer_norm2.weight": "ln_2.weight",
    "layer_norm2.bias": "ln_2.bias",
    "mlp.fc1.weight": "mlp.c_fc.weight",
    "mlp.fc1.bias": "mlp.c_fc.bias",
    "mlp.fc2.weight": "mlp.c_proj.weight",
    "mlp.fc2.bias": "mlp.c_proj.bias",
    "self_attn.out_proj.weight": "attn.out_proj.weight",
    "self_attn.out_proj.bias": "attn.out_proj.bias",
}
_QKV = ("q", "k", "v")
# Per-layer parts of the transformers layout, for the "hf" naming check.
_HF_LAYER_PARTS = set(_OPENCLIP_LAYER) | {
    f"self_attn.{p}_proj.{wb}" for p in _QKV for wb in ("weight", "bias")
}

_HF_LAYER_RE = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")
_OC_LAYER_RE = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")


def _unknown(keys: list[str], what: str) -> KeyError:
    shown = ", ".join(sorted(keys)[:20]) + (" …" if len(keys) > 20 else "")
    return KeyError(f"{len(keys)} unexpected {what} key(s): {shown}")


def _layer_ok(idx: str, cfg: TextEncoderConfig) -> bool:
    return int(idx) < cfg.layers


def clip_from_transformers(sd: dict[str, torch.Tensor], cfg: TextEncoderConfig) -> dict[str, torch.Tensor]:
    """transformers CLIPTextModel[WithProjection] state dict -> our naming for ``cfg.naming``.

    Drops ``position_ids``. For "openclip", fills ``logit_scale`` (which transformers' text-only
    models do not have: in CLIP it belongs to the joint image-text model) with CLIP's initial value
    log(1/0.07); the text encoder never reads it, it is there so our model loads strictly and the
    result matches the original layout. Raises KeyError listing any key it does not know, including
    layers beyond ``cfg.layers`` and a text projection when ``cfg.projection_dim`` is 0.
    """
    if cfg.naming not in ("hf", "openclip"):
        raise ValueError(f"unknown text encoder naming {cfg.naming!r}")
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    qkv: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        name = key[len(_TM):] if key.startswith(_TM) else key
        if name in _IGNORED:
            continue
        if key == "text_projection.weight":
            if not cfg.projection_dim:
                unknown.append(key)
            elif cfg.naming == "hf":
                out[key] = value
            else:
                out["text_projection"] = value.t().contiguous()
            continue
        m = _HF_LAYER_RE.match(name)
        if m:
            idx, part = m.groups()
            if part not in _HF_LAYER_PARTS or not _layer_ok(idx, cfg):
                unknown.append(key)
            elif cfg.naming == "hf":
                out[_TM + name] = value
            elif part in _OPENCLIP_LAYER:
                out[f"transformer.resblocks.{idx}.{_OPENCLIP_LAYER[part]}"] = value
            else:  # self_attn.{q,k,v}_proj.{weight,bias}: fused below
                qkv.setdefault(int(idx), {})[part] = value
            continue
        if name in _OPENCLIP_TOP:
            out[_TM + name if cfg.naming == "hf" else _OPENCLIP_TOP[name]] = value
            continue
        unknown.append(key)
    if unknown:
        raise _unknown(unknown, "transformers CLIP")

    if cfg.naming == "openclip":
        for idx, parts in sorted(qkv.items()):
            for wb in ("weight", "bias"):
                names = [f"self_attn.{p}_proj.{wb}" for p in _QKV]
                missing = [n for n in names if n not in parts]
                if missing:
                    raise KeyError(f"layer {idx}: {', '.join(missing)} missing; q, k and v are fused together")
                out[f"transformer.resblocks.{idx}.attn.in_proj_{wb}"] = torch.cat([parts[n] for n in names], 0)
        if "positional_embedding" in out:
            like = out["positional_embedding"]
            out["logit_scale"] = torch.full((), DEFAULT_LOGIT_SCALE, dtype=like.dtype, device=like.device)
        else:
            out["logit_scale"] = torch.tensor(DEFAULT_LOGIT_SCALE)
    return out


def clip_to_transformers(sd: dict[str, torch.Tensor], cfg: TextEncoderConfig) -> dict[str, torch.Tensor]:
    """Our naming for ``cfg.naming`` -> transformers file layout (keys with ``text_model.``, plus
    ``text_projection.weight`` when the model has a projection). ``logit_scale`` is dropped
    (transformers' text models have none). Raises KeyError listing any key it does not know."""
    if cfg.naming not in ("hf", "openclip"):
        raise ValueError(f"unknown text encoder naming {cfg.naming!r}")
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    if cfg.naming == "hf":
        for key, value in sd.items():
            name = key[len(_TM):] if key.startswith(_TM) else None
            m = _HF_LAYER_RE.match(name) if name else None
            if key == "text_projection.weight" and cfg.projection_dim:
                out[key] = value
            elif name in _IGNORED:
                continue
            elif name in _OPENCLIP_TOP or (m and m.group(2) in _HF_LAYER_PARTS and _layer_ok(m.group(1), cfg)):
                out[key] = value
            else:
                unknown.append(key)
        if unknown:
            raise _unknown(unknown, "HF-naming CLIP")
        return out

    top = {v: k for k, v in _OPENCLIP_TOP.items()}
    layer = {v: k for k, v in _OPENCLIP_LAYER.items()}
    for key, value in sd.items():
        if key == "logit_scale":
            continue
        if key == "text_projection" and cfg.projection_dim:
            out["text_projection.weight"] = value.t().contiguous()
            continue
        if key in top:
            out[_TM + top[key]] = value
            continue
        m = _OC_LAYER_RE.match(key)
        if m and _layer_ok(m.group(1), cfg):
            idx, part = m.groups()
            prefix = f"{_TM}encoder.layers.{idx}."
            if part in layer:
                out[prefix + layer[part]] = value
                continue
            if part in ("attn.in_proj_weight", "attn.in_proj_bias"):
                wb = part.rsplit("_", 1)[1]
                for p, chunk in zip(_QKV, value.chunk(3, dim=0)):
                    out[f"{prefix}self_attn.{p}_proj.{wb}"] = chunk.contiguous()
                continue
        unknown.append(key)
    if unknown:
        raise _unknown(unknown, "OpenCLIP")
    return out
