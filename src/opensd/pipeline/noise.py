"""Seeded noise: drawn on the CPU per image so a seed means the same image on every device."""
from __future__ import annotations

import torch


class ImageNoise:
    """The noise stream of one image: its initial latent noise, then every per-step draw that
    ancestral/SDE samplers make, all from one CPU generator seeded with the image's seed.

    With a variation seed, the initial noise is spherically interpolated towards the variation
    seed's noise by `strength` (A1111's "Variation seed" / subseed).
    """

    def __init__(self, seed: int, shape: tuple[int, ...], device: torch.device,
                 subseed: int | None = None, subseed_strength: float = 0.0):
        self.shape = shape
        self.device = device
        self.generator = torch.Generator("cpu").manual_seed(seed)
        initial = torch.randn(shape, generator=self.generator)
        if subseed is not None and subseed_strength > 0:
            other = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(subseed))
            initial = slerp(subseed_strength, initial, other)
        self.initial = initial.to(device)

    def __call__(self, sigma=None, sigma_next=None) -> torch.Tensor:
        """A fresh standard-normal draw (the samplers' noise_sampler contract)."""
        return torch.randn(self.shape, generator=self.generator).to(self.device)


def slerp(t: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between two noise tensors, keeping a Gaussian's norm statistics."""
    lo, hi = low.flatten(), high.flatten()
    cos = torch.dot(lo / lo.norm(), hi / hi.norm()).clamp(-1, 1)
    omega = torch.acos(cos)
    if omega.abs() < 1e-6:  # nearly parallel: plain interpolation is exact enough
        return (1 - t) * low + t * high
    so = torch.sin(omega)
    return (torch.sin((1 - t) * omega) / so) * low + (torch.sin(t * omega) / so) * high
