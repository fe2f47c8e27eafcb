"""More of ComfyUI's custom sampling nodes (comfy_extras.nodes_custom_sampler), with its names,
inputs and arithmetic: SplitSigmasDenoise, SetFirstSigma, ExtendIntermediateSigmas,
SamplingPercentToSigma and AddNoise; and OptimalStepsScheduler (comfy_extras.nodes_optimalsteps,
Pei et al.'s searched noise levels, log-linearly resampled). SIGMAS are 1-D float tensors on the CPU."""
from __future__ import annotations

import math
import re

import numpy as np
import torch

from ..errors import InvalidArgument
from . import ksampler
from .types import NodeDef, register

_MODULE = "comfy_extras.nodes_custom_sampler"
_SIGMAS = "sampling/custom_sampling/sigmas"


def split_sigmas_denoise(call, sigmas, denoise):
    """The last round(steps * denoise) steps apart from those before them (ComfyUI's slices: with
    no step in the low part, the high part is empty and the low part the last sigma)."""
    steps = max(sigmas.shape[-1] - 1, 0)
    low = round(steps * denoise)
    return sigmas[:-low], sigmas[-(low + 1):]


register(NodeDef(
    "SplitSigmasDenoise", split_sigmas_denoise,
    {"sigmas": ("SIGMAS", {}), "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01})},
    ("SIGMAS", "SIGMAS"), output_names=("high_sigmas", "low_sigmas"), category=_SIGMAS, module=_MODULE))


def set_first_sigma(call, sigmas, sigma):
    sigmas = sigmas.clone()
    if len(sigmas):  # ComfyUI's index 0 fails on an empty schedule
        sigmas[0] = sigma
    return (sigmas,)


register(NodeDef(
    "SetFirstSigma", set_first_sigma,
    {"sigmas": ("SIGMAS", {}),
     "sigma": ("FLOAT", {"default": 136.0, "min": 0.0, "max": 20000.0, "step": 0.001, "round": False})},
    ("SIGMAS",), category=_SIGMAS, module=_MODULE))

SPACINGS = {"linear": lambda x: x, "cosine": lambda x: torch.sin(x * math.pi / 2),
            "sine": lambda x: 1 - torch.cos(x * math.pi / 2)}


def extend_intermediate_sigmas(call, sigmas, steps, start_at_sigma, end_at_sigma, spacing):
    """steps - 1 extra sigmas inside each step whose first sigma lies in [end_at_sigma,
    start_at_sigma] (a negative start: no upper bound), spaced by `spacing` between its ends."""
    start = math.inf if start_at_sigma < 0 else start_at_sigma
    fractions = SPACINGS[spacing](torch.linspace(0, 1, steps + 1)[1:-1])
    out: list[float] = []
    for current, nxt in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
        out.append(current)
        if end_at_sigma <= current <= start:
            out.extend((fractions * (nxt - current) + current).tolist())
    if len(sigmas):
        out.append(float(sigmas[-1]))
    return (torch.tensor(out, dtype=torch.float32),)


register(NodeDef(
    "ExtendIntermediateSigmas", extend_intermediate_sigmas,
    {"sigmas": ("SIGMAS", {}), "steps": ("INT", {"default": 2, "min": 1, "max": 100}),
     "start_at_sigma": ("FLOAT", {"default": -1.0, "min": -1.0, "max": 20000.0, "step": 0.01, "round": False}),
     "end_at_sigma": ("FLOAT", {"default": 12.0, "min": 0.0, "max": 20000.0, "step": 0.01, "round": False}),
     "spacing": (list(SPACINGS), {})},
    ("SIGMAS",), category=_SIGMAS, module=_MODULE))


def sampling_percent_to_sigma(call, model, sampling_percent, return_actual_sigma):
    """The sigma ComfyUI's start/end percents mean; at 0 and 1 its interval bounds (a huge value,
    0) unless return_actual_sigma asks for the schedule's own largest and smallest."""
    ms = ksampler.sampling_of(model)
    if return_actual_sigma and sampling_percent in (0.0, 1.0):
        return (float(ms.sigma_max if sampling_percent == 0.0 else ms.sigma_min),)
    return (float(ms.percent_to_sigma(sampling_percent)),)


register(NodeDef(
    "SamplingPercentToSigma", sampling_percent_to_sigma,
    {"model": ("MODEL", {}),
     "sampling_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.0001}),
     "return_actual_sigma": ("BOOLEAN", {"default": False, "tooltip": (
         "Return the actual sigma value instead of the value used for interval checks.\n"
         "This only affects results at 0.0 and 1.0.")})},
    ("FLOAT",), output_names=("sigma_value",), category=_SIGMAS, module=_MODULE))


def add_noise(call, model, noise, sigmas, latent_image):
    """The latent noised as the model noises it at |first - last sigma| (or the only sigma); an
    all-zero latent is not shifted into the model's latent space first, as in ComfyUI."""
    if len(sigmas) == 0:
        return (latent_image,)
    samples = ksampler.fix_empty_latent(model, latent_image)
    fresh = (torch.zeros_like(samples) if noise.seed is None
             else ksampler.prepare_noise(samples, noise.seed, latent_image.get("batch_index")))
    scale = float(abs(sigmas[0] - sigmas[-1]) if len(sigmas) > 1 else sigmas[0])
    fmt = ksampler.latent_format(model)
    if torch.count_nonzero(samples) > 0:
        samples = fmt.scaled(samples)
    noisy = fmt.unscaled(ksampler.sampling_of(model).noise_scaling(scale, fresh, samples))
    out = dict(latent_image, samples=torch.nan_to_num(noisy, nan=0.0, posinf=0.0, neginf=0.0))
    if out["samples"].shape[2:] != latent_image["samples"].shape[2:]:
        out.pop("pixel_size", None)
    return (out,)


register(NodeDef(
    "AddNoise", add_noise,
    {"model": ("MODEL", {}), "noise": ("NOISE", {}), "sigmas": ("SIGMAS", {}), "latent_image": ("LATENT", {})},
    ("LATENT",), category="_for_testing/custom_sampling/noise", module=_MODULE, experimental=True))


# ComfyUI's number pattern for ManualSigmas: an optional sign, digits, dots, digits ("1e-3" reads as
# 1 and -3, as there). A fixed pattern without nested repetition: linear in the text's length.
_NUMBER = re.compile(r"[-+]?(?:\d*\.*\d+)")
MAX_MANUAL_SIGMAS = 100_000


def manual_sigmas(call, sigmas):
    """Every number in the text, in order, as a SIGMAS (nothing checks that they decrease)."""
    values = []
    for text in _NUMBER.findall(sigmas):
        if len(values) == MAX_MANUAL_SIGMAS:
            raise InvalidArgument(f"sigmas: more than {MAX_MANUAL_SIGMAS:,} numbers")
        try:
            values.append(float(text))
        except ValueError:
            raise InvalidArgument(f"sigmas: {text!r} is not a number (one dot at most)") from None
    return (torch.tensor(values, dtype=torch.float32),)


register(NodeDef(
    "ManualSigmas", manual_sigmas, {"sigmas": ("STRING", {"default": "1, 0.5", "multiline": False})},
    ("SIGMAS",), category="experimental/custom_sampling", module=_MODULE, experimental=True))


# OptimalSteps' searched schedules (flow sigmas), as ComfyUI lists them
OPTIMAL_STEPS = {
    "FLUX": [0.9968, 0.9886, 0.9819, 0.975, 0.966, 0.9471, 0.9158, 0.8287, 0.5512, 0.2808, 0.001],
    "Wan": [1.0, 0.997, 0.995, 0.993, 0.991, 0.989, 0.987, 0.985, 0.98, 0.975, 0.973, 0.968, 0.96, 0.946, 0.927,
            0.902, 0.864, 0.776, 0.539, 0.208, 0.001],
    "Chroma": [0.992, 0.99, 0.988, 0.985, 0.982, 0.978, 0.973, 0.968, 0.961, 0.953, 0.943, 0.931, 0.917, 0.9, 0.881,
               0.858, 0.832, 0.802, 0.769, 0.731, 0.69, 0.646, 0.599, 0.55, 0.501, 0.451, 0.402, 0.355, 0.311, 0.27,
               0.232, 0.199, 0.169, 0.143, 0.12, 0.101, 0.084, 0.07, 0.058, 0.048, 0.001],
}


def loglinear_resampled(levels: list[float], count: int) -> list[float]:
    """`count` values spaced evenly along the decreasing `levels`, interpolated in log space."""
    ys = np.log(np.asarray(levels[::-1], dtype=np.float64))
    return np.exp(np.interp(np.linspace(0, 1, count), np.linspace(0, 1, len(levels)), ys))[::-1].tolist()


def optimal_steps_scheduler(call, model_type, steps, denoise):
    """The table resampled to steps + 1 sigmas (as it is when it has that many), the last
    round(steps * denoise) steps of it, ending at 0."""
    if denoise <= 0.0:
        return (torch.FloatTensor([]),)
    total = round(steps * denoise) if denoise < 1.0 else steps
    levels = OPTIMAL_STEPS[model_type]
    sigmas = levels[:] if steps + 1 == len(levels) else loglinear_resampled(levels, steps + 1)
    sigmas = sigmas[-(total + 1):]
    sigmas[-1] = 0.0
    return (torch.FloatTensor(sigmas),)


register(NodeDef(
    "OptimalStepsScheduler", optimal_steps_scheduler,
    {"model_type": (list(OPTIMAL_STEPS), {}), "steps": ("INT", {"default": 20, "min": 3, "max": 1000}),
     "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01})},
    ("SIGMAS",), category="sampling/custom_sampling/schedulers", module="comfy_extras.nodes_optimalsteps"))
