"""TCD (Zheng et al. 2024, "Trajectory Consistency Distillation"): the sampler of TCD-distilled
models, as ComfyUI's "tcd" runs it, over `denoise(x, sigma)`.

Each step predicts the clean latents x0 and the noise eps, moves to an intermediate timestep
s = floor((1 - eta) * t_next) on the model's discrete schedule (t_next: the timestep nearest the
next sigma, in log sigma), and adds fresh noise from sigma_s up to the next sigma. eta ("gamma" in
the paper) 0 is deterministic, 1 jumps to x0 every step (LCM-like). The last step lands on
timestep 0, so the result keeps sigma_min's sliver of eps and the VP scale sqrt(alpha_0), as in
ComfyUI. It needs the model's schedule (`model_schedule`, a DiscreteSchedule; the pipeline passes
its own; None: SD's scaled-linear schedule).
"""
from __future__ import annotations

import math

import torch

from .schedules import DiscreteSchedule, scaled_linear_alphas_cumprod


def intermediate_sigmas(model_schedule: DiscreteSchedule, sigmas: torch.Tensor, eta: float) -> list[float]:
    """sigma_s for each step's end: the schedule's sigma at floor((1 - eta) * t), timestep 0 last."""
    log_sigmas = model_schedule.log_sigmas.double()
    out = []
    for sigma in sigmas.tolist()[1:]:
        t = int((log_sigmas - math.log(sigma)).abs().argmin()) if sigma > 0 else 0
        # in float32, as ComfyUI multiplies its timestep tensor
        scaled = torch.tensor(1 - eta, dtype=torch.float32) * torch.tensor(t, dtype=torch.float32)
        out.append(float(model_schedule.sigmas[math.floor(float(scaled))]))
    out[-1] = float(model_schedule.sigmas[0])
    return out


@torch.no_grad()
def sample_tcd(denoise, x: torch.Tensor, sigmas: torch.Tensor, callback=None, *, noise_sampler=None,
               model_schedule: DiscreteSchedule | None = None, eta=0.3) -> torch.Tensor:
    """TCD with ComfyUI's default eta 0.3."""
    schedule = model_schedule if model_schedule is not None else DiscreteSchedule(scaled_linear_alphas_cumprod())
    noise = noise_sampler if noise_sampler is not None else (lambda sigma, sigma_next: torch.randn_like(x))
    targets = intermediate_sigmas(schedule, sigmas, eta)
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[i])
        sigma_s, sigma_next = targets[i], float(sigmas[i + 1])
        x = denoised + sigma_s * (x - denoised) / sigmas[i]  # x0 + sigma_s * eps, in sigma (VE) terms
        if eta > 0 and sigma_next > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * max(sigma_next ** 2 - sigma_s ** 2, 0.0) ** 0.5
        else:  # ComfyUI keeps the VP-scaled point, rescaled to the next sigma
            x = x * math.sqrt((1 + sigma_next ** 2) / (1 + sigma_s ** 2))
        if callback is not None:
            callback(i, x, denoised)
    return x
