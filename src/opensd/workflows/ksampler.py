"""ComfyUI's KSampler semantics over our pipeline's guidance and our samplers (no second loop).

What is matched (from ComfyUI's documented behaviour and its sampling code, re-derived here):

* noise: one CPU ``randn`` of the latent batch's shape from a generator seeded with ``seed``
  (ComfyUI's ``prepare_noise``); ancestral samplers' per-step noise from a second CPU generator
  seeded with ``seed + 1`` (what ComfyUI does when sampling on the CPU; on a GPU it draws from the
  device's generator instead, which no CPU-drawn stream can reproduce);
* sigmas: ``steps`` of the scheduler; with ``denoise < 1`` the last ``steps + 1`` sigmas of a
  ``int(steps / denoise)``-step schedule; dpm_2, dpm_2_ancestral and uni_pc drop the penultimate
  sigma of a ``steps + 1`` schedule; KSamplerAdvanced cuts ``[start_at_step, end_at_step]`` and
  sets the last sigma to 0 unless leftover noise is to be returned;
* the start: ``latent + noise * sigma0``, or ``noise * sqrt(1 + sigma0**2)`` scaling when sigma0 is
  the model's largest sigma (ComfyUI's "max denoise");
* LATENT holds raw VAE latents: multiplied by the VAE scaling factor before sampling, divided after;
* ``noise_mask``: resized (bilinear) to the latent; before every model call the kept area is reset
  to ``latent + noise * sigma`` and after it the estimate's kept area to ``latent``;
* ControlNet hints on the conditioning entries (ControlNetApply/Advanced) run on their rows of
  the CFG batch (see nodes_controlnet);
* conditioning: uncond + cfg * (cond - uncond) (pipeline/guidance.py; at cfg 1 the uncond is not
  run, as ComfyUI skips it); several entries in one CONDITIONING list are
  averaged (ComfyUI's behaviour for entries without area or mask); SDXL's size vector uses the
  latent size * 8; cond and uncond of different lengths are padded with encoded empty chunks (our
  pipeline's rule; ComfyUI repeats the shorter one instead);
* a guidance-distilled model (the built-in one) guides itself as in our pipeline when the positive
  is one entry, cfg is in its trained range and no ControlNet hint is attached: one call per step
  when the negative is the empty prompt's encoding, else the [empty, negative, prompt] rows.

Not matched: SDE samplers draw from our per-step noise stream, not ComfyUI's Brownian tree.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..pipeline.conditioning import (
    Conditioning,
    CondSchedule,
    ScheduledPart,
    size_vector,
)
from ..pipeline.guidance import plan
from ..pipeline.pipeline import Interrupted
from ..sampling.names import resolve
from ..sampling.samplers import get_sampler
from ..sampling.schedules import make_sigmas
from .loras import activate
from .nodes_controlnet import RowControl, row_hints
from .types import ModelRef

COMFY_DISCARD_PENULTIMATE = frozenset({"dpm_2", "dpm_2_ancestral", "uni_pc"})


def prepare_noise(samples: torch.Tensor, seed: int) -> torch.Tensor:
    """ComfyUI's initial noise: CPU randn of the whole latent batch from ``manual_seed(seed)``."""
    return torch.randn(samples.shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)


class StepNoise:
    """Per-step noise for ancestral samplers: CPU draws from ``seed + 1``."""

    def __init__(self, seed: int, shape, device):
        self.generator = torch.Generator("cpu").manual_seed((seed + 1) % (1 << 64))
        self.shape, self.device = tuple(shape), device

    def __call__(self, sigma=None, sigma_next=None) -> torch.Tensor:
        return torch.randn(self.shape, generator=self.generator).to(self.device)


def comfy_sigmas(pipe, sampler: str, scheduler: str, steps: int, denoise: float = 1.0) -> torch.Tensor:
    sampler_id, schedule_id = resolve(sampler, scheduler)

    def calc(n: int) -> torch.Tensor:
        if sampler_id in COMFY_DISCARD_PENULTIMATE:
            s = make_sigmas(schedule_id, pipe.schedule, n + 1)
            return torch.cat([s[:-2], s[-1:]])
        return make_sigmas(schedule_id, pipe.schedule, n)

    if denoise is None or denoise > 0.9999:
        return calc(steps)
    if denoise <= 0.0:
        return torch.zeros(0)
    return calc(int(steps / denoise))[-(steps + 1):]


def _cond_schedule(cond: list, steps: int, width: int, height: int, pipe, negative: bool) -> CondSchedule:
    if not cond:
        raise ValueError("conditioning is empty")
    adm = pipe.config.unet.size_conditioned
    parts = []
    for context, extra in cond:
        pooled = (extra or {}).get("pooled_output")
        if adm and pooled is not None:
            pooled = size_vector(pipe.config, pooled, width, height, 2.5 if negative else 6.0)
        c = Conditioning(context.to(pipe.device), None if pooled is None else pooled.to(pipe.device))
        parts.append(ScheduledPart(1.0 / len(cond), "", [(steps, "")], [c]))
    return CondSchedule("", steps, parts, [])


