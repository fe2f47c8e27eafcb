"""Seeded noise: drawn on the CPU per image so a seed means the same image on every device."""
from __future__ import annotations

import torch


class ImageNoise:
    """The noise stream of one image: its initial latent noise, then every per-step draw that
    ancestral/SDE samplers make, all from one CPU generator seeded with the image's seed.

    With a variation seed, the initial noise is spherically interpolated towards the variation
    seed's noise by `strength` (A1111's "Variation seed" / subseed). With `seed_delta` (A1111's
    "Eta noise seed delta", ENSD) the per-step draws come from a generator seeded with
    seed + seed_delta instead. `on_device`: draw on `device` rather than the CPU (A1111's
    randn_source "GPU"; the same seed then gives other noise on another kind of device).

    `seed_shape` (A1111's "Resize seed from width/height", as a latent shape): the initial noise
    (and the variation seed's) is drawn at that size, and its centre is pasted over the centre of
    noise drawn at `shape`, so a seed keeps its composition at another image size. The per-step
    draws continue after one draw at `shape`, as without it.
    """

    def __init__(self, seed: int, shape: tuple[int, ...], device: torch.device,
                 subseed: int | None = None, subseed_strength: float = 0.0, *, seed_delta: int = 0,
                 on_device: bool = False, seed_shape: tuple[int, ...] | None = None):
        self.shape = shape
        self.device = device
        self.rng_device = torch.device(device) if on_device else torch.device("cpu")
        self.generator = torch.Generator(self.rng_device).manual_seed(seed)
        initial = self._draw(self.generator)
        resized = seed_shape is not None and tuple(seed_shape) != tuple(shape)
        drawn = self._draw(torch.Generator(self.rng_device).manual_seed(seed), seed_shape) if resized else initial
        if subseed is not None and subseed_strength > 0:
            other = self._draw(torch.Generator(self.rng_device).manual_seed(subseed), seed_shape if resized else None)
            drawn = slerp(subseed_strength, drawn, other)
        initial = paste_centred(drawn, initial) if resized else drawn
        if seed_delta:
            self.generator = torch.Generator(self.rng_device).manual_seed(seed + seed_delta)
        self.initial = initial.to(device)

    def _draw(self, generator: torch.Generator, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        return torch.randn(shape or self.shape, generator=generator, device=self.rng_device)

    def __call__(self, sigma=None, sigma_next=None) -> torch.Tensor:
        """A fresh standard-normal draw (the samplers' noise_sampler contract). Drawn on the CPU (seeds
        give the same image everywhere) and copied without waiting for the device, as in denoiser.py."""
        return self._draw(self.generator).to(self.device, non_blocking=True)


def slerp(t: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between two (..., H, W) noise tensors as A1111's variation seed does
    it (modules/rng.py slerp on one image's (C, H, W) noise, normalising over its dim 1): every
    column of every channel, a vector along the height, on its own great circle."""
    lo, hi = low / low.norm(dim=-2, keepdim=True), high / high.norm(dim=-2, keepdim=True)
    cos = (lo * hi).sum(-2)
    if cos.mean() > 0.9995:  # nearly parallel (A1111's test); A1111 swaps the weights here, we do not
        return (1 - t) * low + t * high
    omega = torch.acos(cos.clamp(-1, 1))
    so = torch.sin(omega)
    return (torch.sin((1 - t) * omega) / so).unsqueeze(-2) * low + (torch.sin(t * omega) / so).unsqueeze(-2) * high


def paste_centred(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`target` with the overlap of `source` (both (..., H, W)) pasted centred, A1111's seed resize
    arithmetic: offsets are floor((target - source) / 2); where the source is larger by an odd
    amount, the pasted part is one row/column short of the target (that edge keeps its own noise)."""
    out = target.clone()
    spans = []
    for big, small in ((target.shape[-2], source.shape[-2]), (target.shape[-1], source.shape[-1])):
        d = (big - small) // 2
        n = small if d >= 0 else small + 2 * d
        spans.append((slice(max(d, 0), max(d, 0) + n), slice(max(-d, 0), max(-d, 0) + n)))
    (ty, sy), (tx, sx) = spans
    out[..., ty, tx] = source[..., sy, sx]
    return out
