"""Noise schedules: the model's discrete training schedule and the sigma sequences samplers walk."""
from __future__ import annotations

import torch


def scaled_linear_alphas_cumprod(steps: int = 1000, beta_start: float = 0.00085,
                                 beta_end: float = 0.012) -> torch.Tensor:
    """The schedule every SD 1.x/2.x/XL model was trained with (LDM's "linear" = scaled linear)."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


class DiscreteSchedule:
    """Maps between continuous sigma and the discrete timestep the UNet was trained on.

    Interpolation is linear in log-sigma, as k-diffusion's CompVis wrapper does, so samplers may
    ask for any sigma in range.
    """

    def __init__(self, alphas_cumprod: torch.Tensor):
        ac = alphas_cumprod.to(torch.float64)
        self.sigmas = ((1 - ac) / ac).sqrt().float()
        self.log_sigmas = self.sigmas.log()

    @property
    def sigma_min(self) -> float:
        return self.sigmas[0].item()

    @property
    def sigma_max(self) -> float:
        return self.sigmas[-1].item()

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        log_sigma = sigma.float().log().to(self.log_sigmas.device)
        high = torch.searchsorted(self.log_sigmas, log_sigma).clamp(1, len(self.log_sigmas) - 1)
        low = high - 1
        w = (log_sigma - self.log_sigmas[low]) / (self.log_sigmas[high] - self.log_sigmas[low])
        w = w.clamp(0, 1)
        return (low + w).to(sigma.device)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = t.float().to(self.log_sigmas.device)
        low = t.floor().long().clamp(0, len(self.log_sigmas) - 1)
        high = t.ceil().long().clamp(0, len(self.log_sigmas) - 1)
        w = t - low
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()


def normal_sigmas(schedule: DiscreteSchedule, steps: int) -> torch.Tensor:
    """A1111's "Automatic"/ComfyUI's "normal": timesteps evenly spaced from the last to the first,
    then a final 0."""
    t = torch.linspace(len(schedule.sigmas) - 1, 0, steps)
    return torch.cat([schedule.t_to_sigma(t), torch.zeros(1)])
