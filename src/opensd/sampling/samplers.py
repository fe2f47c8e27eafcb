"""Samplers: small pure functions over `denoise(x, sigma) -> denoised` (k-diffusion's shape).

Every sampler has the signature

    sample_NAME(denoise, x, sigmas, callback=None, *, noise_sampler=None, **options) -> x

* `denoise(x, sigma)`: the model's estimate of the clean latents; sigma is a 0-d tensor.
* `x`: the starting latents at noise level sigmas[0] (for txt2img: unit noise * sigmas[0]).
* `sigmas`: 1-D, decreasing, normally ending in 0; a step to 0 returns the model's estimate.
* `callback(i, x, denoised)`: after step i, with the new x and that step's (first) estimate;
  raising from it stops sampling (interrupt).
* `noise_sampler(sigma, sigma_next)`: fresh standard normal noise shaped like x for the
  stochastic samplers, called in step order (the pipeline passes one seeded on the CPU per image);
  None means `torch.randn_like(x)`. Deterministic settings (eta=0, s_churn=0) never call it.
  k-diffusion/A1111/ComfyUI feed the SDE samplers a Brownian tree instead (torchsde), so those
  agree with them in distribution, not bit for bit.

Options, with k-diffusion/A1111 defaults:
  Euler, Heun, DPM2:               s_churn=0, s_tmin=0, s_tmax=inf, s_noise=1 (Karras "churn")
  Euler a, DPM2 a, DPM++ 2S a:     eta=1, s_noise=1
  DPM++ SDE:                       eta=1, s_noise=1, r=0.5
  DPM++ 2M SDE:                    eta=1, s_noise=1, solver_type="midpoint" (or "heun")
  DPM++ 3M SDE:                    eta=1, s_noise=1
  LMS:                             order=4
  DDIM:                            eta=0 (A1111's "Eta DDIM")
  UniPC:                           order=3, variant="bh1", lower_order_final=True (A1111's defaults)
  LCM:                             s_noise=1
  DPM fast:                        eta=0, s_noise=1 (dpm_solver.py)
  DPM adaptive:                    order=3, rtol=0.05, atol=0.0078, h_init=0.05, pcoeff=0, icoeff=1,
                                   dcoeff=0, accept_safety=0.81, eta=0, s_noise=1
  Restart:                         s_noise=1 (restart.py)
  DEIS:                            max_order=3 (deis.py)
  TCD:                             eta=0.3 (tcd.py; takes the model's schedule as `model_schedule`)
  Euler CFG++, DPM++ 2M CFG++:     none; they need the unconditional estimate (cfg_pp.py)
  Euler a CFG++:                   eta=1, s_noise=1; it needs the unconditional estimate too
  DPM++ 2M SDE Heun:               eta=1, s_noise=1 (DPM++ 2M SDE with solver_type="heun")
  UniPC BH2 (uni_pc_bh2):          order=3, lower_order_final=True (UniPC with variant="bh2")
  DDPM:                            none (Euler a with eta=1: the same posterior step)
  Heun++ 2 (heunpp2):              s_churn=0, s_tmin=0, s_tmax=inf, s_noise=1 (heunpp2.py)
  iPNDM, iPNDM-v:                  max_order=4 (ipndm.py)
  RES multistep (+ CFG++):         none; the ancestral ones eta=1, s_noise=1 (res_multistep.py)
  Gradient estimation (+ CFG++):   ge_gamma=2 (gradient_estimation.py)
  ER SDE:                          s_noise=1, max_stage=3, solver_type="ER-SDE", eta=1 (er_sde.py)
  DPM++ 2S a CFG++:                eta=1, s_noise=1 (cfg_pp.py)
  SEEDS-2:                         eta=1, s_noise=1, r=0.5, solver_type="phi_1" (seeds.py)
  SEEDS-3:                         eta=1, s_noise=1, r_1=1/3, r_2=2/3 (seeds.py)
  SA-Solver (+ PECE):              eta=1, sde_start_percent=0.2, sde_end_percent=0.8, s_noise=1,
                                   predictor_order=3, corrector_order=4, use_pece=False,
                                   simple_order_2=False (sa_solver.py; takes `model_schedule`)
  The *_cfg_pp samplers need the unconditional estimate (cfg_pp.py).
DDIM and UniPC need nothing from the model's alpha schedule: written in sigma (VE) space their
updates depend only on sigmas, and the model's own sigmas come in through the schedule.
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch

from ..errors import InvalidArgument
from .cfg_pp import sample_dpmpp_2m_cfg_pp, sample_dpmpp_2s_ancestral_cfg_pp, sample_euler_cfg_pp, with_uncond
from .deis import sample_deis
from .dpm_solver import sample_dpm_adaptive, sample_dpm_fast
from .er_sde import sample_er_sde
from .gradient_estimation import sample_gradient_estimation, sample_gradient_estimation_cfg_pp
from .heunpp2 import sample_heunpp2
from .ipndm import sample_ipndm, sample_ipndm_v
from .names import sampler_id
from .plms import sample_plms
from .res_multistep import (
    sample_res_multistep,
    sample_res_multistep_ancestral,
    sample_res_multistep_ancestral_cfg_pp,
    sample_res_multistep_cfg_pp,
)
from .restart import sample_restart
from .sa_solver import sample_sa_solver, sample_sa_solver_pece
from .seeds import sample_seeds_2, sample_seeds_3
from .steps import add_noise as _add_noise
from .steps import ancestral_step as _ancestral_step
from .steps import churn as _churn
from .steps import noise_fn as _noise_fn
from .steps import to_d as _to_d
from .tcd import sample_tcd

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# callback(step_index, x, denoised); raising from it stops sampling (interrupt).
Callback = Callable[[int, torch.Tensor, torch.Tensor], None] | None
NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None


# --- shared pieces -------------------------------------------------------------------------

def _dpm2_step(denoise, x, d, sigma, sigma_to):
    """DPM-Solver-2 (Karras' variant): slope at the log-midpoint; Euler when stepping to 0."""
    if sigma_to == 0:
        return x + d * (sigma_to - sigma)
    sigma_mid = sigma.log().lerp(sigma_to.log(), 0.5).exp()
    x_mid = x + d * (sigma_mid - sigma)
    return x + _to_d(x_mid, sigma_mid, denoise(x_mid, sigma_mid)) * (sigma_to - sigma)


def _ancestral_euler(denoise, x, sigmas, callback, noise_sampler, eta, s_noise):
    noise = _noise_fn(noise_sampler, x)
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[i])
        sigma_down, sigma_up = _ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = x + _to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        x = _add_noise(x, noise, sigmas[i], sigmas[i + 1], sigma_up, s_noise)
        if callback is not None:
            callback(i, x, denoised)
    return x


