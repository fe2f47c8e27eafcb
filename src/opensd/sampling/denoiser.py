"""Wrap an eps- or v-predicting UNet as `denoised = denoise(x, sigma)`, the contract every sampler uses."""
from __future__ import annotations

from typing import Callable

import torch

from .schedules import DiscreteSchedule

# unet_fn(x_scaled, t, **conditioning) -> model output (eps or v)
UNetFn = Callable[..., torch.Tensor]


class Denoiser:
    def __init__(self, unet_fn: UNetFn, schedule: DiscreteSchedule, prediction: str = "eps"):
        if prediction not in ("eps", "v"):
            raise ValueError(f"prediction must be 'eps' or 'v', not {prediction!r}")
        self.unet_fn = unet_fn
        self.schedule = schedule
        self.prediction = prediction

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **cond) -> torch.Tensor:
        sigma = sigma.reshape(-1).expand(x.shape[0]).to(x)
        s = sigma[:, None, None, None]
        c_in = 1 / (s ** 2 + 1).sqrt()
        out = self.unet_fn(x * c_in, self.schedule.sigma_to_t(sigma), **cond).to(x.dtype)
        if self.prediction == "eps":
            return x - s * out
        # v-prediction (Salimans & Ho), sigma_data = 1.
        return x / (s ** 2 + 1) - out * s / (s ** 2 + 1).sqrt()
