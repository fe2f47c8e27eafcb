"""SEEDS (Gonzalez et al. 2023, "SEEDS: Exponential SDE Solvers for Fast High-Quality Sampling from
Diffusion Models", arXiv:2305.14267): ComfyUI's seeds_2 and seeds_3, data prediction in
lambda = -log sigma (sigma space, so alpha = 1; flow models run them through flow.py's VE space).

Each stage is an exponential-integrator step with the SDE's decay: over a fraction c of the step
h = log(sigma / sigma_next), with h_eta = (1 + eta) h,

    x_c = (sigma_c / sigma) e^(-eta c h) x + (1 - e^(-c h_eta)) D + (correction from earlier stages)

and noise sigma_c sqrt(1 - e^(-2 eta c h)) z. The stages' noises are increments of one path: the
noise carried to the next stage decays by e^(-eta dc h) and gains fresh noise of the missing std.

* seeds_2: one intermediate stage at c = r; "phi_1" combines the estimates as DPM-Solver++(2S)
  (D + (D2 - D) / (2 r)), "phi_2" with the phi_2 weights (r = 1 is exponential Heun);
* seeds_3: stages at r_1 and r_2, the last two with phi_2 weights (third order at eta = 0).
"""
from __future__ import annotations

import torch

from ..errors import InvalidArgument
from .steps import noise_fn


def _h_phi_2(z):
    """z phi_2(z) = (e^z - 1 - z) / z."""
    return (torch.expm1(z) - z) / z


class _Stages:
    """The shared part of one SEEDS step from sigma: where stage c lands and its noise."""

    def __init__(self, x, sigma, sigma_next, eta, s_noise, noise):
        self.x, self.sigma = x, sigma
        self.h = (sigma / sigma_next).log()
        self.h_eta = self.h * (eta + 1)
        self.eta, self.s_noise, self.noise = eta, s_noise, noise
        self.stochastic = eta > 0 and s_noise > 0
        self.c, self.sigma_c, self.path = 0.0, sigma, None  # the last stage reached and its noise

    def sigma_at(self, c):
        return self.sigma * torch.exp(-c * self.h)

    def decayed(self, c):
        """(sigma_c / sigma) e^(-eta c h) x: the part of x that survives to stage c."""
        return self.sigma_at(c) / self.sigma * torch.exp(-c * self.h * self.eta) * self.x

    def weight(self, c):
        """1 - e^(-c h_eta): the estimate's weight at stage c, first order."""
        return -torch.expm1(-c * self.h_eta)

    def add_noise(self, x_c, c):
        if not self.stochastic:
            return x_c
        sigma_c = self.sigma_at(c)
        seg = (self.c - c) * self.h * self.eta  # <= 0
        fresh = (-torch.expm1(2 * seg)).sqrt() * self.noise(self.sigma_c, sigma_c)
        self.path = fresh if self.path is None else self.path * seg.exp() + fresh
        self.c, self.sigma_c = c, sigma_c
        return x_c + self.path * sigma_c * self.s_noise


def _run(denoise, x, sigmas, callback, noise_sampler, eta, s_noise, step):
    """The loop both share: step(stages, denoised) -> x at the next sigma; a step to 0 is the estimate."""
    noise = noise_fn(noise_sampler, x)
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            x = step(_Stages(x, sigmas[i], sigmas[i + 1], eta, s_noise, noise), denoised)
        if callback is not None:
            callback(i, x, denoised)
    return x


@torch.no_grad()
def sample_seeds_2(denoise, x: torch.Tensor, sigmas: torch.Tensor, callback=None, *, noise_sampler=None,
                   eta=1.0, s_noise=1.0, r=0.5, solver_type="phi_1") -> torch.Tensor:
    """SEEDS-2: two evaluations per step; eta=0, phi_1 is DPM-Solver++(2S) with its point at r."""
    if solver_type not in ("phi_1", "phi_2"):
        raise InvalidArgument(f"sampler_options.solver_type: SEEDS-2 takes phi_1 or phi_2, not {solver_type!r}")

    def step(st, denoised):
        x_2 = st.add_noise(st.decayed(r) + st.weight(r) * denoised, r)
        denoised_2 = denoise(x_2, st.sigma_at(r))
        if solver_type == "phi_1":
            x = st.decayed(1.0) + st.weight(1.0) * torch.lerp(denoised, denoised_2, 1 / (2 * r))
        else:
            b2 = -_h_phi_2(-st.h_eta) / r
            x = st.decayed(1.0) + (st.weight(1.0) - b2) * denoised + b2 * denoised_2
        return st.add_noise(x, 1.0)

    return _run(denoise, x, sigmas, callback, noise_sampler, eta, s_noise, step)


@torch.no_grad()
def sample_seeds_3(denoise, x: torch.Tensor, sigmas: torch.Tensor, callback=None, *, noise_sampler=None,
                   eta=1.0, s_noise=1.0, r_1=1 / 3, r_2=2 / 3) -> torch.Tensor:
    """SEEDS-3: three evaluations per step, at 0, r_1 and r_2 of it."""

    def step(st, denoised):
        x_2 = st.add_noise(st.decayed(r_1) + st.weight(r_1) * denoised, r_1)
        denoised_2 = denoise(x_2, st.sigma_at(r_1))
        a2 = -(r_2 / r_1) * _h_phi_2(-r_2 * st.h_eta)
        x_3 = st.add_noise(st.decayed(r_2) + (st.weight(r_2) - a2) * denoised + a2 * denoised_2, r_2)
        denoised_3 = denoise(x_3, st.sigma_at(r_2))
        b3 = -_h_phi_2(-st.h_eta) / r_2
        return st.add_noise(st.decayed(1.0) + (st.weight(1.0) - b3) * denoised + b3 * denoised_3, 1.0)

    return _run(denoise, x, sigmas, callback, noise_sampler, eta, s_noise, step)
