"""Noise schedules: the model's discrete training schedule and the sigma sequences samplers walk.

Every schedule function takes the model's DiscreteSchedule and a step count and returns a float32
1-D tensor of `steps + 1` decreasing sigmas ending in 0 (beta may return fewer: it drops repeated
timesteps, as ComfyUI does). `make_sigmas` picks one by id (see names.py) and applies the
"discard penultimate sigma" rule some samplers use.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from ..errors import InvalidArgument
from . import schedule_options as SO
from .align_your_steps import a1111_ays_sigmas
from .names import DISCARD_PENULTIMATE, sampler_id, scheduler_id


def scaled_linear_alphas_cumprod(steps: int = 1000, beta_start: float = 0.00085,
                                 beta_end: float = 0.012) -> torch.Tensor:
    """The schedule every SD 1.x/2.x/XL model was trained with (LDM's "linear" = scaled linear)."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


class DiscreteSchedule:
    """Maps between continuous sigma and the discrete timestep the UNet was trained on.

    Interpolation is linear in log-sigma, as k-diffusion's CompVis wrapper does, so samplers may
    ask for any sigma in range; `quantize` (A1111's enable_quantization, k-diffusion's `quantize`):
    the nearest timestep instead, in log-sigma.
    """

    def __init__(self, alphas_cumprod: torch.Tensor, half: bool = False, quantize: bool = False):
        self.quantize = quantize
        if half:  # A1111's "downcast alphas_cumprod": k-diffusion computes sigmas and logs in fp16
            ac = alphas_cumprod.half()
            sigmas = ((1 - ac) / ac) ** 0.5
            self.sigmas, self.log_sigmas = sigmas.float(), sigmas.log().float()
            return
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
        if self.quantize:
            nearest = (log_sigma.reshape(1, -1) - self.log_sigmas[:, None]).abs().argmin(dim=0)
            return nearest.reshape(sigma.shape).float().to(sigma.device)
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


def karras_sigmas(schedule: DiscreteSchedule, steps: int, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022) between the model's sigma_max and sigma_min."""
    return karras(schedule.sigma_min, schedule.sigma_max, steps, rho)


def karras(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022): evenly spaced in sigma**(1/rho) from sigma_max to sigma_min, then 0."""
    ramp = torch.linspace(0, 1, steps)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((hi + ramp * (lo - hi)) ** rho)


def exponential_sigmas(schedule: DiscreteSchedule, steps: int) -> torch.Tensor:
    """Evenly spaced in log sigma between the model's sigma_max and sigma_min."""
    return exponential(schedule.sigma_min, schedule.sigma_max, steps)


def exponential(sigma_min: float, sigma_max: float, steps: int) -> torch.Tensor:
    """Evenly spaced in log sigma from sigma_max to sigma_min, then 0."""
    return _append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), steps).exp())


def polyexponential(sigma_min: float, sigma_max: float, steps: int, rho: float = 1.0) -> torch.Tensor:
    """log sigma from log sigma_max to log sigma_min along a ramp from 1 to 0 raised to rho
    (k-diffusion's; rho 1 is the exponential schedule), then 0."""
    for name, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
        if value <= 0:
            raise InvalidArgument(f"{name}: must be above 0 for a schedule spaced in log sigma, not {value}")
    ramp = torch.linspace(1, 0, steps) ** rho
    lo = math.log(sigma_min)
    return _append_zero(torch.exp(ramp * (math.log(sigma_max) - lo) + lo))


def vp(steps: int, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 1e-3) -> torch.Tensor:
    """The continuous VP SDE's sigmas at times 1 down to eps_s: sqrt(exp(beta_d t^2 / 2 +
    beta_min t) - 1), then 0 (k-diffusion's)."""
    t = torch.linspace(1, eps_s, steps)
    return _append_zero(torch.sqrt(torch.special.expm1(beta_d * t ** 2 / 2 + beta_min * t)))


def laplace(sigma_min: float, sigma_max: float, steps: int, mu: float = 0.0, beta: float = 0.5) -> torch.Tensor:
    """Tiankai et al. (2024): log sigma at the quantiles of a Laplace(mu, beta) distribution for
    evenly spaced x in [0, 1], kept within [sigma_min, sigma_max]. As ComfyUI's, `steps` sigmas and
    no final 0: sampling stops at the last one."""
    x = torch.linspace(0, 1, steps)
    log_sigma = mu - beta * torch.sign(0.5 - x) * torch.log(1 - 2 * torch.abs(0.5 - x) + 1e-5)
    return torch.clamp(torch.exp(log_sigma), min=sigma_min, max=sigma_max)