# --- ODE samplers ----------------------------------------------------------------------------

@torch.no_grad()
def sample_euler(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback = None, *,
                 noise_sampler: NoiseSampler = None, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"),
                 s_noise=1.0) -> torch.Tensor:
    """Euler on the probability-flow ODE (Karras et al. 2022, Alg. 2 with optional churn)."""
    noise = _noise_fn(noise_sampler, x)
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas[i], len(sigmas) - 1, noise, s_churn, s_tmin, s_tmax, s_noise)
        denoised = denoise(x, sigma_hat)
        x = x + _to_d(x, sigma_hat, denoised) * (sigmas[i + 1] - sigma_hat)
        if callback is not None:
            callback(i, x, denoised)
    return x


@torch.no_grad()
def sample_heun(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback = None, *,
                noise_sampler: NoiseSampler = None, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"),
                s_noise=1.0) -> torch.Tensor:
    """Heun's method (Karras et al. 2022, Alg. 2); the final step to sigma 0 is Euler."""
    noise = _noise_fn(noise_sampler, x)
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas[i], len(sigmas) - 1, noise, s_churn, s_tmin, s_tmax, s_noise)
        denoised = denoise(x, sigma_hat)
        d = _to_d(x, sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = _to_d(x_2, sigmas[i + 1], denoise(x_2, sigmas[i + 1]))
            x = x + (d + d_2) / 2 * dt
        if callback is not None:
            callback(i, x, denoised)
    return x


@torch.no_grad()
def sample_dpm_2(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback = None, *,
                 noise_sampler: NoiseSampler = None, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"),
                 s_noise=1.0) -> torch.Tensor:
    """DPM2: k-diffusion's DPM-Solver-2 step in sigma (midpoint in log sigma)."""
    noise = _noise_fn(noise_sampler, x)
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas[i], len(sigmas) - 1, noise, s_churn, s_tmin, s_tmax, s_noise)
        denoised = denoise(x, sigma_hat)
        x = _dpm2_step(denoise, x, _to_d(x, sigma_hat, denoised), sigma_hat, sigmas[i + 1])
        if callback is not None:
            callback(i, x, denoised)
    return x


