"""Rectified flow (SD3, Flux): x_sigma = (1 - sigma) x0 + sigma noise with sigma in [0, 1], and the
network predicts the velocity v = noise - x0 (ComfyUI's CONST model sampling).

* denoised = x - sigma v: the network sees x itself (no input scaling) at time sigma * multiplier
  (SD3: 1000, Flux: 1);
* noise enters as sigma noise + (1 - sigma) latent, not latent + sigma noise;
* the schedule is a shifted time: SD3's sigma = s t / (1 + (s - 1) t) (shift s, 3.0 by default),
  Flux's exponential shift exp(mu) / (exp(mu) + 1/t - 1) (mu from the image size for dev).

The samplers walk sigma as they do for any model. dx/dsigma = (x - denoised) / sigma is the flow's
ODE, so the deterministic samplers (Euler, Heun, DPM2, LMS, DPM++ 2M, UniPC) run on x unchanged, as
ComfyUI runs them. Samplers that add noise assume x = x0 + sigma noise: they run on the equivalent
variance-exploding variables y = x / (1 - sigma), sigma_ve = sigma / (1 - sigma), where their noise
is right (a first sigma of 1 is moved just below it, as ComfyUI does for its SDE samplers). Euler a
takes ComfyUI's flow form instead (step down to sigma_next * (1 + (sigma_next / sigma - 1) eta),
rescale by the ratio of the alphas and renoise), so the same seed walks ComfyUI's path.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import InvalidArgument
from .cfg_pp import Guided
from .denoiser import moved_like
from .names import sampler_id
from .samplers import get_sampler

TABLE_SIZE = 1000
FLUX_TABLE_SIZE = 10000  # ComfyUI's Flux sampling tables its time finer than SD3's
# The samplers that never add noise (without churn): they integrate the flow's ODE directly (the
# second line: ComfyUI runs these on flow latents unchanged too).
DETERMINISTIC = frozenset({"euler", "heun", "dpm_2", "lms", "dpmpp_2m", "uni_pc",
                           "uni_pc_bh2", "heunpp2", "ipndm", "ipndm_v", "res_multistep", "res_multistep_cfg_pp",
                           "gradient_estimation", "gradient_estimation_cfg_pp"})
FIRST_OFFSET = 1e-4  # a first sigma of 1 becomes the sigma at this fraction of the run


def sd3_shift(shift: float, t: torch.Tensor) -> torch.Tensor:
    return shift * t / (1 + (shift - 1) * t)


def flux_shift(mu: float, t: torch.Tensor) -> torch.Tensor:
    """Flux's exponential time shift; mu 0 is no shift."""
    if mu == 0:
        return t
    e = math.exp(mu)
    return torch.where(t > 0, e / (e + (1 / t.clamp(min=1e-12) - 1)), torch.zeros_like(t))


def flux_mu(tokens: float, base: float = 0.5, top: float = 1.15, base_len: int = 256, top_len: int = 4096) -> float:
    """Flux dev's shift for an image of `tokens` 2x2-latent patches (16x16 pixels with its VAE):
    linear, `base` at `base_len` tokens and `top` at `top_len` (ComfyUI's ModelSamplingFlux,
    diffusers' calculate_shift with the scheduler config's base/max shift and image_seq_len)."""
    slope = (top - base) / (top_len - base_len)
    return tokens * slope + base - slope * base_len


