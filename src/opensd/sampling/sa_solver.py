"""SA-Solver (Xue et al. 2023, "SA-Solver: Stochastic Adams Solver for Fast Sampling of Diffusion
Models", arXiv:2309.05019): ComfyUI's sa_solver and sa_solver_pece, data prediction in
lambda = -log sigma (sigma space, so alpha = 1; flow models run it through flow.py's VE space).

With noise strength tau the SDE's exact step from s to t = s + h is

    x_t = (sigma_t / sigma_s) e^(-tau^2 h) x_s + k * integral_s^t e^(k (l - t)) D(l) dl
          + sigma_t sqrt(1 - e^(-2 tau^2 h)) z,        k = 1 + tau^2,

and SA-Solver puts the Lagrange polynomial through the last estimates in place of D (Adams): the
predictor through the estimates up to s (`predictor_order` of them), the corrector, once the
estimate at t is in, through those up to t (`corrector_order`), reusing the predictor's noise.
PECE evaluates the model again on the corrected point. Orders drop while warming up and, on a
schedule ending in 0, over the last steps. tau is `eta` for sigmas between the model's sigmas at
`sde_start_percent` and `sde_end_percent` of the run (ComfyUI's percent_to_sigma), 0 elsewhere.
"""
from __future__ import annotations

import math

import torch

from ..errors import InvalidArgument
from .schedules import DiscreteSchedule, scaled_linear_alphas_cumprod
from .steps import noise_fn


def adams_weights(nodes: list[float], s: float, t: float, tau: float) -> list[float]:
    """w_j with sum_j w_j q(nodes[j]) = k integral_s^t e^(k (l - t)) q(l) dl for every polynomial q
    of degree < len(nodes), k = 1 + tau^2: the moments of the weight e^(k (l - t)) (by parts, in
    u = l - t) matched by the nodes' Vandermonde system."""
    k, h, n = 1 + tau ** 2, t - s, len(nodes)
    moments, prev = [], 0.0
    for p in range(n):  # m_p = k integral_{-h}^0 e^(k u) u^p du = [u^p e^(k u)]_{-h}^0 - (p / k) m_(p-1)
        prev = (1.0 if p == 0 else 0.0) - (-h) ** p * math.exp(-k * h) - p / k * prev
        moments.append(prev)
    u = torch.tensor([v - t for v in nodes], dtype=torch.float64)
    vander_t = torch.stack([u ** p for p in range(n)])  # row p: the nodes to the power p
    return torch.linalg.solve(vander_t, torch.tensor(moments, dtype=torch.float64)).tolist()


def simple_order_2_weights(nodes: list[float], s: float, t: float, tau: float, corrector: bool) -> list[float]:
    """The paper's simple order-2 weights (its Appendix D) for [older, newer] estimates: the corrector
    a trapezoid-like split with k h / 2 on the new one, the predictor an AB2-like extrapolation."""
    k, h = 1 + tau ** 2, t - s
    total = -math.expm1(-k * h)
    if corrector:
        return [total - k * h / 2, k * h / 2]
    older = k * h * h / 2 / (nodes[0] - s)
    return [older, total - older]


def _weights(lams, lo, hi, s, t, tau, simple_order_2, corrector):
    nodes = lams[lo:hi]
    if simple_order_2 and len(nodes) == 2:
        return simple_order_2_weights(nodes, s, t, tau, corrector)
    return adams_weights(nodes, s, t, tau)


def _percent_to_sigma(model_schedule, percent: float) -> float:
    """ComfyUI's percent_to_sigma for the model being sampled (a flow model's as its VE sigma, the
    space its stochastic samplers run in)."""
    if percent <= 0.0:
        return math.inf
    if percent >= 1.0:
        return 0.0
    shift_fn = getattr(model_schedule, "shift_fn", None)
    if shift_fn is not None:  # flow: sigma = shift(1 - percent), VE sigma / (1 - sigma)
        sigma = float(shift_fn(torch.tensor(1.0 - percent, dtype=torch.float64)))
        return sigma / (1 - sigma)
    return float(model_schedule.t_to_sigma(torch.tensor((1.0 - percent) * 999.0)))


