"""PLMS: the pseudo linear multistep sampler of Liu et al. (2022, "Pseudo Numerical Methods for
Diffusion Models on Manifolds"), LDM's `plms.py` and A1111's "PLMS", over `denoise(x, sigma)`.

Each step moves x along DDIM's transfer with a combined noise estimate e: in sigma space that is
x_next = x + (sigma_next - sigma) * e. e is the Adams-Bashforth combination of this step's
eps = (x - denoised) / sigma and up to three earlier ones (orders 2, 3, 4 as history allows), with
the fixed coefficients of equal steps (the "pseudo" part: the schedule's spacing is not taken into
account, so use DDIM's uniform timesteps, its default). The first step has no history and takes
a pseudo improved Euler step instead: the mean of eps here and eps at the end of the Euler step,
one extra model call. This is diffusers' PNDMScheduler with skip_prk_steps and set_alpha_to_one;
A1111 (1.6+) runs the same updates but stops one step early at timestep 1's noise level, where we
finish at sigma 0 as our DDIM does.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

# Adams-Bashforth weights of (this eps, the previous one, ...), by how many earlier eps there are.
_AB = {1: (3 / 2, -1 / 2), 2: (23 / 12, -16 / 12, 5 / 12), 3: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


@torch.no_grad()
def sample_plms(denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
                sigmas: torch.Tensor, callback=None, *, noise_sampler=None) -> torch.Tensor:
    """PLMS; deterministic (`noise_sampler` is never called). The samplers' contract: see samplers.py."""
    history: list[torch.Tensor] = []  # earlier eps, newest first
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, sigma)
        eps = (x - denoised) / sigma
        if history:
            combined = sum(w * e for w, e in zip(_AB[len(history)], [eps, *history]))
        elif sigma_next > 0:
            x_euler = x + (sigma_next - sigma) * eps
            combined = (eps + (x_euler - denoise(x_euler, sigma_next)) / sigma_next) / 2
        else:
            combined = eps
        x = x + (sigma_next - sigma) * combined
        history = [eps, *history][:3]
        if callback is not None:
            callback(i, x, denoised)
    return x
