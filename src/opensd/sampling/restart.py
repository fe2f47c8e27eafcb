"""Restart sampling (Xu et al. 2023, "Restart Sampling for Improving Generative Processes"), as
A1111's "Restart" runs it, over `denoise(x, sigma)`.

Heun steps along the probability-flow ODE, except that on reaching sigma ~0.1 the sampler jumps
back up to sigma ~2 by adding fresh noise and integrates that stretch again (the "restart"), which
contracts the errors accumulated so far. A1111's automatic choice: from 20 steps on, one restart
of 9 steps (from 36 steps: two restarts of steps // 4), with the main schedule shortened so the
total stays `steps` Heun steps, and that main schedule rebuilt as Karras between the given sigmas'
ends. Below 20 steps it is plain Heun on the given sigmas.
"""
from __future__ import annotations

import torch

from .schedules import karras


def _nearest(sigmas: torch.Tensor, value: float) -> int:
    return int(torch.argmin((sigmas - value).abs()))


def restart_plan(sigmas: torch.Tensor) -> list[tuple[float, float]]:
    """The (sigma, sigma_next) pairs of every Heun step, restarts included, in order."""
    steps = len(sigmas) - 1
    restarts: dict[float, tuple[int, int, float]] = {}
    if steps >= 20:
        restart_steps, times = (steps // 4, 2) if steps >= 36 else (9, 1)
        sigmas = karras(float(sigmas[-2]), float(sigmas[0]), steps - restart_steps * times).to(sigmas)
        restarts = {0.1: (restart_steps + 1, times, 2.0)}
    at = {_nearest(sigmas, key): value for key, value in restarts.items()}
    pairs = []
    for i in range(len(sigmas) - 1):
        pairs.append((float(sigmas[i]), float(sigmas[i + 1])))
        if i + 1 in at:
            count, times, top = at[i + 1]
            low, high = i + 1, _nearest(sigmas, top)
            if high < low:
                again = karras(float(sigmas[low]), float(sigmas[high]), count)[:-1].tolist()
                pairs += list(zip(again[:-1], again[1:])) * times
    return pairs


@torch.no_grad()
def sample_restart(denoise, x: torch.Tensor, sigmas: torch.Tensor, callback=None, *, noise_sampler=None,
                   s_noise=1.0) -> torch.Tensor:
    """Restart; one callback per Heun step (the plan keeps their number at len(sigmas) - 1)."""
    noise = noise_sampler if noise_sampler is not None else (lambda sigma, sigma_next: torch.randn_like(x))
    last = None
    for i, (sigma, sigma_next) in enumerate(restart_plan(sigmas)):
        s, s_next = torch.tensor(sigma, dtype=sigmas.dtype), torch.tensor(sigma_next, dtype=sigmas.dtype)
        if last is not None and last < sigma:  # the restart: noise back up from `last` to `sigma`
            x = x + noise(torch.tensor(last), s) * s_noise * (sigma ** 2 - last ** 2) ** 0.5
        denoised = denoise(x, s)
        d = (x - denoised) / s
        if sigma_next == 0:
            x = x + d * (s_next - s)
        else:
            x_2 = x + d * (s_next - s)
            x = x + (d + (x_2 - denoise(x_2, s_next)) / s_next) / 2 * (s_next - s)
        last = sigma_next
        if callback is not None:
            callback(i, x, denoised)
    return x