def _prepare_mask(mask: torch.Tensor, shape) -> torch.Tensor:
    m = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).float()
    m = F.interpolate(m, size=tuple(shape[2:]), mode="bilinear")
    m = m.expand(-1, shape[1], -1, -1)
    if m.shape[0] < shape[0]:
        m = m.repeat(math.ceil(shape[0] / m.shape[0]), 1, 1, 1)
    return m[:shape[0]]


def _empty_for(pipe, samples: torch.Tensor, pixel_size: tuple[int, int] | None) -> torch.Tensor:
    """Zeros shaped for this model's latent channels and VAE downscale."""
    h, w = samples.shape[2:]
    if pixel_size is not None:
        down = pipe.config.vae.downscale
        w, h = pixel_size[0] // down, pixel_size[1] // down
    return torch.zeros(samples.shape[0], pipe.config.latent_channels, h, w)


def sample(model: ModelRef, positive: list, negative: list, latent: dict, *, seed: int, steps: int, cfg: float,
           sampler_name: str, scheduler: str, denoise: float = 1.0, add_noise: bool = True,
           start_step: int | None = None, last_step: int | None = None, force_full_denoise: bool = False,
           on_step: Callable[[int, int, torch.Tensor], None] | None = None,
           should_stop: Callable[[], bool] = lambda: False) -> dict:
    """Run one ComfyUI KSampler / KSamplerAdvanced; returns the new LATENT dict."""
    pipe = model.pipe
    activate(pipe, model.loras)
    samples = latent["samples"].float()
    channels = pipe.config.latent_channels
    if not samples.any() and (samples.shape[1] != channels or "pixel_size" in latent):
        samples = _empty_for(pipe, samples, latent.get("pixel_size"))  # EmptyLatentImage's latent
    noise = prepare_noise(samples, seed) if add_noise else torch.zeros_like(samples)
    sigmas = comfy_sigmas(pipe, sampler_name, scheduler, steps, denoise)
    if last_step is not None and last_step < len(sigmas) - 1:
        sigmas = sigmas[:last_step + 1].clone()
        if force_full_denoise:
            sigmas[-1] = 0
    if start_step is not None:
        if start_step >= len(sigmas) - 1:
            return dict(latent, samples=samples)
        sigmas = sigmas[start_step:]
    out = dict(latent)
    if len(sigmas) < 2:
        out["samples"] = samples
        return out
    device, sf = pipe.device, pipe.config.vae.scaling_factor
    sigmas = sigmas.float()
    x0 = samples.to(device) * sf
    noise = noise.to(device)
    s0 = float(sigmas[0])
    top = pipe.schedule.sigma_max
    scale = math.sqrt(1.0 + s0 ** 2) if (math.isclose(top, s0, rel_tol=1e-5) or s0 > top) else s0
    x = noise * scale + x0

    h, w = samples.shape[2] * pipe.config.vae.downscale, samples.shape[3] * pipe.config.vae.downscale
    n = len(sigmas) - 1
    cond = _cond_schedule(positive, n, w, h, pipe, negative=False)
    uncond = _cond_schedule(negative[:1], n, w, h, pipe, negative=True)
    hints = row_hints(positive, negative)  # ControlNet hints on the conditioning (nodes_controlnet)
    guidance = plan(pipe.config, cond, cfg, lambda: uncond,
                    lambda: pipe.cond_schedule("", None, n, w, h, negative=True), self_guidance=not any(hints))
    mask = latent.get("noise_mask")
    mask = None if mask is None else _prepare_mask(mask, x.shape).to(device)
    image_cond = None
    if pipe.config.inpainting:
        if mask is not None:
            image_cond = torch.cat([mask.mean(dim=1, keepdim=True).round(), x0], dim=1)
        else:
            image_cond = pipe.inpainting_cond(None, None, w, h)
    per_image = []
    for i in range(x.shape[0]):
        ic = None if image_cond is None else image_cond[i:i + 1] if image_cond.shape[0] > 1 else image_cond
        control = RowControl(pipe, hints, i, w, h) if any(hints) else None
        per_image.append(pipe.denoiser(guidance, sigmas, ic, None, control))

    def guided(xb: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if should_stop():  # checked before every model call: an interrupt lands within one step
            raise Interrupted("generation interrupted")
        return torch.cat([per_image[i](xb[i:i + 1], sigma) for i in range(xb.shape[0])])

    denoise_fn = guided
    if mask is not None:
        def denoise_fn(xb: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            kept = 1.0 - mask
            xb = xb * mask + (x0 + noise * sigma) * kept
            return guided(xb, sigma) * mask + x0 * kept

    def callback(i: int, xi: torch.Tensor, denoised: torch.Tensor) -> None:
        if should_stop():
            raise Interrupted("generation interrupted")
        if on_step is not None:
            on_step(i + 1, n, denoised)

    sampler_id = resolve(sampler_name, scheduler)[0]
    result = get_sampler(sampler_id)(denoise_fn, x, sigmas, callback,
                                     noise_sampler=StepNoise(seed, x.shape, device))
    out["samples"] = (result / sf).float().cpu()
    return out
