"""A1111's noise-schedule settings, as one JSON-safe dict a generation carries (Params.schedule_options),
keyed by A1111's setting names, with A1111's math (modules/sd_samplers_kdiffusion.get_sigmas,
sd_schedulers, sd_samplers_timesteps, sd_models.apply_alpha_schedule_override):

- sigma_min / sigma_max (0: the model's): the range of the schedules that take one (Karras,
  Exponential, KL Optimal, SGM Uniform); "Automatic" on a sampler without a schedule of its own
  (the model's own sigmas), Simple, DDIM, Beta and Align Your Steps do not take one (A1111's
  "Normal", picked by name, does; here it is the same schedule as "Uniform" and does not);
- rho (0: the schedule's own): Karras's (7);
- use_old_karras_scheduler_sigmas: the range is 0.1..10 (A1111 before 1.0) before those two;
- always_discard_next_to_last_sigma: every sampler runs on steps+1 sigmas with the next-to-last
  dropped, as DPM2 does (A1111's timestep samplers, DDIM, PLMS and UniPC, run one more step instead);
- sd_noise_schedule "Zero Terminal SNR": alphas_cumprod rescaled so the last timestep has zero SNR
  (Lin et al. 2023), its last value set to 4.8973451890853435e-08 so sigma_max stays finite (~4500);
- use_downcasted_alpha_bar: alphas_cumprod rounded to fp16, sigmas computed from it in fp16 (as
  k-diffusion does from an fp16 buffer), before any rescale (these two do nothing for flow models,
  which have no alphas_cumprod, as in Forge);
- sgm_noise_multiplier: txt2img's first-pass noise is scaled by sqrt(1 + sigma_max^2), not sigma_max
  (k-diffusion samplers only);
- beta_dist_alpha / beta_dist_beta: the Beta schedule's distribution;
- enable_quantization: the network sees the timestep nearest each sigma, not one interpolated
  between two (k-diffusion's `quantize`, which A1111's samplers, its schedules' sigma-to-timestep
  included, use with it on);
- uni_pc_skip_type: UniPC's time grid in txt2img (A1111 keeps time_uniform for img2img): uniform
  in time, in sqrt(time) ("time_quadratic") or in log-SNR ("logSNR").

The infotext keys are A1111's; each is written when the setting is in effect and off its default
(A1111 always writes the Beta keys with the Beta schedule).
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from ..errors import InvalidArgument

# A1111 setting -> (default, infotext key or None where A1111 writes none)
SETTINGS: dict[str, tuple[object, str | None]] = {
    "sigma_min": (0.0, "Schedule min sigma"),
    "sigma_max": (0.0, "Schedule max sigma"),
    "rho": (0.0, "Schedule rho"),
    "always_discard_next_to_last_sigma": (False, "Discard penultimate sigma"),
    "sd_noise_schedule": ("Default", "Noise Schedule"),
    "sgm_noise_multiplier": (False, "SGM noise multiplier"),
    "use_downcasted_alpha_bar": (False, "Downcast alphas_cumprod"),
    "beta_dist_alpha": (0.6, "Beta schedule alpha"),
    "beta_dist_beta": (0.6, "Beta schedule beta"),
    "uni_pc_skip_type": ("time_uniform", "UniPC skip type"),
    "use_old_karras_scheduler_sigmas": (False, None),
    "enable_quantization": (False, None),
}
CHOICES = {"sd_noise_schedule": ("Default", "Zero Terminal SNR"),
           "uni_pc_skip_type": ("time_uniform", "time_quadratic", "logSNR")}
# A1111's paste reads the Beta values under its settings' own labels ("Beta scheduler alpha").
READ_ALSO = {"Beta scheduler alpha": "beta_dist_alpha", "Beta scheduler beta": "beta_dist_beta"}
ZTSNR_LAST = 4.8973451890853435e-08  # A1111's (and ComfyUI's) last alphas_cumprod under zero terminal SNR
KARRAS_RHO = 7.0
RANGED = frozenset({"karras", "exponential", "kl_optimal", "sgm_uniform"})  # the schedules that take a range
# A1111's timestep samplers: no sigma schedule, so no SGM multiplier; "discard" runs one more step.
TIMESTEP_SAMPLERS = frozenset({"ddim", "plms", "uni_pc"})


def check(options, where: str = "schedule_options.") -> dict:
    """The options with A1111's defaults left out; a bad value is an InvalidArgument naming it."""
    if not isinstance(options, Mapping):
        raise InvalidArgument(f"{where.rstrip('.')}: expected an object, got {options!r}")
    out = {}
    for name, value in options.items():
        if name not in SETTINGS:
            raise InvalidArgument(f"{where}{name}: not a schedule setting ({', '.join(SETTINGS)})")
        problem = _problem(name, value)
        if problem:
            raise InvalidArgument(f"{where}{name}: {problem}")
        if value != SETTINGS[name][0]:
            out[name] = value
    if out.get("use_downcasted_alpha_bar") and out.get("sd_noise_schedule", "Default") != "Default":
        raise InvalidArgument(f"{where}use_downcasted_alpha_bar: cannot go with sd_noise_schedule "
                              "'Zero Terminal SNR': fp16 cannot hold its largest sigma (A1111 samples from an "
                              "infinite one)")
    lo, hi = out.get("sigma_min", 0), out.get("sigma_max", 0)
    if lo and hi and lo >= hi:
        raise InvalidArgument(f"{where}sigma_min: {lo} must be below sigma_max {hi}")
    return out


