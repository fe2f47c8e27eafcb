"""DPM-Solver (Lu et al. 2022, arXiv:2206.00927) as k-diffusion runs it for A1111's "DPM fast" and
"DPM adaptive" (ComfyUI's dpm_fast / dpm_adaptive), over `denoise(x, sigma)`.

Both work in t = -log(sigma) on the noise prediction eps = (x - denoised) / sigma and use only the
ends of the sigmas they are given: from sigmas[0] down to the last nonzero sigma, where they stop
(no final jump to sigma 0, as in k-diffusion; A1111 and ComfyUI pass the same two ends).

* DPM fast: `n = len(sigmas) - 1` model evaluations in steps evenly spaced in t, third-order steps
  with a last step of order 2 or 1 so the orders add up to n (the paper's DPM-Solver-fast). It
  reports once per model evaluation, so progress counts n.
* DPM adaptive: embedded pairs (order 2 inside 3, or 1 inside 2) estimate each step's error; a PID
  controller (Söderlind) grows or shrinks the step and rejects steps whose error is too large. Its
  step count depends on the model; the callback is called once per 1/n of the t range covered.
* eta > 0 (both): each step goes to the ancestral sigma_down and adds noise back up to the step's
  end, as Euler a does.
"""
from __future__ import annotations

import math

import torch

from ..errors import InvalidArgument


def _sigma(t: float) -> float:
    return math.exp(-t)


