"""Flux.1 ControlNets as InstantX and Shakker-Labs publish them (diffusers' FluxControlNetModel):
a few double- and single-stream blocks built like the transformer's, fed the transformer's inputs
plus the control image's VAE latent, packed like the image and embedded by `controlnet_x_embedder`
(zero-initialised) onto the image tokens. After each block a zero-initialised Linear
(`controlnet_blocks.N`, `controlnet_single_blocks.N`) gives one residual for the image tokens;
Flux.forward_tokens adds them to its own blocks' image tokens (each residual serving ceil(blocks /
residuals) blocks in a row). A Union ControlNet (Union-Pro) has `controlnet_mode_embedder`: the
control type's embedding goes before the text tokens, with a text position id of its own.

Attribute names: the transformer parts as in models/flux.py (Black Forest Labs' names), the
ControlNet's own parts as in diffusers' files.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import InvalidArgument
from .config_dit import FluxConfig
from .flux import add_inputs_and_blocks, conditioning_vector, image_ids, pack
from .rope import rope_angles


@dataclass(frozen=True)
class FluxControlNetConfig:
    flux: FluxConfig  # its blocks' shapes; depth / depth_single_blocks: its own block counts
    union_modes: int = 0  # control types of a Union ControlNet (0: a single-purpose one)


@dataclass
class FluxControl:
    """What Flux ControlNets add to one Flux call: per ControlNet, its (double, single) residuals
    (Flux.forward's `control`). Several ControlNets keep their own lists, as their block counts may
    differ; each is spread over the transformer's blocks by its own interval."""
    parts: list[tuple[list[torch.Tensor], list[torch.Tensor]]]

    def map(self, fn) -> FluxControl:
        return FluxControl([([fn(t) for t in d], [fn(t) for t in s]) for d, s in self.parts])

    def __add__(self, other: FluxControl) -> FluxControl:
        return FluxControl(self.parts + other.parts)


class FluxControlNet(nn.Module):
    def __init__(self, config: FluxControlNetConfig):
        super().__init__()
        self.config = config
        cfg = config.flux
        dim = cfg.hidden_size
        add_inputs_and_blocks(self, cfg)
        self.controlnet_blocks = nn.ModuleList(nn.Linear(dim, dim) for _ in range(cfg.depth))
        self.controlnet_single_blocks = nn.ModuleList(nn.Linear(dim, dim) for _ in range(cfg.depth_single_blocks))
        self.controlnet_x_embedder = nn.Linear(cfg.in_channels, dim)
        if config.union_modes:
            self.controlnet_mode_embedder = nn.Embedding(config.union_modes, dim)

    @property
    def n_residuals(self) -> int:
        return len(self.controlnet_blocks) + len(self.controlnet_single_blocks)

    def forward_tokens(self, img, img_ids, txt, txt_ids, timesteps, y, guidance, cond, mode: int | None = None
                       ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The transformer's token inputs (Flux.forward_tokens) and the packed control latent `cond`
        (B, N, in_channels) -> (double-block residuals, single-block residuals), each (B, N, hidden)."""
        cfg = self.config.flux
        img = self.img_in(img) + self.controlnet_x_embedder(cond.to(img.dtype))
        vec = conditioning_vector(self, timesteps, y, guidance, img.dtype)
        txt = self.txt_in(txt)
        if self.config.union_modes:
            if mode is None or not 0 <= mode < self.config.union_modes:
                raise InvalidArgument(f"control type: this Union ControlNet takes a type 0..{self.config.union_modes - 1}, "
                                      f"got {mode!r}")
            modes = torch.full((len(txt), 1), mode, dtype=torch.long, device=txt.device)
            txt = torch.cat((self.controlnet_mode_embedder(modes).to(txt.dtype), txt), dim=1)
            txt_ids = torch.cat((txt_ids[:1], txt_ids))
        pe = rope_angles(torch.cat((txt_ids, img_ids)), cfg.axes_dim, cfg.theta)
        double, single = [], []
        for block, out in zip(self.double_blocks, self.controlnet_blocks):
            img, txt = block(img, txt, vec, pe)
            double.append(out(img))
        x = torch.cat((txt, img), dim=1)
        for block, out in zip(self.single_blocks, self.controlnet_single_blocks):
            x = block(x, vec, pe)
            single.append(out(x[:, txt.shape[1]:]))
        return double, single

    def forward(self, x, timesteps, context, y, guidance, cond_latent, mode: int | None = None):
        """Latents (B, C, H, W) and the control image's latent (B, C, H, W), both model-scaled -> the
        residuals for Flux.forward(control=...)."""
        h, w = x.shape[-2] // 2, x.shape[-1] // 2
        txt_ids = torch.zeros(context.shape[1], 3, device=x.device)
        return self.forward_tokens(pack(x), image_ids(h, w, x.device), context, txt_ids, timesteps, y, guidance,
                                   pack(cond_latent), mode)