@torch.no_grad()
def sample_lms(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback = None, *,
               noise_sampler: NoiseSampler = None, order: int = 4) -> torch.Tensor:
    """Linear multistep (Adams-Bashforth on a variable sigma grid), lower order while warming up.
    As k-diffusion/A1111/diffusers (not ComfyUI), the last step also integrates to sigma 0."""
    s = [float(v) for v in sigmas.tolist()]
    ds: list[torch.Tensor] = []
    for i in range(len(s) - 1):
        denoised = denoise(x, sigmas[i])
        ds = [*ds, _to_d(x, sigmas[i], denoised)][-order:]
        coeffs = [_lms_coefficient(s, i, j, len(ds)) for j in range(len(ds))]
        x = x + sum(c * d for c, d in zip(coeffs, reversed(ds)))
        if callback is not None:
            callback(i, x, denoised)
    return x


def _lms_coefficient(s: list[float], i: int, j: int, order: int) -> float:
    """Exact integral over [s[i], s[i+1]] of the Lagrange basis polynomial through s[i-k], k < order,
    that is 1 at s[i-j] (k-diffusion integrates it numerically; it is a cubic at most)."""
    nodes = [s[i - k] - s[i] for k in range(order)]  # shifted so the interval starts at 0
    poly = [1.0]  # coefficients of u**0, u**1, ...
    for k in range(order):
        if k != j:
            scale = 1.0 / (nodes[j] - nodes[k])
            poly = [((poly[p - 1] if p else 0.0) - nodes[k] * (poly[p] if p < len(poly) else 0.0)) * scale
                    for p in range(len(poly) + 1)]
    h = s[i + 1] - s[i]
    return sum(c * h ** (p + 1) / (p + 1) for p, c in enumerate(poly))


@torch.no_grad()
def sample_dpmpp_2m(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback = None, *,
                    noise_sampler: NoiseSampler = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022): second-order multistep in lambda = -log sigma."""
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = (sigmas[i] / sigmas[i + 1]).log()
            denoised_d = denoised
            if old_denoised is not None:
                r = (sigmas[i - 1] / sigmas[i]).log() / h
                denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigmas[i + 1] / sigmas[i]) * x - torch.expm1(-h) * denoised_d
        old_denoised = denoised
        if callback is not None:
            callback(i, x, denoised)
    return x


@torch.no_grad()
def sample_uni_pc(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback = None, *,
                  noise_sampler: NoiseSampler = None, order: int = 3, variant: str = "bh1",
                  lower_order_final: bool = True) -> torch.Tensor:
    """UniPC (Zhao et al. 2023), data prediction, multistep: each step's model evaluation first
    corrects the previous step (UniC), then predicts the next (UniP). `variant` picks B(h):
    "bh1" = h (A1111/ComfyUI default), "bh2" = e^h - 1 (diffusers' default)."""
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"variant must be 'bh1' or 'bh2', not {variant!r}")
    lambdas = [-math.log(v) if v > 0 else math.inf for v in sigmas.tolist()]
    n = len(sigmas) - 1
    ms: list[torch.Tensor] = []  # the last `order` denoised estimates, newest (this step's) last
    x_prev, prev_order = x, 1
    for i in range(n):
        denoised = denoise(x, sigmas[i])
        if ms:  # UniC: correct the step just taken with the model's value there
            x = _unipc_update(x_prev, ms, lambdas, i - 1, i, prev_order, variant, denoised)
        ms = [*ms, denoised][-order:]
        if sigmas[i + 1] == 0:
            x = denoised
        else:  # UniP
            prev_order = min(order, i + 1, n - i) if lower_order_final else min(order, i + 1)
            x_prev, x = x, _unipc_update(x, ms, lambdas, i, i + 1, prev_order, variant)
        if callback is not None:
            callback(i, x, denoised)
    return x