def _ancestral(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    up = min(sigma_next, eta * (sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / sigma ** 2) ** 0.5)
    return (sigma_next ** 2 - up ** 2) ** 0.5, up


class _Solver:
    """DPM-Solver-1/2/3 steps from t to t_next, given eps at t; model calls go through `eps`."""

    def __init__(self, denoise, on_eval=None):
        self.denoise, self.on_eval = denoise, on_eval

    def eps(self, x: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps, denoised) at time t."""
        sigma = _sigma(t)
        denoised = self.denoise(x, torch.tensor(sigma, dtype=torch.float64))
        if self.on_eval is not None:
            self.on_eval(x, denoised)
        return (x - denoised) / sigma, denoised

    @staticmethod
    def first(x, t, t_next, eps):
        return x - _sigma(t_next) * math.expm1(t_next - t) * eps

    def intermediate(self, x, t, t_next, eps, r1):
        """eps at s1 = t + r1 h, reached by a first-order step."""
        s1 = t + r1 * (t_next - t)
        return self.eps(self.first(x, t, s1, eps), s1)[0]

    @staticmethod
    def second(x, t, t_next, eps, eps_r1, r1):
        h = t_next - t
        return x - _sigma(t_next) * math.expm1(h) * (eps + (eps_r1 - eps) / (2 * r1))

    def third(self, x, t, t_next, eps, eps_r1, r1=1 / 3, r2=2 / 3):
        h = t_next - t
        s2 = t + r2 * h
        u2 = (x - _sigma(s2) * math.expm1(r2 * h) * eps
              - _sigma(s2) * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * (eps_r1 - eps))
        eps_r2 = self.eps(u2, s2)[0]
        return x - _sigma(t_next) * math.expm1(h) * eps - _sigma(t_next) / r2 * (math.expm1(h) / h - 1) * (eps_r2 - eps)

    def step(self, x, t, t_next, eps, order):
        if order == 1:
            return self.first(x, t, t_next, eps)
        if order == 2:
            return self.second(x, t, t_next, eps, self.intermediate(x, t, t_next, eps, 0.5), 0.5)
        return self.third(x, t, t_next, eps, self.intermediate(x, t, t_next, eps, 1 / 3))


def _ends(sigmas: torch.Tensor) -> tuple[float, float]:
    nonzero = [float(s) for s in sigmas.tolist() if s > 0]
    if not nonzero:
        raise ValueError("DPM fast/adaptive need a sigma above 0")
    return -math.log(nonzero[0]), -math.log(nonzero[-1])


def _noise_fn(noise_sampler, x):
    return noise_sampler if noise_sampler is not None else (lambda sigma, sigma_next: torch.randn_like(x))


def _down(t: float, t_next: float, t_end: float, eta: float) -> tuple[float, float]:
    """(the time a step aims for, the noise std it adds after): t_next and 0 without eta."""
    if not eta:
        return t_next, 0.0
    down, _ = _ancestral(_sigma(t), _sigma(t_next), eta)
    target = min(t_end, -math.log(down)) if down > 0 else t_end
    return target, max(_sigma(t_next) ** 2 - _sigma(target) ** 2, 0.0) ** 0.5


@torch.no_grad()
def sample_dpm_fast(denoise, x: torch.Tensor, sigmas: torch.Tensor, callback=None, *, noise_sampler=None,
                    eta=0.0, s_noise=1.0) -> torch.Tensor:
    """DPM fast: len(sigmas) - 1 model evaluations from sigmas[0] to the last nonzero sigma."""
    t_start, t_end = _ends(sigmas)
    nfe = len(sigmas) - 1
    count = [0]
    state = {}

    def on_eval(_x, denoised):
        if callback is not None:
            callback(count[0], state["x"], denoised)
        count[0] += 1

    solver = _Solver(denoise, on_eval)
    noise = _noise_fn(noise_sampler, x)
    m = nfe // 3 + 1
    ts = torch.linspace(t_start, t_end, m + 1, dtype=torch.float64).tolist()
    orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
    for i, order in enumerate(orders):
        t, t_next = ts[i], ts[i + 1]
        target, up = _down(t, t_next, t_end, eta)
        state["x"] = x
        eps, _ = solver.eps(x, t)
        x = solver.step(x, t, target, eps, order)
        if up and s_noise:
            x = x + up * s_noise * noise(torch.tensor(_sigma(t)), torch.tensor(_sigma(t_next)))
    return x


# Tries (accepted and rejected steps) DPM adaptive may take (3 model evaluations each, 3 x the 500
# steps a request may ask for): its defaults take ~10-100, rtol 1e-6 ~110; options that
# ask for a precision it cannot reach (rtol = atol = 0, accept_safety > 1, a large eta) never end.
MAX_TRIES = 500


class _PID:
    """Step-size controller of k-diffusion's DPM adaptive (PID on the inverse error, arctan limiter)."""

    def __init__(self, h, pcoeff, icoeff, dcoeff, order, accept_safety, eps=1e-8):
        self.h = h
        self.b = ((pcoeff + icoeff + dcoeff) / order, -(pcoeff + 2 * dcoeff) / order, dcoeff / order)
        self.accept_safety, self.eps = accept_safety, eps
        self.errs: list[float] = []

    def propose(self, error: float) -> bool:
        inv = 1 / (error + self.eps)
        if not self.errs:
            self.errs = [inv, inv, inv]
        self.errs[0] = inv
        factor = self.errs[0] ** self.b[0] * self.errs[1] ** self.b[1] * self.errs[2] ** self.b[2]
        factor = 1 + math.atan(factor - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2], self.errs[1] = self.errs[1], self.errs[0]
        self.h *= factor
        return accept


@torch.no_grad()
def sample_dpm_adaptive(denoise, x: torch.Tensor, sigmas: torch.Tensor, callback=None, *, noise_sampler=None,
                        order=3, rtol=0.05, atol=0.0078, h_init=0.05, pcoeff=0.0, icoeff=1.0, dcoeff=0.0,
                        accept_safety=0.81, eta=0.0, s_noise=1.0) -> torch.Tensor:
    """DPM adaptive (DPM-Solver-12/23) from sigmas[0] to the last nonzero sigma; k-diffusion's defaults."""
    if order not in (2, 3):
        raise InvalidArgument(f"sampler_options.order: DPM adaptive takes 2 or 3, not {order!r}")
    t_start, t_end = _ends(sigmas)
    n = len(sigmas) - 1
    solver = _Solver(denoise)
    noise = _noise_fn(noise_sampler, x)
    pid = _PID(abs(h_init), pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety)
    s, x_prev, reported, tries = t_start, x, 0, 0
    cached = None  # eps at s, kept across rejected tries (k-diffusion evaluates it again: same value)
    options = (f"rtol {rtol}, atol {atol}, h_init {h_init}, pcoeff {pcoeff}, icoeff {icoeff}, dcoeff {dcoeff}, "
               f"accept_safety {accept_safety}, eta {eta}")
    while s < t_end - 1e-5:
        tries += 1
        t = min(t_end, s + pid.h)
        if tries > MAX_TRIES or not t > s:  # k-diffusion loops on for ever (or divides by a zero step)
            why = f"took {MAX_TRIES} tries" if tries > MAX_TRIES else "made no progress"
            raise InvalidArgument(f"sampler_options: DPM adaptive {why} short of the last sigma with {options}; "
                                  "relax them (its defaults take ~20-100 tries)")
        target, up = _down(s, t, t_end, eta)
        eps, denoised = cached if cached is not None else solver.eps(x, s)
        cached = (eps, denoised)
        if order == 2:
            x_low = solver.first(x, s, target, eps)
            x_high = solver.second(x, s, target, eps, solver.intermediate(x, s, target, eps, 0.5), 0.5)
        else:
            eps_r1 = solver.intermediate(x, s, target, eps, 1 / 3)
            x_low = solver.second(x, s, target, eps, eps_r1, 1 / 3)
            x_high = solver.third(x, s, target, eps, eps_r1)
        delta = torch.maximum(torch.full_like(x, atol), rtol * torch.maximum(x_low.abs(), x_prev.abs()))
        error = float(torch.linalg.norm((x_low - x_high) / delta)) / x.numel() ** 0.5
        try:
            accepted = pid.propose(error)
        except (OverflowError, ZeroDivisionError):  # the controller's coefficients past any float
            raise InvalidArgument(f"sampler_options: DPM adaptive's step controller overflowed with {options}") from None
        if accepted:
            x_prev = x_low
            x = x_high
            if up and s_noise:
                x = x + up * s_noise * noise(torch.tensor(_sigma(s)), torch.tensor(_sigma(t)))
            s, cached = t, None
            # progress: one callback per 1/n of the way in t (all of them by the end)
            done = n if s >= t_end - 1e-5 else min(n, int((s - t_start) / (t_end - t_start) * n))
            while callback is not None and reported < done:
                callback(reported, x, denoised)
                reported += 1
    return x
