"""The tiny autoencoders TAESD / TAESDXL / TAESD3 / TAEF1 (madebyollin): a 1.2 M-parameter encoder
and decoder of plain 3x3 convolutions, ReLUs and 2x nearest upsampling that map to and from a
model's latent space, for live previews and fast decodes.

The encoder and decoder are `nn.Sequential`s numbered as in madebyollin's published
`taesd_encoder` / `taesd_decoder` files, so those load with no renaming (the decoder's index 0 is
the parameter-free soft clamp). They work on the latents the diffusion model sees (the SD VAE's
latent times its scaling factor), with images in [-1, 1] here as in the rest of opensd.
"""
from __future__ import annotations

import torch
from torch import nn

WIDTH = 64
BLOCKS_PER_LEVEL = 3


def _conv(n_in: int, n_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class SoftClamp(nn.Module):
    """Squash latents smoothly into (-3, 3), the range the decoder was trained on."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class Block(nn.Module):
    """conv-ReLU-conv-ReLU-conv plus the input, then ReLU (width never changes here, so the skip is
    the identity and has no weights)."""

    def __init__(self, width: int = WIDTH):
        super().__init__()
        self.conv = nn.Sequential(_conv(width, width), nn.ReLU(), _conv(width, width), nn.ReLU(),
                                  _conv(width, width))
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.conv(x) + x)


def tiny_encoder(latent_channels: int) -> nn.Sequential:
    """Image in [0, 1] -> latent: one block at full size, then three times (stride-2 conv, 3 blocks)."""
    layers: list[nn.Module] = [_conv(3, WIDTH), Block()]
    for _ in range(3):
        layers += [_conv(WIDTH, WIDTH, stride=2, bias=False)] + [Block() for _ in range(BLOCKS_PER_LEVEL)]
    return nn.Sequential(*layers, _conv(WIDTH, latent_channels))


def tiny_decoder(latent_channels: int) -> nn.Sequential:
    """Latent -> image in about [0, 1]: clamp, conv, then three times (3 blocks, 2x upsample, conv)."""
    layers: list[nn.Module] = [SoftClamp(), _conv(latent_channels, WIDTH), nn.ReLU()]
    for _ in range(3):
        layers += [Block() for _ in range(BLOCKS_PER_LEVEL)]
        layers += [nn.Upsample(scale_factor=2, mode="nearest"), _conv(WIDTH, WIDTH, bias=False)]
    return nn.Sequential(*layers, Block(), _conv(WIDTH, 3))


class TinyAutoencoder(nn.Module):
    """Either half may be absent (previews need only the decoder); state-dict keys are
    `encoder.<madebyollin key>` and `decoder.<madebyollin key>`."""

    def __init__(self, latent_channels: int = 4, encoder: bool = True, decoder: bool = True):
        super().__init__()
        self.latent_channels = latent_channels
        self.encoder = tiny_encoder(latent_channels) if encoder else None
        self.decoder = tiny_decoder(latent_channels) if decoder else None

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Model-space latents -> image in about [-1, 1]."""
        if self.decoder is None:
            raise ValueError("this tiny autoencoder has no decoder")
        return self.decoder(latents).mul(2).sub(1)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Image in [-1, 1] -> model-space latents."""
        if self.encoder is None:
            raise ValueError("this tiny autoencoder has no encoder")
        return self.encoder(image.add(1).div(2))
