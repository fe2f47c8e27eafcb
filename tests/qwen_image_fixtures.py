"""Tiny random Qwen-Image parts built by diffusers itself: the network (QwenImageTransformer2DModel:
64 wide, two heads of 32 with the released RoPE split scaled to 4/14/14, two blocks, 16 latent
channels packed 2x2 as released, a 24-wide text input)."""
from __future__ import annotations

import torch
from diffusers import QwenImageTransformer2DModel

from reference import randomize_

QI_DIM, QI_HEADS, QI_CTX, QI_AXES, QI_LATENT = 64, 2, 24, (4, 14, 14), 16


def qwen_image_transformer(seed: int = 0, ctx: int = QI_CTX, layers: int = 2) -> QwenImageTransformer2DModel:
    net = QwenImageTransformer2DModel(in_channels=4 * QI_LATENT, out_channels=QI_LATENT, num_layers=layers,
                                      attention_head_dim=QI_DIM // QI_HEADS, num_attention_heads=QI_HEADS,
                                      joint_attention_dim=ctx, axes_dims_rope=QI_AXES)
    return randomize_(net, seed=seed, std=0.1).eval()