def sgm_uniform_sigmas(schedule: DiscreteSchedule, steps: int) -> torch.Tensor:
    """SGM/"SGM Uniform": `steps + 1` evenly spaced timesteps from the last to the first, the final
    one (sigma_min) replaced by 0, so every step but the last lands on a spaced timestep."""
    t = torch.linspace(len(schedule.sigmas) - 1, 0, steps + 1)[:-1]
    return _append_zero(schedule.t_to_sigma(t))


def simple_sigmas(schedule: DiscreteSchedule, steps: int) -> torch.Tensor:
    """ComfyUI/A1111 "simple": every (N/steps)-th model sigma counted down from the last."""
    n = len(schedule.sigmas)
    stride = n / steps
    return _append_zero(schedule.sigmas[[n - 1 - int(i * stride) for i in range(steps)]])


def ddim_uniform_sigmas(schedule: DiscreteSchedule, steps: int) -> torch.Tensor:
    """DDIM's uniform timesteps 1, 1+c, 1+2c, ... (c = N // steps), largest first, then 0. This is the
    grid of A1111's DDIM and diffusers' DDIM ("leading" spacing, steps_offset=1). As in A1111 and
    ComfyUI, a step count that does not divide N gives more than `steps` steps."""
    n = len(schedule.sigmas)
    return _append_zero(schedule.sigmas[list(range(1, n, max(n // steps, 1)))].flip(0))


def beta_sigmas(schedule: DiscreteSchedule, steps: int, alpha: float = 0.6, beta: float = 0.6) -> torch.Tensor:
    """ComfyUI's "beta" (Lee et al. 2024, arXiv:2407.12173): timesteps at the Beta(alpha, beta)
    quantiles 1, 1 - 1/steps, ..., 1/steps of the model's range, rounded to whole timesteps
    (half to even, as numpy.rint), repeats dropped. A1111's "Beta" instead spaces sigma linearly
    between sigma_min and sigma_max at those quantiles; we follow ComfyUI."""
    last = len(schedule.sigmas) - 1
    ts: list[int] = []
    for i in range(steps):
        t = round(beta_ppf(1 - i / steps, alpha, beta) * last)
        if not ts or t != ts[-1]:
            ts.append(t)
    return _append_zero(schedule.sigmas[ts])


def linear_quadratic_sigmas(schedule: DiscreteSchedule, steps: int, threshold_noise: float = 0.025,
                            linear_steps: int | None = None) -> torch.Tensor:
    """ComfyUI's "linear_quadratic" (from Mochi's sampler), as a fraction of the model's sigma_max:
    the first `linear_steps` (half) of the steps lower it linearly to 1 - threshold_noise, the rest
    along the quadratic in the step index that continues with the same slope and reaches 0 at the end.
    One step is sigma_max then 0."""
    if steps == 1:
        frac = [1.0, 0.0]
    else:
        n_lin = steps // 2 if linear_steps is None else linear_steps
        n_quad = steps - n_lin
        excess = n_lin - threshold_noise * steps  # what the quadratic part must still cover, times n_lin
        a = excess / (n_lin * n_quad ** 2)
        b = threshold_noise / n_lin - 2 * excess / n_quad ** 2
        c = a * n_lin ** 2
        done = [i * threshold_noise / n_lin for i in range(n_lin)]
        done += [a * i * i + b * i + c for i in range(n_lin, steps)]
        frac = [1.0 - v for v in [*done, 1.0]]
    return torch.tensor(frac, dtype=torch.float64).float() * schedule.sigma_max


def kl_optimal_sigmas(schedule: DiscreteSchedule, steps: int) -> torch.Tensor:
    """"KL Optimal" (A1111 PR 15608, ComfyUI's kl_optimal): evenly spaced in arctan(sigma) from
    sigma_max to sigma_min, then 0 (ComfyUI's ending; A1111's stops at sigma_min instead). One step
    is sigma_max then 0, where ComfyUI divides by zero."""
    return kl_optimal(schedule.sigma_min, schedule.sigma_max, steps)


def kl_optimal(sigma_min: float, sigma_max: float, steps: int) -> torch.Tensor:
    """Evenly spaced in arctan(sigma) from sigma_max to sigma_min, then 0."""
    frac = torch.arange(steps, dtype=torch.float32) / max(steps - 1, 1)
    lo, hi = math.atan(sigma_min), math.atan(sigma_max)
    return _append_zero(torch.tan(frac * lo + (1 - frac) * hi))


SCHEDULES = {
    "normal": normal_sigmas,
    "karras": karras_sigmas,
    "exponential": exponential_sigmas,
    "sgm_uniform": sgm_uniform_sigmas,
    "simple": simple_sigmas,
    "beta": beta_sigmas,
    "ddim_uniform": ddim_uniform_sigmas,
    "linear_quadratic": linear_quadratic_sigmas,
    "kl_optimal": kl_optimal_sigmas,
}


def make_sigmas(schedule_id: str, model_schedule: DiscreteSchedule, steps: int,
                sampler: str | None = None, family: str | None = None, options: Mapping | None = None,
                txt2img: bool = False) -> torch.Tensor:
    """Sigmas (ending in 0) for `steps` steps of a schedule (id or any name names.py accepts).

    Pass the sampler (id or name) to apply A1111/ComfyUI's "discard penultimate sigma": DPM2,
    DPM2 a, DPM++ 3M SDE and UniPC run on the schedule for steps+1 with the next-to-last sigma
    dropped (still `steps` steps). `family` (models.config) picks Align Your Steps' table: SDXL's
    for the SDXL families, SD1's otherwise (as A1111 does). `options`: A1111's schedule settings
    (schedule_options.py); `txt2img`: a first pass from noise (UniPC's skip type applies there only).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InvalidArgument(f"steps: must be a whole number of at least 1, not {steps!r}")
    sched = scheduler_id(schedule_id, sampler)
    sid = None if sampler is None else sampler_id(sampler)
    extra, discard = SO.discards(sid, sid in DISCARD_PENULTIMATE, options)
    n = steps + extra
    if sched == "align_your_steps":
        sigmas = a1111_ays_sigmas(family in ("sdxl", "sdxl_refiner"), n)
    elif options:
        sigmas = _with_options(sched, model_schedule, n, sid, options, txt2img)
    else:
        sigmas = SCHEDULES[sched](model_schedule, n)
    return torch.cat([sigmas[:-2], sigmas[-1:]]) if discard else sigmas


def _with_options(sched: str, model: DiscreteSchedule, n: int, sampler: str | None, options: Mapping,
                  txt2img: bool) -> torch.Tensor:
    """`n` steps of `sched` under A1111's schedule settings (each falls back to the plain schedule)."""
    skip = SO.get(options, "uni_pc_skip_type")
    if sampler == "uni_pc" and sched == "normal" and txt2img and skip != "time_uniform":
        if skip == "logSNR":  # even in log SNR = even in log sigma over the model's range
            return exponential(model.sigma_min, model.sigma_max, n)
        return _append_zero(model.t_to_sigma(SO.unipc_timesteps(skip, n)))
    if sched == "beta":
        return beta_sigmas(model, n, SO.get(options, "beta_dist_alpha"), SO.get(options, "beta_dist_beta"))
    span = SO.sigma_range(model.sigma_min, model.sigma_max, options) if sched in SO.RANGED else None
    rho = SO.rho(sched, options)
    if span is None and rho is None:
        return SCHEDULES[sched](model, n)
    lo, hi = span or (model.sigma_min, model.sigma_max)
    if sched == "karras":
        return karras(lo, hi, n, SO.KARRAS_RHO if rho is None else rho)
    if sched == "exponential":
        return exponential(lo, hi, n)
    if sched == "kl_optimal":
        return kl_optimal(lo, hi, n)
    t = torch.linspace(float(model.sigma_to_t(torch.tensor(hi))), float(model.sigma_to_t(torch.tensor(lo))),
                       n + 1)[:-1]  # sgm_uniform between the range's timesteps, as A1111's
    return _append_zero(model.t_to_sigma(t))


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas.float(), sigmas.new_zeros(1, dtype=torch.float32)])


# --- the Beta distribution's quantile function, so "beta" needs no scipy ---------------------

def beta_ppf(p: float, a: float, b: float) -> float:
    """x with I_x(a, b) = p (the Beta(a, b) inverse CDF), to double precision, by bisection on the
    regularized incomplete beta function. Symmetric shapes return exactly 1/2 at p = 1/2, as
    scipy/Boost do; that matters where a timestep lands on a .5 before rounding."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], not {p}")
    if a == b and p > 0.5:
        return 1.0 - beta_ppf(1.0 - p, a, b)
    if p in (0.0, 1.0) or (a == b and p == 0.5):
        return p
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if beta_cdf(mid, a, b) < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def beta_cdf(x: float, a: float, b: float) -> float:
    """Regularized incomplete beta function I_x(a, b), by its continued fraction (modified Lentz),
    using I_x(a, b) = 1 - I_{1-x}(b, a) where the fraction converges faster."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1) / (a + b + 2):
        return 1.0 - beta_cdf(1.0 - x, b, a)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    return math.exp(log_front) / a * _beta_continued_fraction(x, a, b)


def _beta_continued_fraction(x: float, a: float, b: float) -> float:
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 1000):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return result
