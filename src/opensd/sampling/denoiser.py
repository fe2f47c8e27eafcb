"""Wrap an eps- or v-predicting UNet as `denoised = denoise(x, sigma)`, the contract every sampler uses."""
from __future__ import annotations

from typing import Callable

import torch

from .schedules import DiscreteSchedule

# unet_fn(x_scaled, t, **conditioning) -> model output (eps or v)
UNetFn = Callable[..., torch.Tensor]


def moved_like(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`v` (a sampler's sigma or timestep, kept on the CPU) in x's dtype on x's device. The copy does
    not wait: a plain .to() from the CPU synchronises the GPU stream, and a wait every step keeps the
    CPU from queueing the next step's work while the GPU runs (measured: 81-92 it/s sampling
    against 147 for the compiled SD 1.5 UNet alone on an H200)."""
    return v.to(x.dtype).to(x.device, non_blocking=True)


class Denoiser:
    def __init__(self, unet_fn: UNetFn, schedule: DiscreteSchedule, prediction: str = "eps"):
        if prediction not in ("eps", "v"):
            raise ValueError(f"prediction must be 'eps' or 'v', not {prediction!r}")
        self.unet_fn = unet_fn
        self.schedule = schedule
        self.prediction = prediction

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **cond) -> torch.Tensor:
        sigma = sigma.reshape(-1).expand(x.shape[0]).to(x.dtype)
        t = self.schedule.sigma_to_t(sigma)  # where the sampler keeps sigma (the CPU): no device round trip
        sigma, t = moved_like(sigma, x), t.to(x.device, non_blocking=True)
        s = sigma[:, None, None, None]
        c_in = 1 / (s ** 2 + 1).sqrt()
        out = self.unet_fn(x * c_in, t, **cond).to(x.dtype)
        if self.prediction == "eps":
            return x - s * out
        # v-prediction (Salimans & Ho), sigma_data = 1.
        return x / (s ** 2 + 1) - out * s / (s ** 2 + 1).sqrt()
