"""InstantX's Qwen-Image-ControlNet-Union: a ControlNet of Qwen-Image's own double-stream blocks.

It is the base network cut short (models/qwen_image.py: the same input layers and N blocks, N = 5 in
the released Union file, no output layer) with the control latent's 2x2 patches embedded by
`controlnet_x_embedder` and added to the image tokens on entry. After block i, `controlnet_blocks.i`
of the image tokens is residual i; the base network adds residual i // ceil(main blocks / N) to its
image tokens after each main block (diffusers' rule; ComfyUI repeats each ceil(60 / N) times, the
same on the released 60-block model), scaled by the conditioning scale. This is diffusers'
QwenImageControlNetModel; attribute names are the released file's (diffusers' own, as the base
network's). The ControlNet sees the step's latents, sigma and text (with its padding mask) as the
base network does.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config_dit import QwenImageConfig
from .flux import pack
from .qwen_image import QwenImage, rope_ids
from .rope import rope_angles


@dataclass(frozen=True)
class QwenImageControlNetConfig:
    """`base`: the blocks' shape, a Qwen-Image config whose num_layers is the ControlNet's block
    count; `extra_channels`: control channels past the latent's 2x2 patches (InstantX's inpainting
    file: 4, a mask's; not supported)."""
    base: QwenImageConfig
    extra_channels: int = 0


class QwenImageControlNet(QwenImage):
    def __init__(self, config: QwenImageControlNetConfig):
        cfg = config.base
        super().__init__(cfg, output=False)
        self.config = config
        dim = cfg.hidden_size
        self.controlnet_blocks = nn.ModuleList(nn.Linear(dim, dim) for _ in range(cfg.num_layers))
        self.controlnet_x_embedder = nn.Linear(cfg.in_channels + config.extra_channels, dim)

    @property
    def n_residuals(self) -> int:
        return len(self.controlnet_blocks)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None,
                cond_latent: torch.Tensor) -> list[torch.Tensor]:
        """The base network's latents (B, 16, 2h, 2w), sigma (B,), text features (B, L, joint dim) and
        `mask` (B, L) bool (None: all kept), the control latent (B, 16, 2h, 2w) scaled as the model's
        -> one residual (B, h * w, hidden) per block, for QwenImage.forward(control=...)."""
        h, w = x.shape[-2] // 2, x.shape[-1] // 2
        img = self.img_in(pack(x)) + self.controlnet_x_embedder(pack(cond_latent))
        temb = self.time_text_embed.timestep_embedder(t, img.dtype)
        txt = self.txt_in(self.txt_norm(context))
        img_ids, txt_ids = rope_ids(h, w, txt.shape[1], img.device)
        pe = rope_angles(torch.cat((txt_ids, img_ids)), self.cfg.axes_dims_rope, self.cfg.theta)
        if mask is not None:  # keys only, as the base network masks them
            mask = F.pad(mask.bool(), (0, img.shape[1]), value=True)[:, None, None]
        out = []
        for block, head in zip(self.transformer_blocks, self.controlnet_blocks):
            img, txt = block(img, txt, temb, pe, mask)
            out.append(head(img))
        return out


@dataclass
class QwenImageControl:
    """What Qwen-Image ControlNets add to one base network call: per InstantX ControlNet its scaled
    residuals, kept apart as their block counts may differ, and per blockwise ControlNet its
    Blockwise (models/qwen_image_blockwise.py), whose gates `map` maps as it maps residuals."""
    parts: list

    def ordered(self) -> list:
        """QwenImage.forward's `control`: the blockwise patches first, as ComfyUI runs them before
        adding a block's ControlNet residual."""
        return sorted(self.parts, key=lambda p: not callable(p))

    def map(self, fn) -> QwenImageControl:
        return QwenImageControl([p.map(fn) if callable(p) else [fn(r) for r in p] for p in self.parts])

    def __add__(self, other: QwenImageControl) -> QwenImageControl:
        return QwenImageControl(self.parts + other.parts)