@torch.no_grad()
def sample_uni_pc_bh2(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback = None, *,
                      noise_sampler: NoiseSampler = None, order: int = 3,
                      lower_order_final: bool = True) -> torch.Tensor:
    """UniPC with B(h) = e^h - 1 (ComfyUI's uni_pc_bh2)."""
    return sample_uni_pc(denoise, x, sigmas, callback, order=order, variant="bh2", lower_order_final=lower_order_final)


def _unipc_update(x, ms, lambdas, s, t, order, variant, model_t=None):
    """One UniP (model_t None) or UniC step from step s (where ms[-1] was evaluated) to step t,
    in sigma space: x_t = (sigma_t/sigma_s) x - expm1(-h) m0 - B(h) * sum(rho_k D_k)."""
    h = lambdas[t] - lambdas[s]
    m0 = ms[-1]
    rks = [(lambdas[s - k] - lambdas[s]) / h for k in range(1, order)] + [1.0]
    d1s = [(ms[-1 - k] - m0) / rks[k - 1] for k in range(1, order)]
    hh = -h
    b_h = hh if variant == "bh1" else math.expm1(hh)
    h_phi_k, factorial, b = math.expm1(hh) / hh - 1, 1, []
    for k in range(1, order + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    rk = torch.tensor(rks, dtype=torch.float64)
    R = torch.stack([rk ** p for p in range(order)])
    if model_t is None:  # predictor: order-1 differences
        rhos = ([] if order == 1 else [0.5] if order == 2
                else torch.linalg.solve(R[:-1, :-1], torch.tensor(b[:-1], dtype=torch.float64)).tolist())
        res = sum((r * d for r, d in zip(rhos, d1s)), torch.zeros_like(x))
    else:  # corrector: also the difference to the new evaluation
        rhos = [0.5] if order == 1 else torch.linalg.solve(R, torch.tensor(b, dtype=torch.float64)).tolist()
        res = sum((r * d for r, d in zip(rhos[:-1], d1s)), rhos[-1] * (model_t - m0))
    return math.exp(-h) * x - math.expm1(hh) * m0 - b_h * res


# --- stochastic samplers ---------------------------------------------------------------------

@torch.no_grad()
def sample_euler_ancestral(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback = None, *,
                           noise_sampler: NoiseSampler = None, eta=1.0, s_noise=1.0) -> torch.Tensor:
    """Euler a: Euler to sigma_down, then fresh noise up to sigma_next."""
    return _ancestral_euler(denoise, x, sigmas, callback, noise_sampler, eta, s_noise)


@torch.no_grad()
def sample_euler_ancestral_cfg_pp(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback = None,
                                  *, noise_sampler: NoiseSampler = None, eta=1.0, s_noise=1.0) -> torch.Tensor:
    """Euler a CFG++ (ComfyUI's euler_ancestral_cfg_pp): Euler a whose step to sigma_down starts from
    the guided estimate and follows the unconditional one's direction; eta=0 is Euler CFG++."""
    noise = _noise_fn(noise_sampler, x)
    for i in range(len(sigmas) - 1):
        denoised, uncond = with_uncond(denoise, x, sigmas[i])
        sigma_down, sigma_up = _ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = denoised + _to_d(x, sigmas[i], uncond) * sigma_down
        x = _add_noise(x, noise, sigmas[i], sigmas[i + 1], sigma_up, s_noise)
        if callback is not None:
            callback(i, x, denoised)
    return x


@torch.no_grad()
def sample_ddim(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback = None, *,
                noise_sampler: NoiseSampler = None, eta=0.0) -> torch.Tensor:
    """DDIM (Song et al. 2021). Divided by sqrt(alpha_prev), DDIM's update with its eta is exactly
    an ancestral Euler step with the same eta: x_prev = x0 + sigma_down * eps + sigma_up * z. So
    eta=0 is Euler (as ComfyUI's "ddim" is) and eta=1 is Euler a. Use the ddim_uniform schedule
    for DDIM's own timesteps."""
    return _ancestral_euler(denoise, x, sigmas, callback, noise_sampler, eta, 1.0)


@torch.no_grad()
def sample_ddpm(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback = None, *,
                noise_sampler: NoiseSampler = None) -> torch.Tensor:
    """DDPM (Ho et al. 2020) ancestral sampling, ComfyUI's ddpm: each step draws from the posterior
    q(x_prev | x_t, x0 = denoised). In sigma space that posterior's mean and variance are exactly
    Euler a's step with eta=1 (see sample_ddim), so that is what runs."""
    return _ancestral_euler(denoise, x, sigmas, callback, noise_sampler, 1.0, 1.0)


@torch.no_grad()
def sample_dpm_2_ancestral(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback = None, *,
                           noise_sampler: NoiseSampler = None, eta=1.0, s_noise=1.0) -> torch.Tensor:
    """DPM2 a: a DPM2 step to sigma_down, then fresh noise up to sigma_next."""
    noise = _noise_fn(noise_sampler, x)
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[i])
        sigma_down, sigma_up = _ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = _dpm2_step(denoise, x, _to_d(x, sigmas[i], denoised), sigmas[i], sigma_down)
        x = _add_noise(x, noise, sigmas[i], sigmas[i + 1], sigma_up, s_noise)
        if callback is not None:
            callback(i, x, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_2s_ancestral(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback = None, *,
                              noise_sampler: NoiseSampler = None, eta=1.0, s_noise=1.0) -> torch.Tensor:
    """DPM++ 2S a: a DPM-Solver++(2S) step (midpoint in log sigma) to sigma_down, then noise."""
    noise = _noise_fn(noise_sampler, x)
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[i])
        sigma_down, sigma_up = _ancestral_step(sigmas[i], sigmas[i + 1], eta)
        if sigma_down == 0:
            x = x + _to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            sigma_s = (sigmas[i] * sigma_down) ** 0.5
            x_2 = denoised + (sigma_s / sigmas[i]) * (x - denoised)
            denoised_2 = denoise(x_2, sigma_s)
            x = denoised_2 + (sigma_down / sigmas[i]) * (x - denoised_2)
        x = _add_noise(x, noise, sigmas[i], sigmas[i + 1], sigma_up, s_noise)
        if callback is not None:
            callback(i, x, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_sde(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback = None, *,
                     noise_sampler: NoiseSampler = None, eta=1.0, s_noise=1.0, r=0.5) -> torch.Tensor:
    """DPM++ SDE: two-stage stochastic DPM-Solver++, intermediate point at fraction r of the
    step in log sigma; each stage is an ancestral first-order step from sigma.

    Both stages start at sigma, so their noises must be increments of one Brownian path
    (k-diffusion uses a Brownian tree): we draw the increments over [sigma_s, sigma] and
    [sigma_next, sigma_s] and combine them, so plain independent noise is enough."""
    noise = _noise_fn(noise_sampler, x)
    fac = 1 / (2 * r)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            sigma_s = sigma ** (1 - r) * sigma_next ** r
            stochastic = bool(eta and s_noise)
            if stochastic:
                z_1, z_2 = noise(sigma, sigma_s), noise(sigma_s, sigma_next)
            sd, su = _ancestral_step(sigma, sigma_s, eta)
            x_2 = denoised + (sd / sigma) * (x - denoised)
            if stochastic:
                x_2 = x_2 + z_1 * s_noise * su
            denoised_d = (1 - fac) * denoised + fac * denoise(x_2, sigma_s)
            sd, su = _ancestral_step(sigma, sigma_next, eta)
            x = denoised_d + (sd / sigma) * (x - denoised_d)
            if stochastic:  # the increment over [sigma_next, sigma] of the same path, normalized
                z = ((sigma - sigma_s) ** 0.5 * z_1 + (sigma_s - sigma_next) ** 0.5 * z_2) / (sigma - sigma_next) ** 0.5
                x = x + z * s_noise * su
        if callback is not None:
            callback(i, x, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback = None, *,
                        noise_sampler: NoiseSampler = None, eta=1.0, s_noise=1.0,
                        solver_type="midpoint") -> torch.Tensor:
    """DPM-Solver++(2M) SDE; its second-order term in k-diffusion's midpoint (default) or heun form."""
    if solver_type not in ("midpoint", "heun"):
        raise InvalidArgument(f"sampler_options.solver_type: {solver_type!r} is not midpoint or heun")
    return _dpmpp_multistep_sde(denoise, x, sigmas, callback, noise_sampler, eta, s_noise, third_order=False,
                                heun=solver_type == "heun")


@torch.no_grad()
def sample_dpmpp_3m_sde(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback = None, *,
                        noise_sampler: NoiseSampler = None, eta=1.0, s_noise=1.0) -> torch.Tensor:
    """DPM-Solver++(3M) SDE."""
    return _dpmpp_multistep_sde(denoise, x, sigmas, callback, noise_sampler, eta, s_noise, third_order=True)


@torch.no_grad()
def sample_dpmpp_2m_sde_heun(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback = None, *,
                             noise_sampler: NoiseSampler = None, eta=1.0, s_noise=1.0) -> torch.Tensor:
    """DPM++ 2M SDE with the heun second-order term (A1111's "DPM++ 2M SDE Heun", ComfyUI's
    dpmpp_2m_sde_heun)."""
    return sample_dpmpp_2m_sde(denoise, x, sigmas, callback, noise_sampler=noise_sampler, eta=eta, s_noise=s_noise,
                               solver_type="heun")


def _dpmpp_multistep_sde(denoise, x, sigmas, callback, noise_sampler, eta, s_noise, third_order, heun=False):
    """Shared body of 2M SDE and 3M SDE: exponential-integrator step in lambda = -log sigma with
    eta-scaled noise; the 3M history terms (and 2M's midpoint or heun one) as in k-diffusion."""
    noise = _noise_fn(noise_sampler, x)
    hist: list[tuple[torch.Tensor, torch.Tensor]] = []  # (denoised, h) of earlier steps, newest first
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[i])
        h = (sigmas[i] / sigmas[i + 1]).log() if sigmas[i + 1] > 0 else None
        if h is None:
            x = denoised
        else:
            h_eta = h * (eta + 1)
            x = (sigmas[i + 1] / sigmas[i]) * (-h * eta).exp() * x - torch.expm1(-h_eta) * denoised
            phi_2 = torch.expm1(-h_eta) / h_eta + 1
            if third_order and len(hist) >= 2:
                (d_1, h_1), (d_2, h_2) = hist[0], hist[1]
                r0, r1 = h_1 / h, h_2 / h
                d1_0, d1_1 = (denoised - d_1) / r0, (d_1 - d_2) / r1
                d1, d2 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1), (d1_0 - d1_1) / (r0 + r1)
                x = x + phi_2 * d1 - (phi_2 / h_eta - 0.5) * d2
            elif third_order and hist:
                x = x + phi_2 * (denoised - hist[0][0]) / (hist[0][1] / h)
            elif hist and heun:
                x = x + phi_2 * (denoised - hist[0][0]) / (hist[0][1] / h)
            elif hist:  # 2M midpoint
                x = x - 0.5 * torch.expm1(-h_eta) * (denoised - hist[0][0]) / (hist[0][1] / h)
            if eta and s_noise:
                x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-torch.expm1(-2 * h * eta)).sqrt() * s_noise
        hist = [(denoised, h), *hist][:2]
        if callback is not None:
            callback(i, x, denoised)
    return x