@torch.no_grad()
def sample_sa_solver(denoise, x: torch.Tensor, sigmas: torch.Tensor, callback=None, *, noise_sampler=None,
                     model_schedule=None, eta=1.0, sde_start_percent=0.2, sde_end_percent=0.8, s_noise=1.0,
                     predictor_order=3, corrector_order=4, use_pece=False, simple_order_2=False) -> torch.Tensor:
    """SA-Solver predictor-corrector (see the module doc)."""
    if not 1 <= predictor_order <= 6 or not 0 <= corrector_order <= 6:
        raise InvalidArgument(f"sampler_options: SA-Solver takes predictor_order 1-6 and corrector_order 0-6, "
                              f"not {predictor_order!r} and {corrector_order!r}")
    schedule = model_schedule if model_schedule is not None else DiscreteSchedule(scaled_linear_alphas_cumprod())
    start, end = _percent_to_sigma(schedule, sde_start_percent), _percent_to_sigma(schedule, sde_end_percent)

    def tau_at(sigma) -> float:
        return eta if eta > 0 and start >= float(sigma) >= end else 0.0

    noise_of = noise_fn(noise_sampler, x)
    s = [float(v) for v in sigmas.tolist()]
    n = len(s) - 1
    lams = [-math.log(v) if v > 0 else math.inf for v in s]
    to_end = s[-1] == 0  # lower the orders over the last steps
    x_pred, preds, tau, h, noise = x, [], 0.0, 0.0, None
    for i in range(n):
        denoised = denoise(x_pred, sigmas[i])
        preds = [*preds, denoised][-max(predictor_order, corrector_order, 1):]
        p_order = min(predictor_order, len(preds))
        c_order = 0 if i == 0 or (s[i + 1] == 0 and not use_pece) else min(corrector_order, len(preds))
        if to_end:
            p_order, c_order = min(p_order, n - 1 - i), min(c_order, n - i)
        if c_order == 0:
            x = x_pred
        else:  # corrector: the step just taken again, with this estimate among the nodes
            w = _weights(lams, i - c_order + 1, i + 1, lams[i - 1], lams[i], tau, simple_order_2, corrector=True)
            x = s[i] / s[i - 1] * math.exp(-tau ** 2 * h) * x + sum(c * d for c, d in zip(w, preds[-c_order:]))
            if noise is not None:
                x = x + noise
            if use_pece:
                denoised = denoise(x, sigmas[i])
                preds[-1] = denoised
        if s[i + 1] == 0:
            x_pred = denoised
        else:  # predictor
            tau = tau_at(s[i + 1])
            w = _weights(lams, i - p_order + 1, i + 1, lams[i], lams[i + 1], tau, simple_order_2, corrector=False)
            h = lams[i + 1] - lams[i]
            x_pred = s[i + 1] / s[i] * math.exp(-tau ** 2 * h) * x + sum(c * d for c, d in zip(w, preds[-p_order:]))
            noise = None
            if tau > 0 and s_noise > 0:
                noise = noise_of(sigmas[i], sigmas[i + 1]) * (s[i + 1] * math.sqrt(-math.expm1(-2 * tau ** 2 * h))
                                                             * s_noise)
                x_pred = x_pred + noise
        if callback is not None:
            callback(i, x_pred, denoised)
    return x_pred


@torch.no_grad()
def sample_sa_solver_pece(denoise, x: torch.Tensor, sigmas: torch.Tensor, callback=None, *, noise_sampler=None,
                          model_schedule=None, eta=1.0, sde_start_percent=0.2, sde_end_percent=0.8, s_noise=1.0,
                          predictor_order=3, corrector_order=4, simple_order_2=False) -> torch.Tensor:
    """SA-Solver in PECE mode: each corrected point evaluated again."""
    return sample_sa_solver(denoise, x, sigmas, callback, noise_sampler=noise_sampler, model_schedule=model_schedule,
                            eta=eta, sde_start_percent=sde_start_percent, sde_end_percent=sde_end_percent,
                            s_noise=s_noise, predictor_order=predictor_order, corrector_order=corrector_order,
                            use_pece=True, simple_order_2=simple_order_2)
