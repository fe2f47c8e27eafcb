"""How a MODEL turns sigmas into UNet timesteps and UNet outputs into denoised latents: ComfyUI's
"model_sampling" object, which ModelSamplingDiscrete (and CheckpointLoader's yaml) replace.

* eps / v: the checkpoint's own parameterisations (sampling.denoiser.Denoiser);
* x0: the UNet predicts the clean latent directly;
* lcm: LCM's consistency parameterisation over its distilled schedule of 50 of the 1000 training
  timesteps (every 20th, from 19), sigmas mapped to the nearest of those timesteps and the
  output blended as c_out * x0 + c_skip * x with sigma_data 0.5 and the timestep scaled by 10;
* zsnr: the schedule rescaled to zero terminal SNR (Lin et al. 2023), its last alpha_bar set to
  ComfyUI's 4.8973451890853435e-08 so the largest sigma stays finite.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..sampling.denoiser import Denoiser
from ..sampling.schedules import DiscreteSchedule

PREDICTIONS = ("eps", "v", "x0", "lcm")
LCM_STEPS = 50


@dataclass(frozen=True, eq=False)
class ModelSampling:
    schedule: DiscreteSchedule   # the sigmas the schedulers (KSampler, BasicScheduler...) are built from
    prediction: str = "eps"      # one of PREDICTIONS
    skip: int = 1                # the distilled schedule's stride over the model's timesteps (LCM: 20)

    @property
    def sigma_max(self) -> float:
        return self.schedule.sigma_max

    @property
    def sigma_min(self) -> float:
        return self.schedule.sigma_min

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The UNet's timestep for sigma: interpolated in log sigma, or LCM's nearest distilled one."""
        if self.skip == 1:
            return self.schedule.sigma_to_t(sigma)
        log = self.schedule.log_sigmas.to(sigma.device)
        nearest = (sigma.float().log().reshape(1, -1) - log[:, None]).abs().argmin(dim=0).reshape(sigma.shape)
        return (nearest * self.skip + (self.skip - 1)).float()

    def sigma_at(self, timestep: float) -> float:
        t = torch.tensor(timestep, dtype=torch.float32)
        if self.skip != 1:
            t = ((t - (self.skip - 1)) / self.skip).clamp(0, len(self.schedule.sigmas) - 1)
        return float(self.schedule.t_to_sigma(t))

    def percent_to_sigma(self, percent: float) -> float:
        """ComfyUI's rule: the sigma at timestep (1 - percent) * 999; no bound at 0, zero at 1."""
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return self.sigma_at((1.0 - percent) * 999.0)

    def denoise(self, unet_fn, x: torch.Tensor, sigma: torch.Tensor, **cond) -> torch.Tensor:
        """denoised = D(x, sigma) for a batch x at one sigma; unet_fn(x_in, t, **cond) -> output."""
        if self.prediction in ("eps", "v"):
            return Denoiser(unet_fn, _Timesteps(self.timestep), self.prediction)(x, sigma, **cond)
        s = sigma.reshape(-1)[:1].to(x)
        t = self.timestep(s).expand(x.shape[0])
        out = unet_fn(x / (s ** 2 + 1).sqrt(), t, **cond).to(x.dtype)
        if self.prediction == "x0":
            return out
        x0 = x - out * s
        scaled = t[:, None, None, None].to(x) * 10.0
        c_skip = 0.25 / (scaled ** 2 + 0.25)
        c_out = scaled / (scaled ** 2 + 0.25).sqrt()
        return c_out * x0 + c_skip * x


class _Timesteps:
    """The sigma -> timestep map Denoiser asks its schedule for."""

    def __init__(self, timestep):
        self.sigma_to_t = timestep


def default_sampling(pipe) -> ModelSampling:
    return ModelSampling(pipe.schedule, pipe.config.prediction)


def zero_terminal_snr(sigmas: torch.Tensor) -> torch.Tensor:
    ab_sqrt = (1 / (sigmas.double() ** 2 + 1)).sqrt()
    first, last = ab_sqrt[0].clone(), ab_sqrt[-1].clone()
    ab_sqrt = (ab_sqrt - last) * first / (first - last)
    ab = ab_sqrt ** 2
    ab[-1] = 4.8973451890853435e-08
    return ((1 - ab) / ab).sqrt()


def model_sampling(base: DiscreteSchedule, sampling: str, zsnr: bool) -> ModelSampling:
    """ModelSamplingDiscrete's object for a model trained on `base` (its 1000 discrete sigmas)."""
    sigmas = base.sigmas.double()
    if zsnr:
        sigmas = zero_terminal_snr(sigmas)
    prediction = {"eps": "eps", "v_prediction": "v", "lcm": "lcm", "x0": "x0"}[sampling]
    skip = 1
    if prediction == "lcm":
        skip = len(sigmas) // LCM_STEPS
        sigmas = torch.stack([sigmas[len(sigmas) - 1 - i * skip] for i in range(LCM_STEPS)]).flip(0)
    return ModelSampling(DiscreteSchedule(1 / (sigmas ** 2 + 1)), prediction, skip)