@torch.no_grad()
def sample_lcm(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback = None, *,
               noise_sampler: NoiseSampler = None, s_noise=1.0) -> torch.Tensor:
    """LCM (Luo et al. 2023) multistep consistency sampling: jump to the estimate, re-noise to
    the next sigma with fresh noise. LCM's boundary-condition scaling (c_skip <= 7e-6 and
    c_out >= 1 - 4e-6 for timesteps >= 19) belongs to the model wrapper and is left out."""
    noise = _noise_fn(noise_sampler, x)
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[i])
        x = _add_noise(denoised, noise, sigmas[i], sigmas[i + 1], sigmas[i + 1], s_noise)
        if callback is not None:
            callback(i, x, denoised)
    return x


SAMPLERS: dict[str, Callable] = {
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "euler_ancestral_cfg_pp": sample_euler_ancestral_cfg_pp,
    "heun": sample_heun,
    "dpm_2": sample_dpm_2,
    "dpm_2_ancestral": sample_dpm_2_ancestral,
    "lms": sample_lms,
    "dpmpp_2s_ancestral": sample_dpmpp_2s_ancestral,
    "dpmpp_sde": sample_dpmpp_sde,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "dpmpp_3m_sde": sample_dpmpp_3m_sde,
    "ddim": sample_ddim,
    "uni_pc": sample_uni_pc,
    "lcm": sample_lcm,
    "plms": sample_plms,
    "dpm_fast": sample_dpm_fast,
    "dpm_adaptive": sample_dpm_adaptive,
    "restart": sample_restart,
    "deis": sample_deis,
    "tcd": sample_tcd,
    "euler_cfg_pp": sample_euler_cfg_pp,
    "dpmpp_2m_cfg_pp": sample_dpmpp_2m_cfg_pp,
    "heunpp2": sample_heunpp2,
    "dpmpp_2s_ancestral_cfg_pp": sample_dpmpp_2s_ancestral_cfg_pp,
    "dpmpp_2m_sde_heun": sample_dpmpp_2m_sde_heun,
    "ddpm": sample_ddpm,
    "ipndm": sample_ipndm,
    "ipndm_v": sample_ipndm_v,
    "res_multistep": sample_res_multistep,
    "res_multistep_cfg_pp": sample_res_multistep_cfg_pp,
    "res_multistep_ancestral": sample_res_multistep_ancestral,
    "res_multistep_ancestral_cfg_pp": sample_res_multistep_ancestral_cfg_pp,
    "gradient_estimation": sample_gradient_estimation,
    "gradient_estimation_cfg_pp": sample_gradient_estimation_cfg_pp,
    "er_sde": sample_er_sde,
    "uni_pc_bh2": sample_uni_pc_bh2,
    "seeds_2": sample_seeds_2,
    "seeds_3": sample_seeds_3,
    "sa_solver": sample_sa_solver,
    "sa_solver_pece": sample_sa_solver_pece,
}
# Samplers that step with the unconditional estimate too: their guidance must evaluate it even
# where plain CFG would skip it (CFG scale 1), as ComfyUI's disable_cfg1_optimization does.
NEEDS_UNCOND = frozenset({"euler_cfg_pp", "euler_ancestral_cfg_pp", "dpmpp_2m_cfg_pp", "dpmpp_2s_ancestral_cfg_pp",
                          "res_multistep_cfg_pp", "res_multistep_ancestral_cfg_pp", "gradient_estimation_cfg_pp"})
