"""ComfyUI's sampling over our samplers (no second loop): KSampler, and the run that SamplerCustom
and SamplerCustomAdvanced share with it.

What is matched (from ComfyUI's documented behaviour and its sampling code, re-derived here):

* noise: one CPU ``randn`` of the latent batch's shape from a generator seeded with ``seed``
  (ComfyUI's ``prepare_noise``; with a LATENT's "batch_index" one draw per index up to the
  largest, each image taking its index's draw, so an image picked from a batch keeps its noise);
  ancestral samplers' per-step noise from a second CPU generator seeded with ``seed + 1`` (what
  ComfyUI does when sampling on the CPU; on a GPU it draws from the device's generator instead,
  which no CPU-drawn stream can reproduce);
* sigmas: ``steps`` of the scheduler over the model's sampling schedule; with ``denoise < 1`` the
  last ``steps + 1`` sigmas of a ``int(steps / denoise)``-step schedule; dpm_2, dpm_2_ancestral and
  uni_pc drop the penultimate sigma of a ``steps + 1`` schedule; KSamplerAdvanced cuts
  ``[start_at_step, end_at_step]`` and sets the last sigma to 0 unless leftover noise is to be
  returned;
* the start: ``latent + noise * sigma0``, or ``noise * sqrt(1 + sigma0**2)`` scaling when sigma0 is
  the model's largest sigma (ComfyUI's "max denoise");
* LATENT holds raw VAE latents: multiplied by the VAE scaling factor before sampling, divided after;
* ``noise_mask``: resized (bilinear) to the latent; before every model call the kept area is reset
  to ``latent + noise * sigma`` and after it the estimate's kept area to ``latent`` (a model's
  denoise_mask_function, DifferentialDiffusion's, first turns the mask into that step's mask);
* guidance: the GUIDER's (guiders.py; KSampler uses CFGGuider), each conditioning list composed
  from its entries as ComfyUI does (conds.py: areas, masks, strengths, timestep ranges,
  ControlNet hints, SDXL sizes).

Not matched: SDE samplers draw from our per-step noise stream, not ComfyUI's Brownian tree.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from ..pipeline.pipeline import Interrupted
from ..errors import InvalidArgument
from ..sampling.cfg_pp import Guided, with_uncond
from ..sampling.lcm_upscale import sample_lcm_upscale
from ..sampling.names import resolve, sampler_id
from ..sampling.samplers import NEEDS_UNCOND, sampler_context
from ..sampling.schedules import DiscreteSchedule, make_sigmas
from .guiders import CFGGuider, Guider
from .loras import activate
from .model_sampling import default_sampling
from .nodes_image import upscale
from .step_cache import log_summaries
from .types import ModelRef, SamplerRef
from .unet_patches import output_block_patches

COMFY_DISCARD_PENULTIMATE = frozenset({"dpm_2", "dpm_2_ancestral", "uni_pc"})
LCM_UPSCALE = "lcm_upscale"  # SamplerLCMUpscale's sampler: no KSampler choice, it changes the latent's size

Progress = Callable[[int, int, torch.Tensor], None]


def prepare_noise(samples: torch.Tensor, seed: int, batch_index: list[int] | None = None) -> torch.Tensor:
    """ComfyUI's initial noise: CPU randn from ``manual_seed(seed)``, for the whole batch at once or
    (with batch indices) one image-sized draw per index."""
    generator = torch.Generator("cpu").manual_seed(seed)
    if batch_index is None:
        return torch.randn(samples.shape, generator=generator, dtype=torch.float32)
    draws = [torch.randn((1, *samples.shape[1:]), generator=generator, dtype=torch.float32)
             for _ in range(max(batch_index) + 1)]
    return torch.cat([draws[i] for i in batch_index])


class StepNoise:
    """Per-step noise for ancestral samplers: CPU draws from ``seed + 1``."""

    def __init__(self, seed: int, shape, device):
        self.generator = torch.Generator("cpu").manual_seed((seed + 1) % (1 << 64))
        self.shape, self.device = tuple(shape), device

    def __call__(self, sigma=None, sigma_next=None) -> torch.Tensor:
        return torch.randn(self.shape, generator=self.generator).to(self.device)

    def like(self, x: torch.Tensor) -> torch.Tensor:
        """The next draw in x's shape (for a sampler that resizes the latent)."""
        return torch.randn(tuple(x.shape), generator=self.generator).to(self.device)


