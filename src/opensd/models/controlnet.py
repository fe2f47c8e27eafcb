"""ControlNet (Zhang et al. 2023): a trainable copy of the UNet's encoder that turns a control image
(edges, depth, pose...) into residuals added to the UNet's skips and middle output.

Attribute names equal the original (lllyasviel) checkpoint keys after `control_model.`:
`time_embed`, `label_emb`, `input_blocks`, `middle_block` as in the UNet, plus `input_hint_block`
(the control image encoder), `zero_convs.N.0` (one 1x1 conv per skip) and `middle_block_out.0`.
A Union ControlNet (xinsir's ControlNet++) has the extra modules of controlnet_union.py and takes a
control type.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import nn

from .config import UNetConfig
from .controlnet_union import add_union, fuse
from .conv import Conv2d
from .unet import UNetModel, add_embeddings, build_encoder, embed

# The hint encoder's conv widths: conv 0 maps the image to 16 channels, then pairs of (same, wider)
# convs; the wider ones stride 2 until the image is at latent size; the last conv is zero-initialised.
HINT_CHANNELS = (16, 32, 96, 256)


@dataclass(frozen=True)
class ControlNetConfig:
    unet: UNetConfig                # the encoder half's config (in_channels: the latent's, 4)
    hint_channels: int = 3          # channels of the control image
    hint_downscale: int = 8         # pixels per latent cell: the VAE's downscale (8 for SD, 4 for small)
    global_average_pooling: bool = False  # "shuffle"-style models pool each residual to 1x1
    # a "diff" ControlNet's file holds its weights less the base UNet's (lllyasviel's "difference" key)
    difference: bool = False
    # Union ControlNet (ControlNet++): number of control types (0: a plain ControlNet), the width,
    # heads and depth of its type transformer, and the embedding width of each one-hot entry
    union_types: int = 0
    union_width: int = 320
    union_heads: int = 8
    union_layers: int = 1
    union_type_dim: int = 256

    def __post_init__(self):
        n = int(round(math.log2(self.hint_downscale)))
        if 2 ** n != self.hint_downscale or not 1 <= n <= len(HINT_CHANNELS) - 1:
            raise ValueError(f"hint_downscale {self.hint_downscale} must be 2, 4 or 8")


def hint_strides(downscale: int) -> list[int]:
    """Stride of each widening conv (indices 4, 8, 12): the first log2(downscale) halve the size."""
    n = int(round(math.log2(downscale)))
    return [2 if i < n else 1 for i in range(len(HINT_CHANNELS) - 1)]


def zero_conv(channels: int) -> nn.Conv2d:
    conv = Conv2d(channels, channels, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class ControlNet(nn.Module):
    def __init__(self, cfg: ControlNetConfig):
        super().__init__()
        self.config = cfg
        u = cfg.unet
        mc = u.model_channels
        add_embeddings(self, u)
        layers: list[nn.Module] = [Conv2d(cfg.hint_channels, HINT_CHANNELS[0], 3, padding=1), nn.SiLU()]
        for (a, b), stride in zip(zip(HINT_CHANNELS, HINT_CHANNELS[1:]), hint_strides(cfg.hint_downscale)):
            layers += [Conv2d(a, a, 3, padding=1), nn.SiLU(), Conv2d(a, b, 3, padding=1, stride=stride),
                       nn.SiLU()]
        out = Conv2d(HINT_CHANNELS[-1], mc, 3, padding=1)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.input_hint_block = nn.Sequential(*layers, out)
        self.input_blocks, self.middle_block, skips = build_encoder(u)
        self.zero_convs = nn.ModuleList(nn.Sequential(zero_conv(c)) for c in skips)
        self.middle_block_out = nn.Sequential(zero_conv(skips[-1]))
        if cfg.union_types:
            add_union(self, cfg.union_types, cfg.union_width, cfg.union_heads, cfg.union_layers,
                      cfg.union_type_dim, mc, 4 * mc)

    @property
    def dtype(self) -> torch.dtype:
        return self.time_embed[0].weight.dtype

    def forward(self, x: torch.Tensor, hint: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                y: torch.Tensor | None = None, control_type: int | None = None) -> list[torch.Tensor]:
        """x: noisy latent (B, 4, h, w); hint: control image (B, hint_channels, h*d, w*d) in [0, 1];
        control_type: a Union ControlNet's type index (None: unset). Returns the residuals: one per
        UNet skip, then the middle one (unscaled)."""
        dtype = self.dtype
        cfg = self.config
        if control_type is not None and not 0 <= control_type < cfg.union_types:
            raise ValueError(f"control type {control_type} is out of range: this ControlNet has "
                             + (f"{cfg.union_types} control types" if cfg.union_types else "none (not a Union ControlNet)"))
        emb = embed(self, cfg.unet, timesteps, y, dtype)
        guided = self.input_hint_block(hint.to(dtype))
        if cfg.union_types:
            emb = emb + self.control_add_embedding(control_type, len(emb), dtype)
            if control_type is not None:
                guided = fuse(self, guided, control_type)
        h = x.to(dtype)
        context = context.to(dtype)
        outs = []
        for i, (block, zero) in enumerate(zip(self.input_blocks, self.zero_convs)):
            h = block(h, emb, context)
            if i == 0:
                if guided.shape[-2:] != h.shape[-2:]:
                    raise ValueError(f"control image of {tuple(hint.shape[-2:])} px does not match the latent "
                                     f"{tuple(x.shape[-2:])} at downscale {self.config.hint_downscale}")
                h = h + guided
            outs.append(zero(h))
        h = self.middle_block(h, emb, context)
        outs.append(self.middle_block_out(h))
        if self.config.global_average_pooling:
            outs = [o.mean(dim=(2, 3), keepdim=True) for o in outs]
        return outs


def from_unet(unet: UNetModel, hint_downscale: int = 8, hint_channels: int = 3) -> ControlNet:
    """A new ControlNet initialised as the paper does: encoder weights copied from the base UNet,
    zero convs and the hint encoder's last conv at zero (so it starts as a no-op)."""
    cfg = ControlNetConfig(replace(unet.config, in_channels=4 if unet.config.in_channels == 9
                                   else unet.config.in_channels),
                           hint_channels=hint_channels, hint_downscale=hint_downscale)
    net = ControlNet(cfg).to(next(unet.parameters()).dtype)
    own = net.state_dict()
    copied = {k: v for k, v in unet.state_dict().items() if k in own and own[k].shape == v.shape}
    net.load_state_dict(copied, strict=False)
    return net
