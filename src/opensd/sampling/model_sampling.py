"""How a model with a discrete training schedule turns sigmas into network timesteps and network
outputs into denoised latents (ComfyUI's "model_sampling" object), and how noise enters its latents.

* eps / v: the checkpoint's own parameterisations (sampling.denoiser.Denoiser);
* x0: the network predicts the clean latent directly;
* lcm: LCM's consistency parameterisation over its distilled schedule (every `skip`-th of the
  training timesteps), sigmas mapped to the nearest of those timesteps and the output blended as
  c_out * x0 + c_skip * x with sigma_data 0.5 and the timestep scaled by 10.

Rectified-flow models have the same interface in flow.FlowSampling.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import InvalidArgument
from .denoiser import Denoiser, moved_like
from .samplers import get_sampler
from .schedule_options import rescale_zero_terminal_snr
from .schedules import DiscreteSchedule


@dataclass(frozen=True, eq=False)
class ModelSampling:
    schedule: DiscreteSchedule   # the sigmas the schedulers (KSampler, BasicScheduler...) are built from
    prediction: str = "eps"      # "eps", "v", "x0" or "lcm"
    skip: int = 1                # the distilled schedule's stride over the model's timesteps (LCM: 20)
    zsnr: bool = False           # the schedule was rescaled to zero terminal SNR (saved checkpoints say so)

    @property
    def sigma_max(self) -> float:
        return self.schedule.sigma_max

    @property
    def sigma_min(self) -> float:
        return self.schedule.sigma_min

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The network's timestep for sigma: interpolated in log sigma, or LCM's nearest distilled one."""
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

    def noise_scaling(self, sigma, noise: torch.Tensor, latent: torch.Tensor, max_denoise: bool = False) -> torch.Tensor:
        """The noisy latent at `sigma`: latent + sigma * noise. With `max_denoise` (sampling starts at
        the schedule's largest sigma) the noise is scaled by sqrt(1 + sigma^2), ComfyUI's rule."""
        scale = math.sqrt(1.0 + float(sigma) ** 2) if max_denoise else sigma
        return noise * scale + latent

    def inverse_noise_scaling(self, sigma, latent: torch.Tensor) -> torch.Tensor:
        """The sampler's result as a latent (variance-exploding latents need no change)."""
        return latent

    def sampler(self, name: str):
        """The sampler `name`: they are written for these latents as they are."""
        return get_sampler(name)

    def denoise(self, unet_fn, x: torch.Tensor, sigma: torch.Tensor, **cond) -> torch.Tensor:
        """denoised = D(x, sigma) for a batch x at one sigma; unet_fn(x_in, t, **cond) -> output."""
        if self.prediction in ("eps", "v"):
            return Denoiser(unet_fn, _Timesteps(self.timestep), self.prediction)(x, sigma, **cond)
        s = moved_like(sigma.reshape(-1)[:1], x)
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


TIMES = {  # the network's time for sigma, and back: ComfyUI's ModelSamplingContinuousEDM / ...V
    "edm": (lambda s: 0.25 * s.log(), lambda t: (t / 0.25).exp()),
    "v": (lambda s: s.atan() / math.pi * 2, lambda t: (t * math.pi / 2).tan()),
}


class ContinuousSchedule(DiscreteSchedule):
    """A continuous-time model's table: 1000 sigmas evenly spaced in log sigma from sigma_min to
    sigma_max (what the simple, beta and karras schedules read), while the index t in [0, 999]
    maps linearly onto the model's own time between its values at those ends (what normal and
    sgm_uniform space evenly, as ComfyUI's do in the model's time)."""

    def __init__(self, sigma_min: float, sigma_max: float, time: str):
        self.sigmas = torch.linspace(math.log(sigma_min), math.log(sigma_max), 1000).exp()
        self.log_sigmas = self.sigmas.log()
        self.time, self.sigma_of = TIMES[time]
        self.t0, self.t1 = (float(self.time(self.sigmas[i].double())) for i in (0, -1))

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        return (self.time(sigma.double()) - self.t0) / (self.t1 - self.t0) * 999.0

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma_of(self.t0 + (self.t1 - self.t0) * t.double() / 999.0).float()


@dataclass(frozen=True, eq=False)
class ContinuousSampling(ModelSampling):
    """A model trained on continuous sigmas (ComfyUI's ModelSamplingContinuousEDM / V): the network
    gets its own time for sigma (schedule.time) and inputs scaled by 1 / sqrt(sigma^2 + sigma_data^2);
    its output is eps, v or EDM's F (c_skip x + c_out F) with that sigma_data."""
    schedule: ContinuousSchedule
    sigma_data: float = 1.0

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.schedule.time(sigma.double()).float()

    def sigma_at(self, timestep: float) -> float:
        return float(self.schedule.sigma_of(torch.tensor(timestep, dtype=torch.float64)))

    def percent_to_sigma(self, percent: float) -> float:
        """ComfyUI's continuous rule: log-linear from sigma_max at 0 to sigma_min at 1 (then zero)."""
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        lo = math.log(self.sigma_min)
        return math.exp((math.log(self.sigma_max) - lo) * (1.0 - percent) + lo)

    def denoise(self, unet_fn, x: torch.Tensor, sigma: torch.Tensor, **cond) -> torch.Tensor:
        s = moved_like(sigma.reshape(-1)[:1], x)
        sd2 = self.sigma_data ** 2
        out = unet_fn(x / (s * s + sd2).sqrt(), self.timestep(s).expand(x.shape[0]).to(x), **cond).to(x.dtype)
        if self.prediction == "eps":
            return x - out * s
        skip = x * sd2 / (s * s + sd2)
        scaled = out * s * self.sigma_data / (s * s + sd2).sqrt()
        return skip - scaled if self.prediction == "v" else skip + scaled  # "edm": F added


def zero_terminal_snr(sigmas: torch.Tensor) -> torch.Tensor:
    """Sigmas of a schedule rescaled to zero terminal SNR (the last one large but finite)."""
    ab = rescale_zero_terminal_snr(1 / (sigmas.double() ** 2 + 1))
    return ((1 - ab) / ab).sqrt()


def continuous_sampling(time: str, prediction: str, sigma_min: float, sigma_max: float,
                        sigma_data: float = 1.0) -> ContinuousSampling:
    """time "edm" (0.25 log sigma) or "v" (atan(sigma) 2 / pi); prediction "eps", "v" or "edm"."""
    if sigma_min <= 0:
        raise InvalidArgument(f"sigma_min: must be above 0, not {sigma_min}")
    if sigma_min >= sigma_max:
        raise InvalidArgument(f"sigma_min: {sigma_min} must be below sigma_max {sigma_max}")
    return ContinuousSampling(ContinuousSchedule(sigma_min, sigma_max, time), prediction, sigma_data=sigma_data)
