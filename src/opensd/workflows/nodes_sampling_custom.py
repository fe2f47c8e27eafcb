"""ComfyUI's custom sampling nodes: samplers, sigma schedules, noise and guiders as separate
values, put together by SamplerCustom / SamplerCustomAdvanced (one run shared with KSampler,
ksampler.run). SIGMAS are 1-D float tensors on the CPU."""
from __future__ import annotations

import torch

from ..sampling.align_your_steps import NOISE_LEVELS, ays_sigmas
from ..sampling.gits import MIN_STEPS, gits_sigmas
from ..sampling.names import scheduler_id
from ..errors import InvalidArgument
from ..sampling.schedules import beta_sigmas, exponential, karras, laplace, make_sigmas, polyexponential, vp
from . import ksampler
from .guiders import BasicGuider, CFGGuider, DualCFGGuider
from .nodes_core import SAMPLERS, SCHEDULERS, step_reporter
from .types import MAX_SEED, NodeDef, NoiseRef, SamplerRef, register

_MODULE = "comfy_extras.nodes_custom_sampler"
_CATEGORY = "sampling/custom_sampling"


def _node(name, fn, required, outputs, category, **kw):
    kw.setdefault("module", _MODULE)
    register(NodeDef(name, fn, required, outputs, category=f"{_CATEGORY}/{category}" if category else _CATEGORY,
                     **kw))


_STEPS = ("INT", {"default": 20, "min": 1, "max": 10000})
_DENOISE = ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01})
_SEED = ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True})
_CFG = ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01})


def _sigma(default: float):
    return ("FLOAT", {"default": default, "min": 0.0, "max": 5000.0, "step": 0.01, "round": False})


# --- samplers and schedules ----------------------------------------------------------------------

def ksampler_select(call, sampler_name):
    return (SamplerRef(sampler_name),)


_node("KSamplerSelect", ksampler_select, {"sampler_name": (SAMPLERS, {})}, ("SAMPLER",), "samplers")


def basic_scheduler(call, model, scheduler, steps, denoise):
    total = steps
    if denoise < 1.0:
        if denoise <= 0.0:
            return (torch.zeros(0),)
        total = int(steps / denoise)
    sigmas = make_sigmas(scheduler_id(scheduler), ksampler.sampling_of(model).schedule, total)
    return (sigmas[-(steps + 1):],)


_node("BasicScheduler", basic_scheduler,
      {"model": ("MODEL", {}), "scheduler": (SCHEDULERS, {}), "steps": _STEPS, "denoise": _DENOISE},
      ("SIGMAS",), "schedulers")


def karras_scheduler(call, steps, sigma_max, sigma_min, rho):
    return (karras(sigma_min, sigma_max, steps, rho),)


_node("KarrasScheduler", karras_scheduler,
      {"steps": _STEPS, "sigma_max": _sigma(14.614642), "sigma_min": _sigma(0.0291675),
       "rho": ("FLOAT", {"default": 7.0, "min": 0.0, "max": 100.0, "step": 0.01, "round": False})},
      ("SIGMAS",), "schedulers")


def exponential_scheduler(call, steps, sigma_max, sigma_min):
    return (exponential(sigma_min, sigma_max, steps),)


_node("ExponentialScheduler", exponential_scheduler,
      {"steps": _STEPS, "sigma_max": _sigma(14.614642), "sigma_min": _sigma(0.0291675)}, ("SIGMAS",), "schedulers")


def polyexponential_scheduler(call, steps, sigma_max, sigma_min, rho):
    return (polyexponential(sigma_min, sigma_max, steps, rho),)


def _float(default: float, lo: float, hi: float, step: float):
    return ("FLOAT", {"default": default, "min": lo, "max": hi, "step": step, "round": False})


_node("PolyexponentialScheduler", polyexponential_scheduler,
      {"steps": _STEPS, "sigma_max": _sigma(14.614642), "sigma_min": _sigma(0.0291675),
       "rho": _float(1.0, 0.0, 100.0, 0.01)}, ("SIGMAS",), "schedulers")


def laplace_scheduler(call, steps, sigma_max, sigma_min, mu, beta):
    return (laplace(sigma_min, sigma_max, steps, mu, beta),)


_node("LaplaceScheduler", laplace_scheduler,
      {"steps": _STEPS, "sigma_max": _sigma(14.614642), "sigma_min": _sigma(0.0291675),
       "mu": _float(0.0, -10.0, 10.0, 0.1), "beta": _float(0.5, 0.0, 10.0, 0.1)}, ("SIGMAS",), "schedulers")


