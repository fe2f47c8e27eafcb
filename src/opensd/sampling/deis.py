"""DEIS (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential Integrator"), the
tAB variant ComfyUI's "deis" runs, over `denoise(x, sigma)`.

A linear multistep method on the probability-flow ODE dx/dsigma = d = (x - denoised) / sigma: the
last `max_order` slopes are interpolated by a polynomial in the VP time tau(sigma) and integrated
exactly over the step,

    x_next = x + sum_j C_j d_{i-j},   C_j = integral from sigma_i to sigma_next of L_j(tau(sigma)) dsigma,

where L_j is the Lagrange basis polynomial through tau_{i-k} that is 1 at tau_{i-j}. tau is the
time of the VP-SDE fitted (as in EDM/DEIS) to sigma 0.002 at tau 1e-3 and sigma 80 at tau 1:
sigma(tau)^2 = exp(beta_d tau^2 / 2 + beta_min tau) - 1. The first steps use what history there is
(Euler first); a step to sigma 0 is Euler. ComfyUI integrates the same coefficients over tau with a
10000-point sum; here the integral is over sigma by Gauss-Legendre (smooth there, ~exact), so the
two differ by ComfyUI's quadrature error (about 1e-4 of a coefficient).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import InvalidArgument

_EPS_S, _SIGMA_MIN, _SIGMA_MAX = 1e-3, 0.002, 80.0
_BETA_D = 2 * (math.log(_SIGMA_MIN ** 2 + 1) / _EPS_S - math.log(_SIGMA_MAX ** 2 + 1)) / (_EPS_S - 1)
_BETA_MIN = math.log(_SIGMA_MAX ** 2 + 1) - 0.5 * _BETA_D
_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(24)


def vp_time(sigma):
    """DEIS's tau for sigma (numpy arrays or floats)."""
    return (np.sqrt(_BETA_MIN ** 2 + 2 * _BETA_D * np.log1p(np.square(sigma))) - _BETA_MIN) / _BETA_D


def deis_coefficients(sigmas: list[float], i: int, order: int) -> list[float]:
    """C_0..C_{order-1} of the step from sigmas[i] to sigmas[i + 1] (see the module docstring)."""
    a, b = sigmas[i], sigmas[i + 1]
    s = (b - a) / 2 * _NODES + (a + b) / 2
    tau = vp_time(s)
    knots = [float(vp_time(sigmas[i - k])) for k in range(order)]
    out = []
    for j in range(order):
        basis = np.ones_like(tau)
        for k in range(order):
            if k != j:
                basis *= (tau - knots[k]) / (knots[j] - knots[k])
        out.append(float(np.sum(_WEIGHTS * basis) * (b - a) / 2))
    return out


@torch.no_grad()
def sample_deis(denoise, x: torch.Tensor, sigmas: torch.Tensor, callback=None, *, noise_sampler=None,
                max_order=3) -> torch.Tensor:
    """DEIS (tAB) of order up to `max_order` (1..4); deterministic."""
    if max_order not in (1, 2, 3, 4):
        raise InvalidArgument(f"sampler_options.max_order: DEIS takes 1, 2, 3 or 4, not {max_order!r}")
    s = [float(v) for v in sigmas.tolist()]
    slopes: list[torch.Tensor] = []  # newest first
    for i in range(len(s) - 1):
        denoised = denoise(x, sigmas[i])
        slopes = [(x - denoised) / sigmas[i], *slopes][:max_order]
        order = 1 if s[i + 1] <= 0 else len(slopes)
        if order == 1:
            x = x + (sigmas[i + 1] - sigmas[i]) * slopes[0]
        else:
            x = x + sum(c * d for c, d in zip(deis_coefficients(s, i, order), slopes))
        if callback is not None:
            callback(i, x, denoised)
    return x
