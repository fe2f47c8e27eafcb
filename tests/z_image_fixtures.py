"""A tiny random Z-Image network built by diffusers itself (ZImageTransformer2DModel): 64 wide, two
heads of 32 (RoPE split 8, 12, 12, the released 32/48/48 scaled), two refiner and two main blocks,
24-wide caption features."""
from __future__ import annotations

from diffusers import ZImageTransformer2DModel

from reference import randomize_

Z_DIM, Z_HEADS, Z_CAP, Z_AXES = 64, 2, 24, (8, 12, 12)


def z_image_transformer(seed: int = 0) -> ZImageTransformer2DModel:
    net = ZImageTransformer2DModel(in_channels=16, dim=Z_DIM, n_layers=2, n_refiner_layers=2, n_heads=Z_HEADS,
                                   n_kv_heads=Z_HEADS, cap_feat_dim=Z_CAP, axes_dims=list(Z_AXES))
    return randomize_(net, seed=seed, std=0.1).eval()
