"""CLIPAttentionMultiply's scaling of the text encoders' self-attention, as forward hooks on the
shared encoders (their weights are never written): loras.activate installs them for the CLIP
branch about to encode and removes them for the next one.

ComfyUI multiplies the weight and bias of every ``self_attn.{q,k,v,out}_proj`` by a factor; scaling a
linear layer's weight and bias scales its output by the same factor, so the hooks scale outputs.
ComfyUI names OpenCLIP encoders (SD2, SDXL's bigG) the HF way, so their fused in-projection's q, k
and v thirds are scaled apart. T5's attention (q/k/v/o) is not a CLIP self_attn and stays as it is.
"""
from __future__ import annotations

import torch
from torch import nn

from ..models.clip import FusedInProjection


def attention_hooks(modules: list[nn.Module], factors: tuple[float, float, float, float]) -> list:
    """Hook every CLIP self-attention in `modules` so its q, k, v and output projections come out
    times `factors`; returns the handles (remove them to undo)."""
    q, k, v, out = factors
    handles = []

    def scale(layer: nn.Module, factor: float) -> None:
        if factor != 1.0:
            handles.append(layer.register_forward_hook(lambda m, args, y, f=factor: y * f))

    for module in modules:
        for attn in module.modules():
            if all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "out_proj")):
                for name, factor in (("q_proj", q), ("k_proj", k), ("v_proj", v), ("out_proj", out)):
                    scale(getattr(attn, name), factor)
            elif isinstance(getattr(attn, "in_proj", None), FusedInProjection):
                if (q, k, v) != (1.0, 1.0, 1.0):
                    handles.append(attn.in_proj.register_forward_hook(_thirds_scaled(q, k, v)))
                scale(attn.out_proj, out)
    return handles


def _thirds_scaled(q: float, k: float, v: float):
    def hook(module, args, y: torch.Tensor) -> torch.Tensor:
        width = y.shape[-1] // 3
        factors = torch.tensor([q, k, v], dtype=y.dtype, device=y.device).repeat_interleave(width)
        return y * factors
    return hook


def scaled_tensors(tensors: dict[str, torch.Tensor], factors: tuple[float, float, float, float]) -> dict:
    """A checkpoint's text-encoder tensors with the factors in the weights, as ComfyUI saves a
    multiplied CLIP (CheckpointSave): q/k/v/out_proj weights and biases, OpenCLIP's fused
    in_proj by thirds."""
    q, k, v, out = factors
    by_name = {"self_attn.q_proj": q, "self_attn.k_proj": k, "self_attn.v_proj": v, "attn.out_proj": out}
    scaled = {}
    for name, t in tensors.items():
        stem, _, kind = name.rpartition(".")
        factor = next((f for key, f in by_name.items() if stem.endswith(key)), None)
        if factor is not None and kind in ("weight", "bias"):
            t = (t.float() * factor).to(t.dtype)
        elif name.endswith(("attn.in_proj_weight", "attn.in_proj_bias")):
            rows = torch.tensor([q, k, v]).repeat_interleave(t.shape[0] // 3)
            t = (t.float() * rows.reshape(-1, *[1] * (t.ndim - 1))).to(t.dtype)
        scaled[name] = t
    return scaled