def vp_scheduler(call, steps, beta_d, beta_min, eps_s):
    return (vp(steps, beta_d, beta_min, eps_s),)


_node("VPScheduler", vp_scheduler,
      {"steps": _STEPS, "beta_d": _float(19.9, 0.0, 5000.0, 0.01), "beta_min": _float(0.1, 0.0, 5000.0, 0.01),
       "eps_s": _float(0.001, 0.0, 1.0, 0.0001)}, ("SIGMAS",), "schedulers")


def sd_turbo_scheduler(call, model, steps, denoise):
    """SD-Turbo's timesteps 999, 899, ..., 99: `steps` of them, starting later for denoise < 1."""
    start = 10 - int(10 * denoise)
    timesteps = (torch.arange(1, 11) * 100 - 1).flip(0)[start:start + steps]
    sampling = ksampler.sampling_of(model)
    sigmas = torch.tensor([sampling.sigma_at(float(t)) for t in timesteps], dtype=torch.float32)
    return (torch.cat([sigmas, sigmas.new_zeros(1)]),)


_node("SDTurboScheduler", sd_turbo_scheduler,
      {"model": ("MODEL", {}), "steps": ("INT", {"default": 1, "min": 1, "max": 10}),
       "denoise": ("FLOAT", {"default": 1.0, "min": 0, "max": 1.0, "step": 0.01})},
      ("SIGMAS",), "schedulers")


def beta_sampling_scheduler(call, model, steps, alpha, beta):
    for name, value in (("alpha", alpha), ("beta", beta)):
        if value <= 0:  # the Beta distribution has no shape 0 (ComfyUI's scipy gives NaN sigmas)
            raise InvalidArgument(f"{name}: must be above 0 (a shape of the Beta distribution), not {value}")
    return (beta_sigmas(ksampler.sampling_of(model).schedule, steps, alpha, beta),)


_BETA_SHAPE = ("FLOAT", {"default": 0.6, "min": 0.0, "max": 50.0, "step": 0.01, "round": False})
_node("BetaSamplingScheduler", beta_sampling_scheduler,
      {"model": ("MODEL", {}), "steps": _STEPS, "alpha": _BETA_SHAPE, "beta": _BETA_SHAPE}, ("SIGMAS",), "schedulers")


def _table_tail(sigmas, steps, denoise):
    """A table schedule's (AYS, GITS) last round(steps * denoise) steps; no sigmas at denoise 0."""
    if denoise <= 0.0:
        return (torch.zeros(0),)
    total = round(steps * denoise) if denoise < 1.0 else steps
    return (sigmas()[-(total + 1):],)


def align_your_steps_scheduler(call, model_type, steps, denoise):
    return _table_tail(lambda: ays_sigmas(model_type, steps), steps, denoise)


_node("AlignYourStepsScheduler", align_your_steps_scheduler,
      {"model_type": (list(NOISE_LEVELS), {}), "steps": ("INT", {"default": 10, "min": 1, "max": 10000}),
       "denoise": _DENOISE},
      ("SIGMAS",), "schedulers", module="comfy_extras.nodes_align_your_steps")


def gits_scheduler(call, coeff, steps, denoise):
    return _table_tail(lambda: gits_sigmas(coeff, steps), steps, denoise)


_node("GITSScheduler", gits_scheduler,
      {"coeff": ("FLOAT", {"default": 1.20, "min": 0.80, "max": 1.50, "step": 0.05}),
       "steps": ("INT", {"default": 10, "min": MIN_STEPS, "max": 1000}), "denoise": _DENOISE},
      ("SIGMAS",), "schedulers", module="comfy_extras.nodes_gits")


def split_sigmas(call, sigmas, step):
    return sigmas[:step + 1], sigmas[step:]


_node("SplitSigmas", split_sigmas, {"sigmas": ("SIGMAS", {}), "step": ("INT", {"default": 0, "min": 0, "max": 10000})},
      ("SIGMAS", "SIGMAS"), "sigmas", output_names=("high_sigmas", "low_sigmas"))


def flip_sigmas(call, sigmas):
    if len(sigmas) == 0:
        return (sigmas,)
    sigmas = sigmas.flip(0)
    if sigmas[0] == 0:
        sigmas[0] = 0.0001  # a sampler cannot start from sigma 0
    return (sigmas,)