def stretched_to_terminal(shift_fn: Callable[[torch.Tensor], torch.Tensor], terminal: float,
                          steps: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """diffusers' shift_terminal: a run of `steps` steps' shifted times stretched (1 - sigma scaled)
    so that the last, at time 1 / steps, is `terminal` and the first stays 1; below that time the
    schedule falls linearly to 0."""
    last = float(shift_fn(torch.tensor(1.0 / steps, dtype=torch.float64)))
    factor = (1 - terminal) / (1 - last)

    def fn(t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64)
        return torch.where(t * steps >= 1 - 1e-9, 1 - (1 - shift_fn(t)) * factor, terminal * t * steps)

    return fn



def flux2_mu(tokens: int, steps: int) -> float:
    """FLUX.2's shift (BFL's empirical fit, used by diffusers' Flux2 pipelines and ComfyUI's
    Flux2Scheduler) for `tokens` latent cells (16x16 pixels each) sampled in `steps` steps: linear in
    the tokens on two lines fitted at 10 and 200 steps, interpolated linearly in the steps; above
    4300 tokens the 200-step line alone."""
    at_200 = 1.6927e-4 * tokens + 0.45666666
    if tokens > 4300:
        return at_200
    at_10 = 8.73809524e-05 * tokens + 1.89833333
    return at_200 + (at_200 - at_10) / 190.0 * (steps - 200)

class FlowSchedule:
    """DiscreteSchedule's interface (schedules.py) over a shifted flow time `shift_fn(t)`, t in (0, 1].

    `sigmas`: the table shift_fn(i / n), i = 1..n, increasing (simple, beta and ddim_uniform pick
    from it). t_to_sigma maps an index t in [0, n - 1] linearly onto the times [sigma_min, 1] and
    shifts them: the normal and sgm_uniform schedules then equal ComfyUI's for flow models (which
    space timesteps between sigma_min and sigma_max taken as times), and for SD3 diffusers'
    FlowMatchEulerDiscreteScheduler."""

    def __init__(self, shift_fn: Callable[[torch.Tensor], torch.Tensor], size: int = TABLE_SIZE):
        self.shift_fn = shift_fn
        t = torch.arange(1, size + 1, dtype=torch.float64) / size
        self.sigmas = shift_fn(t).float()
        self.log_sigmas = self.sigmas.log()

    @property
    def sigma_min(self) -> float:
        return self.sigmas[0].item()

    @property
    def sigma_max(self) -> float:
        return self.sigmas[-1].item()

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        lo = self.sigma_min
        time = lo + (1 - lo) * t.double() / (len(self.sigmas) - 1)
        return self.shift_fn(time).float()


@dataclass(frozen=True, eq=False)
class FlowSampling:
    """ModelSampling's interface (model_sampling.py) for a rectified-flow model."""
    schedule: FlowSchedule
    multiplier: float = 1000.0  # network time = sigma * multiplier
    prediction = "flow"

    @classmethod
    def sd3(cls, shift: float) -> FlowSampling:
        return cls(FlowSchedule(lambda t: sd3_shift(shift, t)), 1000.0)

    @classmethod
    def aura_flow(cls, shift: float) -> FlowSampling:
        """SD3's shifted schedule with the network's time in [0, 1] (ComfyUI's ModelSamplingAuraFlow;
        Z-Image)."""
        return cls(FlowSchedule(lambda t: sd3_shift(shift, t)), 1.0)

    @classmethod
    def flux(cls, mu: float, steps: int | None = None) -> FlowSampling:
        """`steps`: the table made a multiple of them, so the simple schedule's times are exactly
        1, 1 - 1/steps, ... (FLUX.2's pipelines take them so; Flux.1's tables as ComfyUI's)."""
        size = FLUX_TABLE_SIZE if not steps else steps * -(-FLUX_TABLE_SIZE // steps)
        return cls(FlowSchedule(lambda t: flux_shift(mu, t), size), 1.0)

    @classmethod
    def shifted(cls, shift_fn: Callable[[torch.Tensor], torch.Tensor], steps: int, terminal: float = 0.0) -> FlowSampling:
        """A run of `steps` steps on the shifted times `shift_fn(t)`, the network's time in [0, 1], the
        table a multiple of the steps (the simple schedule's times exactly 1, 1 - 1/steps, ...);
        `terminal`: stretched to end there (stretched_to_terminal; Qwen-Image's scheduler)."""
        size = steps * -(-FLUX_TABLE_SIZE // steps)
        fn = stretched_to_terminal(shift_fn, terminal, steps) if terminal else shift_fn
        return cls(FlowSchedule(fn, size), 1.0)

    @property
    def sigma_max(self) -> float:
        return self.schedule.sigma_max

    @property
    def sigma_min(self) -> float:
        return self.schedule.sigma_min

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma * self.multiplier

    def sigma_at(self, timestep: float) -> float:
        return float(self.schedule.shift_fn(torch.tensor(timestep / self.multiplier, dtype=torch.float64)))

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return self.sigma_at((1.0 - percent) * self.multiplier)

    def noise_scaling(self, sigma, noise: torch.Tensor, latent: torch.Tensor, max_denoise: bool = False) -> torch.Tensor:
        return sigma * noise + (1.0 - sigma) * latent

    def inverse_noise_scaling(self, sigma, latent: torch.Tensor) -> torch.Tensor:
        return latent / (1.0 - sigma)

    def denoise(self, net_fn, x: torch.Tensor, sigma: torch.Tensor, **cond) -> torch.Tensor:
        """denoised = x - sigma * v; net_fn(x, time, **cond) -> v."""
        sigma = moved_like(sigma.reshape(-1).expand(x.shape[0]), x)
        out = net_fn(x, self.timestep(sigma), **cond).to(x.dtype)
        return x - sigma[:, None, None, None] * out

    def sampler(self, name: str) -> Callable:
        """The sampler `name` in this model's flow space (see the module doc)."""
        sid = sampler_id(name)
        if sid == "tcd":
            raise InvalidArgument("sampler: TCD steps on a discrete timestep schedule (SD1/SD2/SDXL models); "
                                  "choose another sampler for this rectified-flow model")
        base = get_sampler(sid)
        if sid == "euler_ancestral":
            return sample_euler_ancestral_rf
        first = self.percent_to_sigma(FIRST_OFFSET)

        def run(denoise, x, sigmas, callback=None, **options):
            if sid in DETERMINISTIC and not options.get("s_churn"):
                return base(denoise, x, sigmas, callback, **options)
            return in_ve_space(base, first, denoise, x, sigmas, callback, **options)

        return run


def in_ve_space(sample_fn, first: float, denoise, x, sigmas, callback=None, **options) -> torch.Tensor:
    """Run a variance-exploding sampler on flow latents: y = x / (1 - sigma), sigma_ve = sigma / (1 - sigma)."""
    s = sigmas.double().clone()
    if len(s) > 1 and s[0] >= 1:
        s[0] = first
    alpha = 1 - s
    ve = (s / alpha).float()

    def to_flow(y, sigma_ve):
        f = sigma_ve.double() / (1 + sigma_ve.double())
        return y * (1 - f).to(y.dtype), f.float()

    def denoise_ve(y, sigma_ve):
        return denoise(*to_flow(y, sigma_ve))

    if isinstance(denoise, Guided):  # CFG++ samplers need both estimates (clean latents: the same in both spaces)
        denoise_ve = Guided(lambda y, sigma_ve: denoise.both(*to_flow(y, sigma_ve)))

    def on_step(i, y, denoised):
        callback(i, y * alpha[i + 1].item(), denoised)

    y = sample_fn(denoise_ve, x / alpha[0].item(), ve, None if callback is None else on_step, **options)
    return y * alpha[-1].item()


@torch.no_grad()
def sample_euler_ancestral_rf(denoise, x: torch.Tensor, sigmas: torch.Tensor, callback=None, *,
                              noise_sampler=None, eta=1.0, s_noise=1.0) -> torch.Tensor:
    """Euler a on a flow model, ComfyUI's form: an Euler step down to sigma_down, the latent rescaled
    from alpha_down = 1 - sigma_down to alpha_next = 1 - sigma_next, then noise that brings the noise
    level to sigma_next."""
    noise = noise_sampler if noise_sampler is not None else (lambda a, b: torch.randn_like(x))
    for i in range(len(sigmas) - 1):
        sigma, nxt = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, sigma)
        if nxt == 0:
            x = denoised
        else:
            down = nxt * (1 + (nxt / sigma - 1) * eta)
            ratio = down / sigma
            x = ratio * x + (1 - ratio) * denoised
            if eta > 0:
                alpha_next, alpha_down = 1 - nxt, 1 - down
                renoise = (nxt ** 2 - down ** 2 * alpha_next ** 2 / alpha_down ** 2) ** 0.5
                x = (alpha_next / alpha_down) * x + noise(sigma, nxt) * s_noise * renoise
        if callback is not None:
            callback(i, x, denoised)
    return x
