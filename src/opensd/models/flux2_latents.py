"""FLUX.2's latent space: the 32-channel VAE latent folded into 2x2 patches (128 channels at 1/16 of
the image) and normalised per channel by statistics stored in the VAE file.

The FLUX.2 VAE carries a BatchNorm2d over the 128 patch channels (affine-free, eps 1e-4) that is
never trained at inference: only its running mean and variance are used, as a fixed
standardisation, the way diffusers' Flux2KleinPipeline and ComfyUI (whose FLUX.2 VAE returns the
normalised 128-channel latent from encode) use them:

    model latent = (patchify(vae latent) - running_mean) / sqrt(running_var + eps)
    vae latent   = unpatchify(model latent * sqrt(running_var + eps) + running_mean)

Patch channel order: channel c of the VAE latent at offset (dy, dx) of a 2x2 patch becomes channel
4c + 2dy + dx, the same order Flux.1's `pack` gives its tokens, so `tokens(patchify(z))` equals
Flux.1's pack of z.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import InvalidArgument

PATCH = 2


def patchify(z: torch.Tensor) -> torch.Tensor:
    """(B, C, 2h, 2w) -> (B, 4C, h, w): each 2x2 patch's values as channels 4c + 2dy + dx."""
    b, c, height, width = z.shape
    if height % PATCH or width % PATCH:
        raise InvalidArgument(f"a latent of {height}x{width} cannot be cut into 2x2 patches (both must be even: the image side a multiple of 16)")
    z = z.view(b, c, height // PATCH, PATCH, width // PATCH, PATCH).permute(0, 1, 3, 5, 2, 4)
    return z.reshape(b, c * PATCH * PATCH, height // PATCH, width // PATCH)


def unpatchify(z: torch.Tensor) -> torch.Tensor:
    """The inverse of `patchify`: (B, 4C, h, w) -> (B, C, 2h, 2w)."""
    b, c4, height, width = z.shape
    if c4 % (PATCH * PATCH):
        raise InvalidArgument(f"{c4} channels are not whole 2x2 patches")
    z = z.view(b, c4 // (PATCH * PATCH), PATCH, PATCH, height, width).permute(0, 1, 4, 2, 5, 3)
    return z.reshape(b, c4 // (PATCH * PATCH), height * PATCH, width * PATCH)


def tokens(z: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h * w, C), positions row by row (the transformer's sequence)."""
    b, c, height, width = z.shape
    return z.reshape(b, c, height * width).transpose(1, 2)


def from_tokens(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of `tokens`: (B, height * width, C) -> (B, C, height, width)."""
    b, n, c = x.shape
    if n != height * width:
        raise InvalidArgument(f"{n} tokens do not fill a {height}x{width} grid")
    return x.transpose(1, 2).reshape(b, c, height, width)


class LatentBatchNorm(nn.Module):
    """The FLUX.2 VAE's `bn`: running statistics of the 128 patch channels, used as a fixed
    normalisation (see the module). Buffers `running_mean` and `running_var`, as in the files;
    BatchNorm2d's `num_batches_tracked` counter is dropped when a file is read."""

    def __init__(self, channels: int, eps: float = 1e-4):
        super().__init__()
        self.eps = eps
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def _stats(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if z.shape[1] != self.running_mean.shape[0]:
            raise InvalidArgument(f"a latent of {z.shape[1]} channels; the statistics have {self.running_mean.shape[0]}")
        # std in the buffers' precision (fp32 when loaded so), then cast like diffusers does
        mean = self.running_mean.view(1, -1, 1, 1)
        std = torch.sqrt(self.running_var.view(1, -1, 1, 1) + self.eps)
        return mean.to(z.device, z.dtype), std.to(z.device, z.dtype)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """VAE latent (B, 32, 2h, 2w) -> the model's latent (B, 128, h, w)."""
        z = patchify(z)
        mean, std = self._stats(z)
        return (z - mean) / std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """The model's latent (B, 128, h, w) -> the VAE latent (B, 32, 2h, 2w) it decodes."""
        mean, std = self._stats(z)
        return unpatchify(z * std + mean)
