"""Qwen-Image's VAE (the Wan 2.1 video VAE, diffusers' AutoencoderKLQwenImage) for still images, as 2-D
convolutions.

The released network is 3-D: causal convolutions over (time, height, width) whose time padding is
two zero frames in front and none behind. For one frame, and with no frames before it (diffusers
and ComfyUI run the first frame with an empty feature cache), every time tap of a kernel but the
last sees only those zeros, so a causal 3-D convolution is the 2-D convolution with the last time
slice of its kernel (weight[:, :, -1]); a 1-tap kernel is its only slice. The temporal resamplers
(`time_conv`) do not run on the first frame at all (the down one caches the frame, the up one
marks "Rep"), so they are not built here; the spatial resamplers and the mid-block attention are
2-D in the original already. checkpoints/keymap_qwen_vae.py takes those slices when reading.

Attribute names equal the Wan-layout keys (ComfyUI's split_files/vae/qwen_image_vae.safetensors:
`encoder.conv1`, `encoder.downsamples.N.residual.{0,2,3,6}`, `decoder.upsamples.N`, `encoder.head`,
top-level `conv1` / `conv2` for the quant convs), with 2-D shapes.

The network, per frame:
* RMS norm over channels: x / ||x||_2 * sqrt(C) * gamma (F.normalize, computed in fp32 for half
  inputs), no bias;
* residual block: shortcut(x) + conv(silu(norm(conv(silu(norm(x)))))), a 1x1 shortcut when the width
  changes;
* downsampling: pad right/bottom by one, 3x3 stride-2 convolution; upsampling: nearest-exact x2, then
  a 3x3 convolution that halves the width;
* mid block: residual, single-head attention over the positions (RMS norm, 1x1 qkv, 1x1 proj,
  residual), residual;
* encoder: conv1, levels of residual blocks with a downsampler between levels, mid, head (norm,
  silu, conv to 2 * z channels), then the 1x1 quant conv; mean and log-variance (clamped to
  [-30, 20], diffusers' DiagonalGaussianDistribution);
* decoder: the 1x1 post-quant conv, conv1, mid, levels of num_res_blocks + 1 residual blocks with
  an upsampler between levels, head to 3 channels; the output clamped to [-1, 1] (diffusers'
  _decode does).

Latent normalisation (QwenImagePipeline): the network's latent is (z - latents_mean) * (1 /
latents_std) per channel; before decoding, z = latent / (1 / latents_std) + latents_mean.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import attention
from .conv import Conv2d

# diffusers' AutoencoderKLQwenImage defaults (Qwen/Qwen-Image vae/config.json has the same); Wan 2.1's
QWEN_LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                     0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
QWEN_LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)


@dataclass(frozen=True)
class QwenVAEConfig:
    """Field names as diffusers' AutoencoderKLQwenImage config; the defaults are Qwen-Image's.
    Also the latent format the family sees (`scaled` / `unscaled`, `downscale`, `embed_dim`), like
    config.VAEConfig and config_dit.PatchedLatentConfig."""
    base_dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    input_channels: int = 3
    latents_mean: tuple[float, ...] = QWEN_LATENTS_MEAN
    latents_std: tuple[float, ...] = QWEN_LATENTS_STD
    scaling_factor = 1.0  # the statistics do the scaling
    shift_factor = 0.0

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)

    @property
    def embed_dim(self) -> int:
        return self.z_dim

    def _stats(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, 1 / std) shaped over z's dim 1, in z's dtype, as the pipeline makes them."""
        shape = (-1,) + (1,) * (z.ndim - 2)
        mean = torch.tensor(self.latents_mean).view(shape).to(z.device, z.dtype)
        inv_std = 1.0 / torch.tensor(self.latents_std).view(shape).to(z.device, z.dtype)
        return mean, inv_std

    def scaled(self, z: torch.Tensor) -> torch.Tensor:
        """VAE latent -> the network's: (z - mean) * (1 / std)."""
        mean, inv_std = self._stats(z)
        return (z - mean) * inv_std

    def unscaled(self, z: torch.Tensor) -> torch.Tensor:
        """The inverse of `scaled`: the latent the VAE decodes."""
        mean, inv_std = self._stats(z)
        return z / inv_std + mean


QWEN_IMAGE_VAE = QwenVAEConfig()


