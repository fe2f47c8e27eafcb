"""DiffSynth-Studio's Qwen-Image "blockwise" ControlNets (Qwen-Image-Blockwise-ControlNet-Canny / -Depth /
-Inpaint), as ComfyUI's ModelPatchLoader and QwenImageDiffsynthControlnet run them (comfy_extras/
nodes_model_patch.py; diffusers has none).

The control latent (16 channels, scaled as the model's; the Inpaint file adds one mask channel) is
cut into 2x2 patches and embedded once by `img_in`. After main block i, block i of the patch
(`controlnet_blocks.i`: RMS norms of the image tokens and of the control tokens, summed, then
`input_proj`, exact GELU, `output_proj`) of the image's own tokens is added to them, times the
strength: a residual that depends on the block's output, so it is computed inside the base network's
call (QwenImage.forward's `control`), before any InstantX residual of that block (ComfyUI's order).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .norms import RMSNorm

EPS = 1e-6


@dataclass(frozen=True)
class BlockwiseConfig:
    n_layers: int = 60
    dim: int = 3072
    in_channels: int = 64  # the latent's 2x2 patches; the Inpaint file's img_in takes 4 more (a mask's)
    extra_channels: int = 0


class BlockwiseBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.x_rms, self.y_rms = RMSNorm(dim, EPS), RMSNorm(dim, EPS)
        self.input_proj, self.output_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, img: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.output_proj(F.gelu(self.input_proj(self.x_rms(img) + self.y_rms(cond))))


class QwenImageBlockwiseControlNet(nn.Module):
    def __init__(self, config: BlockwiseConfig):
        super().__init__()
        self.config = config
        self.img_in = nn.Linear(config.in_channels + config.extra_channels, config.dim)
        self.controlnet_blocks = nn.ModuleList(BlockwiseBlock(config.dim) for _ in range(config.n_layers))

    @property
    def n_residuals(self) -> int:
        return len(self.controlnet_blocks)


@dataclass
class Blockwise:
    """One blockwise ControlNet in a base network call: its embedded control tokens (1, n, dim) and
    per-row gate (B,): the strength, 0 for rows without it. Called after main block i with the image
    tokens, it answers the residual for the first n of them (None past its blocks)."""
    net: QwenImageBlockwiseControlNet
    tokens: torch.Tensor
    gate: torch.Tensor

    def __call__(self, i: int, img: torch.Tensor) -> torch.Tensor | None:
        if i >= len(self.net.controlnet_blocks):
            return None
        n = self.tokens.shape[1]
        dtype = self.net.img_in.weight.dtype
        out = self.net.controlnet_blocks[i](img[:, :n].to(dtype), self.tokens.to(img.device, dtype))
        return out * self.gate.to(img.device, out.dtype)[:, None, None]

    def map(self, fn) -> Blockwise:
        return Blockwise(self.net, self.tokens, fn(self.gate))
