"""The KL autoencoder (VAE) of Stable Diffusion.

Attribute names equal the original LDM checkpoint keys (minus `first_stage_model.`), so an
original-layout file loads with no key mapping at all.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from opensd.models.attention import attention
from opensd.models.config import VAEConfig
from opensd.models.conv import Conv2d
from opensd.models.flux2_latents import PATCH, LatentBatchNorm


def _norm(channels: int) -> nn.GroupNorm:
    # LDM's Normalize(): 32 groups, eps 1e-6 (not GroupNorm's default 1e-5).
    return nn.GroupNorm(32, channels, eps=1e-6, affine=True)


def _norm_act(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    # In-place SiLU is safe: GroupNorm's backward needs its input, not its output, and this
    # saves one full-resolution activation at decode time.
    return F.silu(norm(x), inplace=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1)
        # The original uses a 1x1 "network-in-network" shortcut when the width changes.
        self.nin_shortcut = (Conv2d(in_channels, out_channels, 1)
                             if in_channels != out_channels else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_norm_act(self.norm1, x))
        h = self.conv2(_norm_act(self.norm2, h))  # dropout is 0 in every SD VAE: omitted
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions, residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.q = Conv2d(channels, channels, 1)
        self.k = Conv2d(channels, channels, 1)
        self.v = Conv2d(channels, channels, 1)
        self.proj_out = Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C), a view
        # The 1x1 convs are applied as linears on the token layout so q/k/v come out
        # contiguous (B, HW, C), which the fused attention kernels want (no extra copies).
        q, k, v = (F.linear(tokens, m.weight.flatten(1), m.bias) for m in (self.q, self.k, self.v))
        # Scale is 1/sqrt(C), the same as the original's `c ** -0.5` with one head.
        h = attention(q, k, v, heads=1)
        h = F.linear(h, self.proj_out.weight.flatten(1), self.proj_out.bias)
        return x + h.transpose(1, 2).view(b, c, hgt, wid)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The original pads right/bottom only (no symmetric padding), then strides by 2.
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class MidBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class _Level(nn.Module):
    """One resolution level: `block` (ResnetBlocks) then the subclass's optional resampler."""

    def __init__(self, channels_in: int, channels_out: int, n_blocks: int):
        super().__init__()
        self.block = nn.ModuleList(
            ResnetBlock(channels_in if j == 0 else channels_out, channels_out) for j in range(n_blocks)
        )

    def _blocks(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.block:
            x = blk(x)
        return x


class DownLevel(_Level):
    def __init__(self, channels_in: int, channels_out: int, n_blocks: int, resample: bool):
        super().__init__(channels_in, channels_out, n_blocks)
        # None (not a module) on the last level, so the state dict has no key for it.
        self.downsample = Downsample(channels_out) if resample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._blocks(x)
        return x if self.downsample is None else self.downsample(x)


class UpLevel(_Level):
    def __init__(self, channels_in: int, channels_out: int, n_blocks: int, resample: bool):
        super().__init__(channels_in, channels_out, n_blocks)
        self.upsample = Upsample(channels_out) if resample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._blocks(x)
        return x if self.upsample is None else self.upsample(x)


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch = cfg.ch
        self.conv_in = Conv2d(cfg.in_channels, ch, 3, padding=1)
        in_mult = (1,) + tuple(cfg.ch_mult)
        last = len(cfg.ch_mult) - 1
        self.down = nn.ModuleList(
            DownLevel(ch * in_mult[i], ch * mult, cfg.num_res_blocks, resample=i != last)
            for i, mult in enumerate(cfg.ch_mult)
        )
        top = ch * cfg.ch_mult[-1]
        self.mid = MidBlock(top)
        self.norm_out = _norm(top)
        # Mean and log-variance: twice the latent channels ("double_z").
        self.conv_out = Conv2d(top, 2 * cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(_norm_act(self.norm_out, h))


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, mults = cfg.ch, tuple(cfg.ch_mult)
        top = ch * mults[-1]
        self.conv_in = Conv2d(cfg.z_channels, top, 3, padding=1)
        self.mid = MidBlock(top)
        # up.{i} is indexed by resolution level (i = 0 is full resolution) although it runs
        # from the highest i down; each takes its input width from the level above it.
        in_mult = tuple(mults[1:]) + (mults[-1],)
        self.up = nn.ModuleList(
            UpLevel(ch * in_mult[i], ch * mult, cfg.num_res_blocks + 1, resample=i != 0)
            for i, mult in enumerate(mults)
        )
        self.norm_out = _norm(ch * mults[0])
        self.conv_out = Conv2d(ch * mults[0], cfg.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(_norm_act(self.norm_out, h))


class AutoencoderKL(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        # None (not a module) when the config has none, so the state dict has no key for them.
        self.quant_conv = Conv2d(2 * cfg.z_channels, 2 * cfg.embed_dim, 1) if cfg.use_quant_conv else None
        self.post_quant_conv = Conv2d(cfg.embed_dim, cfg.z_channels, 1) if cfg.use_quant_conv else None
        # FLUX.2's latent statistics; not applied by encode/decode (the family applies them).
        self.bn = (LatentBatchNorm(PATCH * PATCH * cfg.embed_dim, cfg.batch_norm_eps)
                   if cfg.latent_batch_norm else None)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image in [-1, 1] -> posterior (mean, logvar), each (B, embed_dim, H/f, W/f)."""
        h = self.encoder(x)
        mean, logvar = (h if self.quant_conv is None else self.quant_conv(h)).chunk(2, dim=1)
        # The original clamps here so exp(logvar) can neither overflow nor vanish.
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Unscaled latent -> image in about [-1, 1] (the caller applies scaling_factor)."""
        return self.decoder(z if self.post_quant_conv is None else self.post_quant_conv(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction through the posterior mean (deterministic)."""
        return self.decode(self.encode(x)[0])