# What the caller supplies rather than the user: per-step noise and the model's discrete schedule.
_CONTEXT = ("noise_sampler", "model_schedule")


def get_sampler(name: str) -> Callable:
    """The sampler function for an id or any accepted name ("euler", "Euler", "DPM++ 2M Karras", ...);
    unknown names raise InvalidArgument("sampler: ... valid: ...")."""
    return SAMPLERS[sampler_id(name)]


def sampler_options(name: str) -> dict[str, object]:
    """The options sampler `name` takes (its keyword arguments but the caller's context), with defaults."""
    params = inspect.signature(get_sampler(name)).parameters
    return {k: p.default for k, p in params.items() if p.kind is p.KEYWORD_ONLY and k not in _CONTEXT}


def sampler_context(name: str, noise_sampler: NoiseSampler = None, model_schedule=None) -> dict:
    """The caller's context arguments sampler `name` takes: the noise sampler, and the model's
    DiscreteSchedule for samplers that work on its timesteps (TCD) or its percents (SA-Solver)."""
    params = inspect.signature(get_sampler(name)).parameters
    given = {"noise_sampler": noise_sampler, "model_schedule": model_schedule}
    return {k: v for k, v in given.items() if k in params}


ALL_OPTIONS = frozenset(k for s in SAMPLERS for k in sampler_options(s))  # every option of some sampler
OPTION_TYPES = {k: type(v) for s in SAMPLERS for k, v in sampler_options(s).items()}  # float, int, bool or str
