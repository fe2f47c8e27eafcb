"""Tiny random CLIP vision / SigLIP encoders (transformers' own classes) and Flux Redux files, saved
as the safetensors files ComfyUI users keep in models/clip_vision and models/style_models."""
from __future__ import annotations

from pathlib import Path

import torch
from reference import randomize_
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, SiglipVisionConfig, SiglipVisionModel

HEADS = 4


def clip_vision(act: str = "quick_gelu", seed: int = 0, image_size: int = 32) -> CLIPVisionModelWithProjection:
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=HEADS,
                           image_size=image_size, patch_size=8, projection_dim=24, hidden_act=act)
    return randomize_(CLIPVisionModelWithProjection(cfg), seed=seed, std=0.1).eval()


def siglip(seed: int = 0, width: int = 32) -> SiglipVisionModel:
    cfg = SiglipVisionConfig(hidden_size=width, intermediate_size=48, num_hidden_layers=3, num_attention_heads=HEADS,
                             image_size=32, patch_size=8, hidden_act="gelu_pytorch_tanh")
    return randomize_(SiglipVisionModel(cfg), seed=seed, std=0.1).eval()


def save_vision(model, path: Path, heads: bool = True) -> Path:
    """The model's state dict as one safetensors file; `heads`: with the metadata an encoder of an
    unreleased size needs (its head count and activation)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"num_attention_heads": str(HEADS), "hidden_act": model.config.hidden_act} if heads else None
    save_file({k: v.contiguous() for k, v in released_names(model.state_dict()).items()}, str(path), metadata=meta)
    return path


def released_names(sd: dict) -> dict:
    """transformers 5's SiglipVisionModel keeps its parts at the top; the released files (a whole
    SiglipModel's vision half, as ComfyUI's sigclip file) name them under vision_model."""
    return {k if k.startswith(("vision_model.", "visual_projection.")) else "vision_model." + k: v
            for k, v in sd.items()}


def redux_weights(vision_width: int = 32, text_width: int = 128, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: 0.1 * torch.randn(*shape, generator=g)  # noqa: E731
    return {"redux_up.weight": r(3 * text_width, vision_width), "redux_up.bias": r(3 * text_width),
            "redux_down.weight": r(text_width, 3 * text_width), "redux_down.bias": r(text_width)}


def save_redux(path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(redux_weights(**kw), str(path))
    return path
