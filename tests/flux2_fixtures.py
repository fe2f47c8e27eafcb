"""Tiny random FLUX.2 parts built by diffusers itself: the network (Flux2Transformer2DModel: 64 wide,
two heads of 32 with the released 4-axis RoPE split scaled to 8/8/8/8, two double and two single
blocks, 128 input channels as released), for klein (no guidance input) or [dev] (guidance input)."""
from __future__ import annotations

from diffusers import Flux2Transformer2DModel

from reference import randomize_

F2_DIM, F2_HEADS, F2_CTX, F2_AXES, F2_IN = 64, 2, 24, (8, 8, 8, 8), 128


def flux2_transformer(seed: int = 0, guidance: bool = False, ctx: int = F2_CTX) -> Flux2Transformer2DModel:
    net = Flux2Transformer2DModel(in_channels=F2_IN, num_layers=2, num_single_layers=2, attention_head_dim=32,
                                  num_attention_heads=F2_HEADS, joint_attention_dim=ctx,
                                  axes_dims_rope=F2_AXES, guidance_embeds=guidance)
    return randomize_(net, seed=seed, std=0.1).eval()
