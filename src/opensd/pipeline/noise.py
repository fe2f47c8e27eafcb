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
    """

    def __init__(self, seed: int, shape: tuple[int, ...], device: torch.device,
                 subseed: int | None = None, subseed_strength: float = 0.0, *, seed_delta: int = 0,
                 on_device: bool = False):
        self.shape = shape
        self.device = device
        self.rng_device = torch.device(device) if on_device else torch.device("cpu")
        self.generator = torch.Generator(self.rng_device).manual_seed(seed)
        initial = self._draw(self.generator)
        if subseed is not None and subseed_strength > 0:
            other = self._draw(torch.Generator(self.rng_device).manual_seed(subseed))
            initial = slerp(subseed_strength, initial, other)
        if seed_delta:
            self.generator = torch.Generator(self.rng_device).manual_seed(seed + seed_delta)
        self.initial = initial.to(device)

    def _draw(self, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(self.shape, generator=generator, device=self.rng_device)

    def __call__(self, sigma=None, sigma_next=None) -> torch.Tensor:
        """A fresh standard-normal draw (the samplers' noise_sampler contract)."""
        return self._draw(self.generator).to(self.device)


def slerp(t: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between two noise tensors, keeping a Gaussian's norm statistics."""
    lo, hi = low.flatten(), high.flatten()
    cos = torch.dot(lo / lo.norm(), hi / hi.norm()).clamp(-1, 1)
    omega = torch.acos(cos)
    if omega.abs() < 1e-6:  # nearly parallel: plain interpolation is exact enough
        return (1 - t) * low + t * high
    so = torch.sin(omega)
    return (torch.sin((1 - t) * omega) / so) * low + (torch.sin(t * omega) / so) * high