def comfy_sigmas(schedule: DiscreteSchedule, sampler: str, scheduler: str, steps: int,
                 denoise: float = 1.0) -> torch.Tensor:
    """KSampler's sigmas (and BasicScheduler's, with a sampler that keeps every sigma)."""
    sampler_name, schedule_id = resolve(sampler, scheduler)

    def calc(n: int) -> torch.Tensor:
        if sampler_name in COMFY_DISCARD_PENULTIMATE:
            s = make_sigmas(schedule_id, schedule, n + 1)
            return torch.cat([s[:-2], s[-1:]])
        return make_sigmas(schedule_id, schedule, n)

    if denoise is None or denoise > 0.9999:
        return calc(steps)
    if denoise <= 0.0:
        return torch.zeros(0)
    return calc(int(steps / denoise))[-(steps + 1):]


def _prepare_mask(mask: torch.Tensor, shape) -> torch.Tensor:
    m = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).float()
    m = F.interpolate(m, size=tuple(shape[2:]), mode="bilinear")
    m = m.expand(-1, shape[1], -1, -1)
    if m.shape[0] < shape[0]:
        m = m.repeat(math.ceil(shape[0] / m.shape[0]), 1, 1, 1)
    return m[:shape[0]]


def fix_empty_latent(model: ModelRef, latent: dict) -> torch.Tensor:
    """The samples to start from: EmptyLatentImage's zeros reshaped for this model's latent channels
    and VAE downscale (ComfyUI's fix_empty_latent_channels; "pixel_size" for other downscales)."""
    pipe, samples = model.pipe, latent["samples"].float()
    if samples.any() and samples.shape[1] != pipe.config.latent_channels:  # another family's, encoded or sampled
        raise InvalidArgument(f"latent_image: a latent of {samples.shape[1]} channels does not fit {model.name}, "
                              f"which samples {pipe.config.latent_channels} (is it another model family's?)")
    if samples.any() or (samples.shape[1] == pipe.config.latent_channels and "pixel_size" not in latent):
        return samples
    h, w = samples.shape[2:]
    if "pixel_size" in latent:
        down = pipe.config.vae.downscale
        w, h = latent["pixel_size"][0] // down, latent["pixel_size"][1] // down
    return torch.zeros(samples.shape[0], pipe.config.latent_channels, h, w)


def sampling_of(model: ModelRef):
    """The model's ModelSampling: a patch's, else its checkpoint's."""
    return model.sampling if model.sampling is not None else default_sampling(model.pipe)


def latent_format(model: ModelRef):
    """What turns LATENT's raw latents into the model's and back (scaled/unscaled): a patch's
    latent format, else the VAE config's scale (and shift)."""
    return model.pipe.config.vae if model.latent_format is None else model.latent_format


