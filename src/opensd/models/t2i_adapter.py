"""T2I-Adapter (Mou et al. 2023): a small convolutional network on the control image whose features,
one per UNet level, are added to the UNet's encoder hidden state (so the later blocks see them too).

Attribute names equal TencentARC's original checkpoint keys:
- "full" (the sd14v1/sd15v2 files and the SDXL ones): `conv_in` after a pixel unshuffle, then
  `body.K` = `num_res_blocks` residual blocks per level (K = level * num_res_blocks + j); a level's
  first block may halve the size (average pool) and widen (`in_conv`, same kernel as `block2`);
- "light" (t2iadapter_color_sd14v1): `body.L` per level = `in_conv` (1x1 to a quarter of the width),
  `body.J.block1/block2` (3x3 residual pairs), `out_conv` (1x1 back up); levels after the first
  average-pool first.
The unshuffle is 8 (SD1: features at 1/8, 1/16, 1/32, 1/64 of the image) or 16 for SDXL (1/16, 1/16,
1/32, 1/32: SDXL has a level less, and its fourth feature goes to the middle block; see `slots`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import UNetConfig
from .conv import Conv2d


@dataclass(frozen=True)
class T2IAdapterConfig:
    kind: str = "full"                        # "full" or "light"
    channels: tuple[int, ...] = (320, 640, 1280, 1280)
    num_res_blocks: int = 2
    in_channels: int = 3                      # the control image's channels (1 for sketch-type adapters)
    unshuffle: int = 8                        # pixel unshuffle factor (16 for SDXL)
    downsamples: tuple[bool, ...] = (False, True, True, True)  # whether level i halves the size first
    kernel: int = 1                           # kernel of a full block's block2 and in_conv


def _down(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 2, 2, ceil_mode=True)


class _ResBlock(nn.Module):
    """[pool] [in_conv] then x + block2(relu(block1(x)))."""

    def __init__(self, c_in: int, c_out: int, kernel: int, down: bool):
        super().__init__()
        self.down = down
        self.in_conv = Conv2d(c_in, c_out, kernel, padding=kernel // 2) if c_in != c_out else None
        self.block1 = Conv2d(c_out, c_out, 3, padding=1)
        self.block2 = Conv2d(c_out, c_out, kernel, padding=kernel // 2)

    def forward(self, x):
        if self.down:
            x = _down(x)
        if self.in_conv is not None:
            x = self.in_conv(x)
        return x + self.block2(F.relu(self.block1(x)))


class _LightLevel(nn.Module):
    def __init__(self, c_in: int, c_out: int, n: int, down: bool):
        super().__init__()
        mid = c_out // 4
        self.down = down
        self.in_conv = Conv2d(c_in, mid, 1)
        self.body = nn.Sequential(*[_ResBlock(mid, mid, 3, False) for _ in range(n)])
        self.out_conv = Conv2d(mid, c_out, 1)

    def forward(self, x):
        return self.out_conv(self.body(self.in_conv(_down(x) if self.down else x)))


class T2IAdapter(nn.Module):
    def __init__(self, cfg: T2IAdapterConfig):
        super().__init__()
        self.config = cfg
        cin = cfg.in_channels * cfg.unshuffle ** 2
        ch = cfg.channels
        if cfg.kind == "light":
            self.body = nn.ModuleList(_LightLevel(cin if i == 0 else ch[i - 1], c, cfg.num_res_blocks,
                                                  cfg.downsamples[i]) for i, c in enumerate(ch))
        elif cfg.kind == "full":
            self.conv_in = Conv2d(cin, ch[0], 3, padding=1)
            self.body = nn.ModuleList(
                _ResBlock(ch[i - 1] if i and j == 0 else c, c, cfg.kernel, j == 0 and cfg.downsamples[i])
                for i, c in enumerate(ch) for j in range(cfg.num_res_blocks))
        else:
            raise ValueError(f"T2I-Adapter kind {cfg.kind!r} must be 'full' or 'light'")

    @property
    def dtype(self) -> torch.dtype:
        return self.body[0].block1.weight.dtype if self.config.kind == "full" else self.body[0].in_conv.weight.dtype

    def forward(self, hint: torch.Tensor) -> list[torch.Tensor]:
        """hint: (B, in_channels, H, W) in [0, 1], H and W multiples of `unshuffle`. One feature per level."""
        cfg = self.config
        x = F.pixel_unshuffle(hint.to(self.dtype), cfg.unshuffle)
        if cfg.kind == "light":
            feats = []
            for level in self.body:
                x = level(x)
                feats.append(x)
            return feats
        x = self.conv_in(x)
        feats = []
        for i, block in enumerate(self.body):
            x = block(x)
            if (i + 1) % cfg.num_res_blocks == 0:
                feats.append(x)
        return feats


def slots(unet: UNetConfig, n_features: int) -> list[int]:
    """Where each feature is added, as an index into the UNet's input blocks (len(input_blocks): the
    middle block's output). Level L's feature goes after its last res block when the level has
    attention, else after the whole level (its downsample included): the rule SD1 and SDXL adapters
    were trained with (A1111's input blocks 2, 5, 8, 11 for SD1; 3, 5, 8 then the middle for SDXL)."""
    n, levels = unet.num_res_blocks, len(unet.channel_mult)
    n_blocks = 1 + levels * (n + 1) - 1
    out = []
    for level in range(min(levels, n_features)):
        last_res = level * (n + 1) + n
        downsample = level != levels - 1
        out.append(last_res if unet.transformer_depth[level] or not downsample else last_res + 1)
    return out + [n_blocks] * (n_features - len(out))


def slot_layout(unet: UNetConfig, where: list[int]) -> list[tuple[int, int]]:
    """(channels, downscale relative to the latent) of the hidden state at each slot."""
    n, mc, levels = unet.num_res_blocks, unet.model_channels, len(unet.channel_mult)
    out = []
    for s in where:
        if s >= levels * (n + 1):  # the middle block
            out.append((mc * unet.channel_mult[-1], 2 ** (levels - 1)))
            continue
        level = max(0, (s - 1) // (n + 1))
        is_down = s >= 1 and (s - 1) % (n + 1) == n
        out.append((mc * unet.channel_mult[level], 2 ** (level + is_down)))
    return out


def feature_layout(cfg: T2IAdapterConfig) -> list[tuple[int, int]]:
    """(channels, downscale relative to the image) of each feature."""
    out, scale = [], cfg.unshuffle
    for c, down in zip(cfg.channels, cfg.downsamples):
        scale *= 2 if down else 1
        out.append((c, scale))
    return out
