"""Step caching of the DeepCache kind (Ma et al., 2023), opt-in: between adjacent sampling steps a
UNet's deep features change little, so on most calls only its shallowest `depth` input and output
blocks run, on top of the deep features kept from the last full call.

A full call happens every `interval` calls, and whenever the cache cannot be trusted: a new
sampling run (the timestep does not fall: a new image or a hires pass), another input shape or
context, ControlNet residuals, or gradients. The quality cost is measured in bench/deep_cache.py.
"""
from __future__ import annotations

import torch

from .unet import UNetModel, embed


class DeepCache:
    def __init__(self, unet: UNetModel, interval: int = 3, depth: int = 1):
        if interval < 1 or not 1 <= depth < len(unet.output_blocks):
            raise ValueError(f"deep cache: interval {interval} must be >= 1, depth {depth} within the UNet's blocks")
        self.unet, self.interval, self.depth = unet, interval, depth
        self.calls = 0
        self.deep: torch.Tensor | None = None   # input of output_blocks[-depth] at the last full call
        self.stamp: tuple | None = None         # (shapes, context, last timestep) the cache belongs to
        boundary = unet.output_blocks[len(unet.output_blocks) - depth - 1]
        boundary.register_forward_hook(self._keep)
        self._recording = False

    def _keep(self, _module, _args, out):
        if self._recording:
            self.deep = out

    def forward(self, x, timesteps, context, y=None, control=None):
        stamp = (x.shape, context.data_ptr(), context.shape)
        t = float(timesteps.max())
        reusable = (self.deep is not None and control is None and not torch.is_grad_enabled()
                    and self.stamp is not None and self.stamp[0] == stamp and t < self.stamp[1])
        self.calls = self.calls + 1 if reusable else 0
        self.stamp = (stamp, t)
        if not reusable or self.calls % self.interval == 0:
            self.calls = 0
            self._recording = True
            try:
                return UNetModel.forward(self.unet, x, timesteps, context, y, control)
            finally:
                self._recording = False
        return self._shallow(x, timesteps, context, y)

    def _shallow(self, x, timesteps, context, y):
        unet = self.unet
        dtype = unet.time_embed[0].weight.dtype
        emb = embed(unet, unet.config, timesteps, y, dtype)
        h, context = x.to(dtype), context.to(dtype)
        skips = []
        for block in unet.input_blocks[:self.depth]:
            h = block(h, emb, context)
            skips.append(h)
        h = self.deep
        for block in unet.output_blocks[len(unet.output_blocks) - self.depth:]:
            h = torch.cat([h, skips.pop()], dim=1)
            h = block(h, emb, context, skips[-1].shape[-2:] if skips else None)
        return unet.out(h)


def enable_deep_cache(unet: UNetModel, interval: int = 3, depth: int = 1) -> DeepCache:
    """Route `unet`'s calls through a DeepCache (its `forward` is replaced on this instance)."""
    cache = DeepCache(unet, interval, depth)
    unet.forward = cache.forward
    return cache


def deep_cache_of(unet) -> DeepCache | None:
    """The DeepCache that `enable_deep_cache` routed `unet`'s calls through, if any."""
    owner = getattr(unet.forward, "__self__", None)
    return owner if isinstance(owner, DeepCache) else None