def run(guider: Guider, noise: torch.Tensor, samples: torch.Tensor, sampler: SamplerRef, sigmas: torch.Tensor,
        seed: int, noise_mask: torch.Tensor | None = None, on_step: Progress | None = None,
        should_stop: Callable[[], bool] = lambda: False) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample raw latents `samples` from `noise` along `sigmas`; (result, the last step's denoised
    estimate), both raw latents on the CPU. No sigmas: the latent unchanged."""
    model = guider.model
    pipe = model.pipe
    activate(model)
    if len(sigmas) == 0:
        return samples, samples
    ms, fmt, device = sampling_of(model), latent_format(model), pipe.device
    sigmas = sigmas.float().cpu()
    x0 = fmt.scaled(samples.float().to(device))
    noise = noise.float().to(device)
    s0 = float(sigmas[0])
    max_denoise = math.isclose(ms.sigma_max, s0, rel_tol=1e-5) or s0 > ms.sigma_max
    x = ms.noise_scaling(s0, noise, x0, max_denoise)
    mask = None if noise_mask is None else _prepare_mask(noise_mask, x.shape).to(device)
    image_cond = None
    scale = pipe.family.inpaint_mask_scale(pipe.config)
    if pipe.config.inpainting and scale > 1:
        # Flux Fill without InpaintModelConditioning, as ComfyUI's Flux concat_cond: a blank latent
        # (zeros in the model's latent format) and the noise mask (or all masked) at the pixels' size
        m = torch.ones_like(x0[:, :1]) if mask is None else mask.mean(dim=1, keepdim=True)
        image_cond = pipe.family.inpainting_channels(F.interpolate(m, scale_factor=scale, mode="bilinear"),
                                                     fmt.scaled(torch.zeros_like(x0)))
    elif pipe.config.edit:  # an edit model's image channels without InstructPixToPixConditioning: zeros
        image_cond = torch.zeros_like(x0[:1])
    elif pipe.config.inpainting:
        if mask is not None:
            image_cond = torch.cat([mask.mean(dim=1, keepdim=True).round(), x0], dim=1)
        else:
            down = pipe.config.vae.downscale
            image_cond = pipe.inpainting_cond(None, None, x.shape[3] * down, x.shape[2] * down)
    guider.needs_uncond = sampler.name != LCM_UPSCALE and sampler_id(sampler.name) in NEEDS_UNCOND
    by_shape: dict[tuple, list] = {}  # conditioning fitted to each latent size the sampler visits

    def per_image(shape: tuple) -> list:
        if shape != tuple(x.shape) and (mask is not None or image_cond is not None):
            raise InvalidArgument(f"sampler: {sampler.name} changes the latent's size, which a noise mask "
                                  "or an inpainting model's masked image cannot follow")
        if shape not in by_shape:
            by_shape[shape] = guider.denoisers(shape, ms, sigmas, image_cond, seed)
        return by_shape[shape]

    def both(xb: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if should_stop():  # checked before every model call: an interrupt lands within one step
            raise Interrupted("generation interrupted")
        denoisers = per_image(tuple(xb.shape))
        pairs = [with_uncond(denoisers[i], xb[i:i + 1], sigma) for i in range(xb.shape[0])]
        return torch.cat([d for d, _ in pairs]), torch.cat([u for _, u in pairs])

    denoise_fn = Guided(both)
    if mask is not None:
        def masked(xb: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            per_image(tuple(xb.shape))
            m = mask if model.denoise_mask_function is None else model.denoise_mask_function(sigma, mask, ms, sigmas)
            kept = 1.0 - m
            xb = xb * m + ms.noise_scaling(sigma, noise, x0) * kept
            return tuple(e * m + x0 * kept for e in both(xb, sigma))

        denoise_fn = Guided(masked)

    n = len(sigmas) - 1
    last = {}

    def callback(i: int, xi: torch.Tensor, denoised: torch.Tensor) -> None:
        last["x0"] = denoised
        if should_stop():
            raise Interrupted("generation interrupted")
        if on_step is not None:
            on_step(i + 1, n, denoised)

    sample_fn = _sampler_call(sampler, ms, StepNoise(seed, x.shape, device))
    with output_block_patches(pipe.family.network(pipe.model), model.output_block_patches):
        result = sample_fn(denoise_fn, x, sigmas, callback)
    log_summaries([d for ds in by_shape.values() for d in ds], n)
    out = fmt.unscaled(ms.inverse_noise_scaling(sigmas[-1].item(), result)).float().cpu()
    return out, fmt.unscaled(last["x0"]).float().cpu() if "x0" in last else out


def _sampler_call(sampler: SamplerRef, ms, noise: StepNoise) -> Callable:
    """sample(denoise, x, sigmas, callback) of a SAMPLER, with its options and the context it takes
    (the step noise; for TCD the model's own timestep table) bound."""
    options = dict(sampler.options)
    if sampler.name == LCM_UPSCALE:
        method = options.pop("upscale_method")
        return partial(sample_lcm_upscale, resize=lambda x, w, h: upscale(x, w, h, method, "disabled"),
                       noise_like=noise.like, **options)
    return partial(ms.sampler(sampler.name), **sampler_context(sampler.name, noise, ms.schedule), **options)


def sample(model: ModelRef, positive: list, negative: list, latent: dict, *, seed: int, steps: int, cfg: float,
           sampler_name: str, scheduler: str, denoise: float = 1.0, add_noise: bool = True,
           start_step: int | None = None, last_step: int | None = None, force_full_denoise: bool = False,
           on_step: Progress | None = None, should_stop: Callable[[], bool] = lambda: False) -> dict:
    """Run one ComfyUI KSampler / KSamplerAdvanced; returns the new LATENT dict."""
    samples = fix_empty_latent(model, latent)
    noise = prepare_noise(samples, seed, latent.get("batch_index")) if add_noise else torch.zeros_like(samples)
    sigmas = comfy_sigmas(sampling_of(model).schedule, sampler_name, scheduler, steps, denoise)
    if last_step is not None and last_step < len(sigmas) - 1:
        sigmas = sigmas[:last_step + 1].clone()
        if force_full_denoise:
            sigmas[-1] = 0
    if start_step is not None:
        if start_step >= len(sigmas) - 1:
            return dict(latent, samples=samples)
        sigmas = sigmas[start_step:]
    if len(sigmas) < 2:
        return dict(latent, samples=samples)
    guider = CFGGuider(model, positive, negative, cfg)
    out, _ = run(guider, noise, samples, SamplerRef(sampler_name), sigmas, seed, latent.get("noise_mask"),
                 on_step, should_stop)
    return dict(latent, samples=out)
