"""SD3 ControlNets in diffusers' SD3ControlNetModel layout (InstantX's SD3-Controlnet-Canny/Pose/Tile):
the MMDiT's inputs and a few joint blocks (every one with its full text stream), the control image's
VAE latent patch-embedded by `pos_embed_input` (zero-initialised, no positions) and added to the
image tokens, and after each block a zero-initialised Linear (`controlnet_blocks.N`) giving one
residual for the image tokens, which MMDiT.forward adds after its own blocks.

Attribute names: the MMDiT parts as in models/mmdit.py (SD3's original names), the ControlNet's own
parts as in diffusers' files. SD35ControlNet (Stability's SD3.5 Large ControlNets) is below.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from .attention import attention
from .config_dit import MMDiTConfig
from .mmdit import FREQ_DIM, DismantledBlock, Embedder, JointBlock, MMDiTInputs, PatchEmbed
from .unet import timestep_embedding


@dataclass
class SD3Control:
    """What SD3 ControlNets add to one MMDiT call: per ControlNet its residuals (MMDiT.forward's
    `control`), kept apart as their block counts may differ."""
    parts: list[list[torch.Tensor]]

    def map(self, fn) -> SD3Control:
        return SD3Control([[fn(t) for t in p] for p in self.parts])

    def __add__(self, other: SD3Control) -> SD3Control:
        return SD3Control(self.parts + other.parts)


class SD3ControlNet(MMDiTInputs):
    def __init__(self, cfg: MMDiTConfig):
        super().__init__(cfg)
        whole = replace(cfg, depth=cfg.depth + 1)  # no block of a ControlNet is a last, text-stopping one
        self.joint_blocks = nn.ModuleList(JointBlock(whole, i) for i in range(cfg.depth))
        self.controlnet_blocks = nn.ModuleList(nn.Linear(cfg.hidden_size, cfg.hidden_size) for _ in range(cfg.depth))
        self.pos_embed_input = PatchEmbed(cfg)

    @property
    def n_residuals(self) -> int:
        return len(self.controlnet_blocks)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, y: torch.Tensor,
                cond_latent: torch.Tensor) -> list[torch.Tensor]:
        """MMDiT's inputs and the control image's latent (B, C, H, W), model-scaled -> one residual
        (B, tokens, hidden) per block, for MMDiT.forward(control=...)."""
        tokens, c, ctx = self.embed(x, timesteps, context, y)
        tokens = tokens + self.pos_embed_input(cond_latent.to(tokens.dtype))
        out = []
        for block, head in zip(self.joint_blocks, self.controlnet_blocks):
            ctx, tokens = block(ctx, tokens, c)
            out.append(head(tokens))
        return out


@dataclass(frozen=True)
class SD35ControlNetConfig:
    """Stability's SD3.5 ControlNets: `mmdit` gives the blocks' shape (depth = ControlNet blocks);
    `control_type` is the file's own tag (0 blur, 1 canny, 2 depth; -1 untagged), which decides how
    the control image is prepared."""
    mmdit: MMDiTConfig
    control_type: int = -1


class SD35ControlNet(nn.Module):
    """Stability's SD3.5 Large ControlNets (sd3.5_large_controlnet_{blur,canny,depth}): no text stream.
    The image tokens are the base model's (its patch embedder and positions, passed in), plus the
    control latent through `pos_embed_input`; the adaLN vector is this network's own timestep and
    pooled-text embedding of the model's inputs; each block is an image-only self-attention block
    (one MMDiT stream) followed by its zero-initialised `controlnet_blocks.N` head."""

    def __init__(self, config: SD35ControlNetConfig):
        super().__init__()
        self.config = config
        cfg = config.mmdit
        dim = cfg.hidden_size
        self.t_embedder = Embedder(FREQ_DIM, dim)
        self.y_embedder = Embedder(cfg.adm_in_channels, dim)
        self.transformer_blocks = nn.ModuleList(DismantledBlock(cfg) for _ in range(cfg.depth))
        self.controlnet_blocks = nn.ModuleList(nn.Linear(dim, dim) for _ in range(cfg.depth))
        self.pos_embed_input = PatchEmbed(cfg)

    @property
    def n_residuals(self) -> int:
        return len(self.controlnet_blocks)

    def forward(self, tokens: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor,
                cond_latent: torch.Tensor) -> list[torch.Tensor]:
        """The base model's image tokens (MMDiT.image_tokens), timesteps, pooled text and the control
        image's latent (B, C, H, W), model-scaled -> one residual (B, tokens, hidden) per block."""
        c = self.t_embedder(timestep_embedding(timesteps, FREQ_DIM).to(tokens.dtype)) + self.y_embedder(y)
        tokens = tokens + self.pos_embed_input(cond_latent.to(tokens.dtype))
        out = []
        for block, head in zip(self.transformer_blocks, self.controlnet_blocks):
            qkv, rest = block.pre_attention(tokens, c)
            tokens = block.post_attention(attention(*qkv, block.attn.heads), *rest)
            out.append(head(tokens))
        return out