_node("FlipSigmas", flip_sigmas, {"sigmas": ("SIGMAS", {})}, ("SIGMAS",), "sigmas")


# --- noise and guiders ---------------------------------------------------------------------------

def random_noise(call, noise_seed):
    return (NoiseRef(noise_seed),)


def disable_noise(call):
    return (NoiseRef(None),)


_node("RandomNoise", random_noise, {"noise_seed": _SEED}, ("NOISE",), "noise")
_node("DisableNoise", disable_noise, {}, ("NOISE",), "noise")


def cfg_guider(call, model, positive, negative, cfg):
    return (CFGGuider(model, positive, negative, cfg),)


def basic_guider(call, model, conditioning):
    return (BasicGuider(model, conditioning),)


def dual_cfg_guider(call, model, cond1, cond2, negative, cfg_conds, cfg_cond2_negative):
    return (DualCFGGuider(model, cond1, cond2, negative, cfg_conds, cfg_cond2_negative),)


_node("CFGGuider", cfg_guider,
      {"model": ("MODEL", {}), "positive": ("CONDITIONING", {}), "negative": ("CONDITIONING", {}), "cfg": _CFG},
      ("GUIDER",), "guiders")
_node("BasicGuider", basic_guider, {"model": ("MODEL", {}), "conditioning": ("CONDITIONING", {})},
      ("GUIDER",), "guiders")
_node("DualCFGGuider", dual_cfg_guider,
      {"model": ("MODEL", {}), "cond1": ("CONDITIONING", {}), "cond2": ("CONDITIONING", {}),
       "negative": ("CONDITIONING", {}), "cfg_conds": _CFG, "cfg_cond2_negative": _CFG},
      ("GUIDER",), "guiders")


# --- sampling --------------------------------------------------------------------------------------

def _sample(call, guider, noise_seed: int | None, sampler_seed: int, sampler, sigmas, latent_image):
    """Sample from noise of `noise_seed` (None: none added); ancestral samplers draw their per-step
    noise from `sampler_seed` (DisableNoise's is 0, as in ComfyUI)."""
    samples = ksampler.fix_empty_latent(guider.model, latent_image)
    latent = dict(latent_image, samples=samples)
    if noise_seed is None:
        noise = torch.zeros_like(samples)
    else:
        noise = ksampler.prepare_noise(samples, noise_seed, latent_image.get("batch_index"))
    out, denoised = ksampler.run(guider, noise, samples, sampler, sigmas, sampler_seed,
                                 latent_image.get("noise_mask"), step_reporter(call, guider.model),
                                 call.ctx.should_stop)
    return _latent(latent, out), _latent(latent, denoised)


def _latent(latent: dict, samples: torch.Tensor) -> dict:
    out = dict(latent, samples=samples)
    if samples.shape[2:] != latent["samples"].shape[2:]:  # SamplerLCMUpscale enlarged it
        out.pop("pixel_size", None)
    return out


def sampler_custom(call, model, add_noise, noise_seed, cfg, positive, negative, sampler, sigmas, latent_image):
    guider = CFGGuider(model, positive, negative, cfg)
    return _sample(call, guider, noise_seed if add_noise else None, noise_seed, sampler, sigmas, latent_image)


_OUT = dict(output_names=("output", "denoised_output"))
_node("SamplerCustom", sampler_custom,
      {"model": ("MODEL", {}), "add_noise": ("BOOLEAN", {"default": True}), "noise_seed": _SEED, "cfg": _CFG,
       "positive": ("CONDITIONING", {}), "negative": ("CONDITIONING", {}), "sampler": ("SAMPLER", {}),
       "sigmas": ("SIGMAS", {}), "latent_image": ("LATENT", {})},
      ("LATENT", "LATENT"), None, **_OUT)


def sampler_custom_advanced(call, noise, guider, sampler, sigmas, latent_image):
    return _sample(call, guider, noise.seed, noise.seed or 0, sampler, sigmas, latent_image)


_node("SamplerCustomAdvanced", sampler_custom_advanced,
      {"noise": ("NOISE", {}), "guider": ("GUIDER", {}), "sampler": ("SAMPLER", {}), "sigmas": ("SIGMAS", {}),
       "latent_image": ("LATENT", {})},
      ("LATENT", "LATENT"), None, **_OUT)