def _problem(name: str, value) -> str | None:
    default = SETTINGS[name][0]
    if isinstance(default, bool):
        return None if isinstance(value, bool) else f"expected true or false, got {value!r}"
    if isinstance(default, str):
        return None if value in CHOICES[name] else f"{value!r} is not one of {', '.join(CHOICES[name])}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return f"expected a finite number, got {value!r}"
    if name.startswith("beta_dist_"):
        return None if value > 0 else f"{value!r} must be above 0"
    return None if value >= 0 else f"{value!r} must be 0 (the default) or more"


def get(options: Mapping | None, name: str):
    return (options or {}).get(name, SETTINGS[name][0])


# --- the model's noise schedule -----------------------------------------------------------------

def rescale_zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Lin et al. (2023), Algorithm 1 on alphas_cumprod: sqrt(alpha_bar) shifted so the last is 0 and
    scaled so the first is unchanged, squared; the last then set to ZTSNR_LAST (A1111's rule), in the
    input's dtype."""
    root = alphas_cumprod.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    out = root ** 2
    out[-1] = ZTSNR_LAST
    return out


def model_alphas(alphas_cumprod: torch.Tensor, options: Mapping | None) -> tuple[torch.Tensor, bool]:
    """(alphas_cumprod, half) the generation samples with: downcast to fp16 first, then rescaled to
    zero terminal SNR, as A1111 applies them; `half` says the sigmas are to be computed in fp16."""
    half = bool(get(options, "use_downcasted_alpha_bar"))
    ac = alphas_cumprod.half() if half else alphas_cumprod
    if get(options, "sd_noise_schedule") == "Zero Terminal SNR":
        ac = rescale_zero_terminal_snr(ac)
    return ac, half


# they change the model's schedule (alphas_cumprod, or how it maps sigmas to timesteps)
MODEL_SETTINGS = ("use_downcasted_alpha_bar", "sd_noise_schedule", "enable_quantization")


def changes_model(options: Mapping | None) -> bool:
    return any(get(options, name) != SETTINGS[name][0] for name in MODEL_SETTINGS)


# --- the sigma sequence ---------------------------------------------------------------------------

def discards(sampler: str, own: bool, options: Mapping | None) -> tuple[int, bool]:
    """(extra steps, drop the next-to-last sigma) for `sampler`, whose own rule is `own`. Under
    "always", A1111's timestep samplers run their grid for one more step: DDIM and PLMS as they are,
    UniPC (whose own rule lands it on A1111's grid) with its discard on top."""
    always = get(options, "always_discard_next_to_last_sigma")
    if always and sampler in ("ddim", "plms"):
        return 1, False
    if always and sampler == "uni_pc":
        return 2, True
    return (1, True) if own or always else (0, False)


def sigma_range(model_min: float, model_max: float, options: Mapping | None) -> tuple[float, float] | None:
    """(sigma_min, sigma_max) for the schedules that take a range, or None where it is the model's."""
    lo, hi = (0.1, 10.0) if get(options, "use_old_karras_scheduler_sigmas") else (model_min, model_max)
    set_lo, set_hi = get(options, "sigma_min"), get(options, "sigma_max")
    lo = set_lo if set_lo and set_lo != model_min else lo
    hi = set_hi if set_hi and set_hi != model_max else hi
    if (lo, hi) == (model_min, model_max):
        return None
    if lo >= hi:
        raise InvalidArgument(f"sigma_min: {lo} must be below sigma_max {hi} (the model's range is "
                              f"{model_min:.4g}..{model_max:.4g})")
    return lo, hi


def rho(schedule: str, options: Mapping | None) -> float | None:
    """Karras's rho when the setting changes it (A1111: not 0 and not the schedule's default)."""
    value = get(options, "rho")
    return value if schedule == "karras" and value and value != KARRAS_RHO else None


def sgm_noise(sampler: str, options: Mapping | None) -> bool:
    """Whether txt2img's first-pass noise is scaled by sqrt(1 + sigma^2) (k-diffusion samplers only)."""
    return bool(get(options, "sgm_noise_multiplier")) and sampler not in TIMESTEP_SAMPLERS


def unipc_timesteps(skip_type: str, n: int) -> torch.Tensor:
    """UniPC's `n` (continuous-time) grid points from t=1 to t=1/1000 by `skip_type`, as discrete
    timesteps 999..0 (t * 1000 - 1); logSNR is handled by the caller (even in log sigma)."""
    if skip_type == "time_quadratic":
        t = torch.linspace(1.0, 0.001 ** 0.5, n, dtype=torch.float64) ** 2
    else:
        t = torch.linspace(1.0, 0.001, n, dtype=torch.float64)
    return (t * 1000 - 1).float()


# --- infotext -------------------------------------------------------------------------------------

def written(sampler: str, schedule: str, options: Mapping | None, txt2img: bool, own_discard: bool,
            model_min: float, model_max: float) -> dict:
    """{A1111 infotext key: value} for the options this run took, as A1111 writes them."""
    opts = options or {}
    out: dict = {}
    if schedule in RANGED:
        for name, model in (("sigma_min", model_min), ("sigma_max", model_max)):
            if opts.get(name) and opts[name] != model:
                out[SETTINGS[name][1]] = opts[name]
    if rho(schedule, opts) is not None:
        out["Schedule rho"] = opts["rho"]
    if opts.get("always_discard_next_to_last_sigma") and not own_discard:
        out["Discard penultimate sigma"] = True
    if changes_model(opts):
        if opts.get("use_downcasted_alpha_bar"):
            out["Downcast alphas_cumprod"] = True
        if opts.get("sd_noise_schedule", "Default") != "Default":
            out["Noise Schedule"] = opts["sd_noise_schedule"]
    if txt2img and sgm_noise(sampler, opts):
        out["SGM noise multiplier"] = True
    if schedule == "beta":
        out["Beta schedule alpha"] = get(opts, "beta_dist_alpha")
        out["Beta schedule beta"] = get(opts, "beta_dist_beta")
    if sampler == "uni_pc" and opts.get("uni_pc_skip_type", "time_uniform") != "time_uniform":
        out["UniPC skip type"] = opts["uni_pc_skip_type"]
    return out


def read(params: Mapping[str, str], where: str = "from") -> dict:
    """The options an infotext's keys give (A1111's keys, and its paste labels for Beta)."""
    keys = {key: name for name, (_, key) in SETTINGS.items() if key is not None}
    keys.update(READ_ALSO)
    out = {}
    for key, name in keys.items():
        if key not in params:
            continue
        default, text = SETTINGS[name][0], params[key]
        try:
            if isinstance(default, bool):
                if text not in ("True", "False"):
                    raise ValueError
                value = text == "True"
            elif isinstance(default, float):
                value = float(text)
            else:
                value = text
        except ValueError:
            raise InvalidArgument(f"{where}: {key}: {text!r} is not a valid value") from None
        out[name] = value
    return check(out, f"{where}: ")