class ChannelRMSNorm(nn.Module):
    """RMS norm over dim 1 with `gamma` (C, 1, 1); no epsilon beyond F.normalize's 1e-12."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        return F.normalize(wide, dim=1).to(x.dtype) * self.scale * self.gamma


def _conv3(c_in: int, c_out: int) -> Conv2d:
    return Conv2d(c_in, c_out, 3, padding=1)


def _norm_silu_conv(c_in: int, c_out: int) -> list[nn.Module]:
    return [ChannelRMSNorm(c_in), nn.SiLU(), _conv3(c_in, c_out)]


class ResidualBlock(nn.Module):
    """`residual` indices 0 (norm), 2 (conv), 3 (norm), 6 (conv) hold the weights, as in the files
    (1 and 4 are SiLU, 5 the unused dropout)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.residual = nn.Sequential(*_norm_silu_conv(c_in, c_out), *_norm_silu_conv(c_out, c_out))
        self.residual.insert(5, nn.Identity())
        self.shortcut = Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(x) + self.shortcut(x)


class AttentionBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm = ChannelRMSNorm(dim)
        self.to_qkv = Conv2d(dim, dim * 3, 1)
        self.proj = Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = (t.flatten(2).transpose(1, 2) for t in self.to_qkv(self.norm(x)).chunk(3, dim=1))
        out = attention(q, k, v, heads=1).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj(out)


class Downsample(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), Conv2d(dim, dim, 3, stride=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resample(x)


class _NearestExact2x(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="nearest-exact")


class Upsample(nn.Module):
    """Doubles the resolution and halves the width."""

    def __init__(self, dim: int):
        super().__init__()
        self.resample = nn.Sequential(_NearestExact2x(), _conv3(dim, dim // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resample(x)


def _middle(dim: int) -> nn.Sequential:
    return nn.Sequential(ResidualBlock(dim, dim), AttentionBlock(dim), ResidualBlock(dim, dim))


class Encoder(nn.Module):
    def __init__(self, cfg: QwenVAEConfig):
        super().__init__()
        dims = [cfg.base_dim * m for m in (1,) + tuple(cfg.dim_mult)]
        self.conv1 = _conv3(cfg.input_channels, dims[0])
        blocks: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(dims[:-1], dims[1:])):
            for j in range(cfg.num_res_blocks):
                blocks.append(ResidualBlock(c_in if j == 0 else c_out, c_out))
            if i != len(cfg.dim_mult) - 1:
                blocks.append(Downsample(c_out))
        self.downsamples = nn.Sequential(*blocks)
        self.middle = _middle(dims[-1])
        self.head = nn.Sequential(*_norm_silu_conv(dims[-1], 2 * cfg.z_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.middle(self.downsamples(self.conv1(x))))


class Decoder(nn.Module):
    def __init__(self, cfg: QwenVAEConfig):
        super().__init__()
        mults = tuple(cfg.dim_mult)
        dims = [cfg.base_dim * m for m in (mults[-1],) + mults[::-1]]
        self.conv1 = _conv3(cfg.z_dim, dims[0])
        self.middle = _middle(dims[0])
        blocks: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(dims[:-1], dims[1:])):
            c_in = c_in // 2 if i > 0 else c_in  # the upsampler before this level halved the width
            for j in range(cfg.num_res_blocks + 1):
                blocks.append(ResidualBlock(c_in if j == 0 else c_out, c_out))
            if i != len(mults) - 1:
                blocks.append(Upsample(c_out))
        self.upsamples = nn.Sequential(*blocks)
        self.head = nn.Sequential(*_norm_silu_conv(dims[-1], cfg.input_channels))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.upsamples(self.middle(self.conv1(z))))


class QwenImageVAE(nn.Module):
    """encode/decode as models.vae.AutoencoderKL's: image (B, 3, H, W) in [-1, 1] -> (mean, logvar),
    each (B, z_dim, H/8, W/8), unnormalised (cfg.scaled normalises); decode takes the unnormalised
    latent (cfg.unscaled) and gives the image clamped to [-1, 1]."""

    def __init__(self, cfg: QwenVAEConfig = QWEN_IMAGE_VAE):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.conv1 = Conv2d(2 * cfg.z_dim, 2 * cfg.z_dim, 1)  # diffusers' quant_conv
        self.conv2 = Conv2d(cfg.z_dim, cfg.z_dim, 1)  # diffusers' post_quant_conv
        self.decoder = Decoder(cfg)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.conv1(self.encoder(x)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.conv2(z)).clamp(-1.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction through the posterior mean."""
        return self.decode(self.encode(x)[0])
