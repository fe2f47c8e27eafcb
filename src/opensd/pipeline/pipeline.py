"""The generation pipeline: a loaded model plus tokenizer, device and precision, and the modes
(txt2img, img2img, inpainting, outpainting, hires fix) over one shared sampling core. Parts of the
Pipeline class live in their own files: its LoRAs (lora_methods.py), the hires pass (hires_pass.py),
the VAE side (image_codec.py), prompt encoding (prompt_encoding.py) and the extras a generation adds
to every pass (generation_extras.py)."""
from __future__ import annotations

import functools
import random
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from ..adapters.lora import LoraSet, LoraSpec
from ..errors import InvalidArgument, OpenSDError
from ..families import family_of
from ..image_read import flatten
from ..models.conv import circular_padding
from ..models.stored_weights import kept_16bit
from ..sampling.names import resolve
from ..sampling.cfg_pp import Guided, with_uncond
from ..sampling.samplers import NEEDS_UNCOND, sampler_context, sampler_options
from ..sampling import schedule_options as SO
from ..sampling.schedules import DiscreteSchedule, make_sigmas, scaled_linear_alphas_cumprod
from ..text.embeddings import EmbeddingDatabase, load_embeddings
from ..text.tokenizer import default_tokenizer
from ..upscale import Upscalers, latent_mode
from . import guidance as G
from . import images as I
from . import img2img as i2i
from .color_correction import correct, correction_target
from . import soft_inpaint as SI
from . import instruct_pix2pix as ip2p
from . import limits as L
from .device import resolve_device, resolve_dtype
from .loader import LoadedModel, load_model
from .noise import ImageNoise
from . import cond_padding as P
from .cfg_skips import SECOND_ORDER, SkipCounter
from .params import Params
from .peak_memory import PeakMemory
from .refiner import Refiner, check_same_latents, switching
from .speedups import Speedups
from .precision import Precision, choose_precision
from .hires_pass import HiresPass
from .image_codec import ImageCodec
from .lora_methods import LoraMethods
from .hypernet_methods import HypernetMethods
from .generation_extras import GenerationExtras
from .prompt_encoding import PromptEncoding

# progress(step, total), called after every sampling step of every pass and image.
Progress = Callable[[int, int], None] | None


class Interrupted(OpenSDError):
    """Generation was stopped by Pipeline.interrupt()."""


class Pipeline(LoraMethods, HypernetMethods, HiresPass, ImageCodec, PromptEncoding, GenerationExtras):
    def __init__(self, loaded: LoadedModel, device: torch.device, dtype: torch.dtype,
                 limits: L.Limits = L.DEFAULT_LIMITS, embeddings: EmbeddingDatabase | None = None):
        self.loaded = loaded
        self.model = loaded.model
        self.config = loaded.config
        self.family = family_of(loaded.config)  # the seam: network, sampling and prompts of its kind
        self.device = device
        self.dtype = dtype
        self.precision = Precision(dtype, next(loaded.model.vae.parameters()).dtype, "given")  # load() says why
        self.limits = limits
        self.vae_tiling: bool | None = None  # VAE in tiles: None above a size (vae_codec.TILE_ABOVE)
        # The tiny autoencoder (TAESD family, load_tiny_vae) for live previews, and for final images
        # with vae_decoder "taesd" (fast, fewer details) instead of "full".
        self.tiny_vae = None
        self.vae_decoder = "full"
        self.vae_encoder = "full"  # "taesd": encode (img2img, hires, inpainting) with the tiny encoder
        self._next_preview = 0.0  # monotonic time before which preview() skips the tiny decoder
        self.tokenizer = default_tokenizer()
        # The 1000-step schedule as the file gives it (ComfyUI's ModelSamplingDiscrete starts from it),
        # and the one the model samples on: rescaled to zero terminal SNR where its "ztsnr" marker says.
        self.trained_alphas_cumprod = loaded.alphas_cumprod if loaded.alphas_cumprod is not None \
            else scaled_linear_alphas_cumprod()
        self.alphas_cumprod = self.trained_alphas_cumprod
        if getattr(loaded.config, "zsnr", False):
            self.alphas_cumprod = SO.rescale_zero_terminal_snr(self.trained_alphas_cumprod)
        self.schedule = DiscreteSchedule(self.alphas_cumprod)
        self._interrupt = False
        self._cond_cache: dict = {}
        self._conditioners: dict = {}
        self.embeddings = embeddings
        if device.type == "cpu":  # oneDNN convs run faster on NHWC (-5% SD1.5 step); small maps: neutral
            self.family.network(self.model).to(memory_format=torch.channels_last)
            # the VAE's large maps even more: a 512x512 decode took 0.4x the time in bf16, 0.9x in fp32
            self.model.vae.to(memory_format=torch.channels_last)
        # Called after every sampling step with the denoised estimate (scaled latents, batch of 1):
        # servers turn it into live previews. None: no previews.
        self.on_latents: Callable[[torch.Tensor], None] | None = None
        # LoRAs: explicit ones (set_loras) plus the prompt's <lora:name:w> tags, found in lora_folders
        # (a ModelFolders, or a list of plain folders).
        self.lora_folders = None
        self._lora_specs: list[LoraSpec] = []
        self._lora_set: LoraSet | None = None
        self._controls: list = []  # ControlSpecs of the running generation
        self._ip_adapter = None  # the running generation's IPAdapterSpec (adapters/ip_adapter.py)
        self._references: list = []  # Kontext's reference latents of the running generation
        self._refiner: Refiner | None = None  # the running generation's refiner
        self._refined = False  # whether the image being made switched to it
        self._hires_model: "Pipeline | None" = None  # the running txt2img's second-pass model
        self._first_pass: Image.Image | None = None  # the running txt2img's given first pass
        self._latent_mask: Image.Image | None = None  # the running img2img's A1111 latent_mask, as given
        self._speedups = Speedups(None, 0, 0, 0, False)  # the running generation's ToMe/Hypertile
        self._cfg_skips: list[SkipCounter] = []  # the image being made's passes' skip counts (cfg_skips.py)
        self._n_uncond = 0  # negative rows in the UNet call running now (the IP-Adapter's patch reads it)
        # The hires fix's non-latent upscalers by name: the classic ones only, until a face (the
        # server, the CLI) hands over the models folder's set.
        self.upscalers = Upscalers(None, device)

    @property
    def name(self) -> str:
        return self.loaded.path.stem if self.loaded.path.is_file() else self.loaded.path.name

    def interrupt(self) -> None:
        """Stop the running generation at the end of its current sampling step."""
        self._interrupt = True

    # --- modes -----------------------------------------------------------------------------

    def txt2img(self, prompt: str, negative_prompt: str = "", *, progress: Progress = None,
                controls: list | None = None, refiner: Refiner | None = None, references: list | None = None,
                ip_adapter=None, hires_model: "Pipeline | None" = None, first_pass: Image.Image | None = None,
                **params) -> list[Image.Image]:
        """Generate `batch_size` images; image i uses seed + i. Each image's `info["seed"]` is its seed.
        `controls`: ControlSpecs (opensd.adapters.controlnet) applied in every pass; `refiner`: a
        model to finish sampling on (pipeline/refiner.py; `info["refiner"]` when it did);
        `references`: Flux.1 Kontext's reference images (pipeline/kontext.py), seen in every pass;
        `ip_adapter`: an image prompt (an IPAdapterSpec, adapters/ip_adapter.py), in every pass;
        `hires_model`: the model the hires fix's second pass runs on (A1111's hr_checkpoint_name;
        `info["hires_model"]`), of this model's family; `first_pass`: with hires fix, an image that
        stands for the first pass, which is skipped (A1111's firstpass_image, its "upscale" of an
        image already made); without hires fix it is not used."""
        p = self._params(prompt, negative_prompt, params)
        self._set_extras(controls, references, ip_adapter, refiner)
        self._first_pass = None if first_pass is None or p.hires is None else flatten(first_pass)
        self._hires_model = None
        if hires_model is not None:
            check_same_latents(hires_model, self, "hires checkpoint")
            self._hires_model = hires_model
        return self._generate(p, None, None, progress)

    def img2img(self, image: Image.Image, prompt: str, negative_prompt: str = "", *, mask: Image.Image | None = None,
                progress: Progress = None, controls: list | None = None, refiner: Refiner | None = None,
                references: list | None = None, ip_adapter=None, latent_mask: Image.Image | None = None,
                **params) -> list[Image.Image]:
        """Repaint `image` with denoising `strength`; with `mask` (white = repaint) this is inpainting.
        `latent_mask` (with `mask` only): A1111's, what is repainted (masked content, the latent
        blend) while `mask` still decides what is laid back and what inpainting models see
        (img2img.blend_mask)."""
        if not isinstance(image, Image.Image):
            raise InvalidArgument("image: an init image (PIL image) is required")
        params.setdefault("width", _round8(image.width))
        params.setdefault("height", _round8(image.height))
        if ip2p.is_edit(self.config):  # InstructPix2Pix: guided by the image too (instruct_pix2pix.py)
            params.setdefault("image_cfg_scale", ip2p.DEFAULT_IMAGE_CFG)
        p = self._params(prompt, negative_prompt, params)
        self._set_extras(controls, references, ip_adapter, refiner)
        self._hires_model = self._first_pass = None
        self._latent_mask = latent_mask
        if mask is not None:
            mask = I.prepare_mask(mask, image.size, p.mask_blur, p.invert_mask, p.mask_blur_y,
                                  round_alpha=p.soft_inpainting is None)
        return self._generate(p, flatten(image), mask, progress)  # transparent parts white, as A1111

    def outpaint(self, image: Image.Image, prompt: str, negative_prompt: str = "", *, left: int = 0,
                 right: int = 0, top: int = 0, bottom: int = 0, progress: Progress = None,
                 **params) -> list[Image.Image]:
        """Extend the canvas by the given pixels per side and paint the new border."""
        canvas, mask = I.pad_for_outpaint(image, left, right, top, bottom)
        params.setdefault("inpainting_fill", "fill")
        params.setdefault("strength", 1.0)
        params.setdefault("mask_blur", 4)
        return self.img2img(canvas, prompt, negative_prompt, mask=mask, progress=progress, **params)

    # --- the shared core -------------------------------------------------------------------

    def _params(self, prompt, negative_prompt, params) -> Params:
        for name, value in self.family.defaults(self.config).items():
            if name != "distilled_guidance":  # the network's own default (net_fn) when unset
                params.setdefault(name, value)
        p = Params.of(prompt=prompt, negative_prompt=negative_prompt, **params)
        p.width = self.config.resolution if p.width is None else p.width
        p.height = self.config.resolution if p.height is None else p.height
        p.validate(self.limits)
        resolve(p.sampler, p.scheduler)  # unknown names fail before any work
        if p.hires is not None:
            resolve(p.hires.sampler or p.sampler, p.hires.scheduler or p.scheduler)
            if latent_mode(p.hires.upscaler) is None:
                self.upscalers.find(p.hires.upscaler, "hires upscaler")  # an unknown name fails before any work
        _speedups_allowed(p, self)
        down = self.config.vae.downscale
        if p.width % down or p.height % down:
            raise InvalidArgument(f"width/height: must be multiples of {down} for this model")
        if p.seed in (None, -1):
            p.seed = random.randint(0, L.MAX_SEED - p.batch_size)
        if p.subseed == -1:
            p.subseed = random.randint(0, L.MAX_SEED - p.batch_size)
        return p

    def _generate(self, p: Params, init: Image.Image | None, mask: Image.Image | None,
                  progress: Progress) -> list[Image.Image]:
        try:
            with PeakMemory(self.device) as memory:  # each image's info["peak_memory"]: the faces report it
                images = self._images(p, init, mask, progress)
        finally:  # the references' images are this generation's (Qwen-Image-Edit's prompts see them), no other's
            self._reference_images = []
        for image in images:
            image.info["peak_memory"] = memory.peak
        return images

    def _images(self, p: Params, init: Image.Image | None, mask: Image.Image | None,
                progress: Progress) -> list[Image.Image]:
        if not SO.changes_model(p.schedule_options):
            return self._images_of(p, init, mask, progress)
        # A1111's noise-schedule override, for this generation only, of this model, the refiner and the
        # hires checkpoint
        others = [self._refiner.pipe if self._refiner is not None else None, self._hires_model]
        pipes = [self] + [pipe for pipe in dict.fromkeys(others) if pipe is not None and pipe is not self]
        own = [pipe.schedule for pipe in pipes]
        for pipe in pipes:
            pipe.schedule = DiscreteSchedule(*SO.model_alphas(pipe.alphas_cumprod, p.schedule_options),
                                             quantize=SO.get(p.schedule_options, "enable_quantization"))
        try:
            return self._images_of(p, init, mask, progress)
        finally:
            for pipe, schedule in zip(pipes, own):
                pipe.schedule = schedule

    def _images_of(self, p: Params, init: Image.Image | None, mask: Image.Image | None,
                   progress: Progress) -> list[Image.Image]:
        self._interrupt = False
        self._cond_cache: dict = {}
        self.apply_loras(p.prompt)
        source, crop, whole_mask = init, None, mask  # whole_mask: the init image's, which only-masked lays back through
        if init is not None:
            if mask is not None and self._controls:  # a DiT ControlNet that inpaints takes the request's mask
                from ..adapters.dit_control_mask import with_request_mask
                self._controls = [with_request_mask(spec, mask, init) for spec in self._controls]
            if mask is not None and p.inpaint_full_res:
                crop = I.mask_bbox(mask, p.inpaint_full_res_padding)
                if crop is not None:
                    crop = I.expand_to_ratio(crop, p.width / p.height, init.size)
                    source, mask = init.crop(crop), mask.crop(crop)
                if crop is not None and self._controls:  # the ControlNets see the same region
                    from ..adapters.controlnet import cropped
                    self._controls = [cropped(spec, crop, init.size) for spec in self._controls]
            mode = p.resize_mode if crop is None else "just resize"  # the mask follows the image, as A1111
            source = I.resize(source, p.width, p.height, mode)
            mask = None if mask is None else I.resize(mask, p.width, p.height, mode)
        blend = mask if mask is None or self._latent_mask is None else \
            i2i.blend_mask(self._latent_mask, init.size, crop, p.width, p.height)
        steps_per_image = self._steps_in(p, init is not None)
        total = steps_per_image * p.batch_size
        target = None  # A1111 matches the results' colours to its (filled) init image
        if init is not None and p.color_correction:
            target = correction_target(i2i.filled(source, blend, p.inpainting_fill))
        images = []
        sdxl = self.config.family in ("sdxl", "sdxl_refiner")
        self._speedups = Speedups(p.hypertile, p.seed, p.width, p.height, sdxl)
        for n in range(p.batch_size):
            seed = (p.seed + n) % (L.MAX_SEED + 1)
            subseed = None if p.subseed is None else (p.subseed + n) % (L.MAX_SEED + 1)
            done = n * steps_per_image

            def report(i, offset=done):
                if self._interrupt:
                    raise Interrupted("generation interrupted")
                if progress:
                    progress(offset + i, total)

            self._refined, self._cfg_skips = False, []
            self._speedups.size = (p.width, p.height)
            with circular_padding(self.family.network(self.model), self.model.vae, enabled=p.tiling):
                image = self._one(p, seed, subseed, source, mask, report, blend)
            if self._controls:  # a ControlNet inpaint_only unit lays its image back outside its mask
                from ..adapters.controlnet_inpaint import pasted
                image = pasted(image, self._controls)
            soft_mask = image.info.pop("soft_mask", None)  # soft inpainting's own (pipeline/soft_inpaint.py)
            if target is not None:
                image = correct(target, image)
            if init is not None and mask is not None:
                kept = init if crop else source  # A1111 lays back the init image resized by its mode
                image = I.paste_back(image, kept, whole_mask if crop else mask, crop) if soft_mask is None else \
                    SI.composite(image, kept, soft_mask, crop)
            if self._refined:
                image.info["refiner"] = self._refiner
            if p.hires is not None and self._hires_model is not None and init is None:
                image.info["hires_model"] = self._hires_model
            if self._references:  # how many, for the infotext (the images themselves are not kept)
                image.info["references"] = len(self._references)
            image.info["seed"] = seed
            image.info["subseed"] = subseed
            image.info["params"] = p  # what made it: the faces' infotext is built from this
            image.info["cfg_skips"] = {k: v for c in self._cfg_skips for k, v in c.infotext.items()}
            images.append(image)
        return images

    def _steps_in(self, p: Params, img2img: bool) -> int:
        first = i2i.steps_run(p.steps, p.strength, p.fix_steps) if img2img else 0 if self._first_pass is not None \
            else p.steps
        if p.hires is None or img2img:
            return first
        return first + i2i.steps_run(p.hires.steps or p.steps, p.hires.denoise, fixed=True)

    def _one(self, p: Params, seed: int, subseed: int | None, source: Image.Image | None,
             mask: Image.Image | None, report, blend: Image.Image | None = None) -> Image.Image:
        """One image; `blend`: the mask of what is repainted (default `mask`, the composite's)."""
        down = self.config.vae.downscale
        shape = (1, self.config.latent_channels, p.height // down, p.width // down)
        noise = self._image_noise(p, seed, subseed, shape)
        if source is None:
            latents = None  # a given first pass (with hires fix) stands for the sampled one
            if self._first_pass is None:
                sigmas = self.sigmas(p, p.steps, txt2img=True)
                sgm = SO.sgm_noise(resolve(p.sampler, p.scheduler)[0], p.schedule_options)
                start = self._start_noise(noise.initial, p)
                x = self._noised(p, sigmas[0], start, max_denoise=sgm)  # sgm: noise * sqrt(1 + sigma^2)
                latents = self._sample(p, x, sigmas, noise, report, p.width, p.height,
                                       hires_pass=None if p.hires is None else 1)
            if p.hires is not None:
                latents = self._hires(p, p.hires, latents, seed, subseed, report)
                return (self._hires_model or self)._decoded(latents)  # A1111: the current model's VAE
            return self._decoded(latents)
        blend = mask if blend is None else blend
        init = self.encode(I.fill_masked(source, blend) if mask is not None and p.inpainting_fill == "fill"
                           else source)
        image_cond = ip2p.image_channels(self, init) if ip2p.is_edit(self.config) else None  # (before latent fills)
        soft = p.soft_inpainting if mask is not None else None
        latent_mask = None if mask is None else (SI.latent_mask if soft else i2i.latent_mask)(blend, shape[2:],
                                                                                              self.device)
        if latent_mask is not None and p.inpainting_fill in ("latent noise", "latent nothing"):
            filler = noise() if p.inpainting_fill == "latent noise" else torch.zeros_like(init)
            init = init * (1 - latent_mask) + filler * latent_mask
        total, run = i2i.schedule_steps(p.steps, p.strength, p.fix_steps)
        sigmas = i2i.tail(self.sigmas(p, total), run)
        first = self._start_noise(noise.initial, p)
        first = first if p.noise_multiplier == 1 else first * p.noise_multiplier
        x = self._noised(p, sigmas[0], first, init, p.extra_noise)
        if self.config.inpainting:  # (the filled image blanked under the mask: the same as `source` at weight 1)
            shown = source if p.mask_weight == 1 else i2i.filled(source, blend, p.inpainting_fill)
            image_cond = self.inpainting_cond(shown, mask, weight=p.mask_weight, soft=soft is not None)
        latents = self._sample(p, x, sigmas, noise, report, p.width, p.height,
                               init=init, latent_mask=latent_mask, image_cond=image_cond, cond_steps=p.steps)
        image = self._decoded(latents)
        if soft is not None:  # where the result barely moved from the original, the original shows
            image.info["soft_mask"] = SI.adaptive_masks(soft, latent_mask, init, latents, p.width, p.height)[0]
        return image

    def _start_noise(self, noise: torch.Tensor, p: Params) -> torch.Tensor:
        """The first pass's initial noise; a ControlNet inpaint_only+lama unit's starts from its filled image."""
        if not self._controls:
            return noise
        from ..adapters.controlnet_inpaint import start_noise
        return start_noise(self, self._controls, noise, p.width, p.height)

    def _noised(self, p: Params, sigma, noise: torch.Tensor, latent: torch.Tensor | None = None,
                extra: float = 0.0, max_denoise: bool = False) -> torch.Tensor:
        """The latent at noise level `sigma` (txt2img: from an empty latent), in this model's way;
        `extra`: A1111's img2img_extra_noise, that much of the noise added on top as the sampler sees
        it (k-diffusion's x + noise * extra; flow models' latent scale (1 - sigma) applied to it);
        `max_denoise`: the first pass's noise scaled as from pure noise (A1111's sgm_noise_multiplier)."""
        latent = torch.zeros_like(noise) if latent is None else latent
        sampling = self.model_sampling(p.width, p.height, p.shift)
        x = sampling.noise_scaling(sigma, noise, latent, max_denoise)
        return x if not extra else x + sampling.noise_scaling(sigma, torch.zeros_like(noise), noise * extra)

    def _image_noise(self, p: Params, seed: int, subseed: int | None, shape: tuple[int, ...]) -> ImageNoise:
        """One image's noise at latent `shape`, with its variation seed and seed resize (A1111 uses
        both in every pass, hires included)."""
        resize = p.seed_resize()
        down = self.config.vae.downscale
        seed_shape = None if resize is None else (*shape[:2], resize[1] // down, resize[0] // down)
        return ImageNoise(seed, shape, self.device, subseed, p.subseed_strength, seed_delta=p.noise_seed_delta,
                          on_device=p.device_noise, seed_shape=seed_shape)

    def _sample(self, p: Params, x: torch.Tensor, sigmas: torch.Tensor, noise: ImageNoise, report,
                width: int, height: int, init: torch.Tensor | None = None,
                latent_mask: torch.Tensor | None = None, image_cond: torch.Tensor | None = None,
                hires_pass: int | None = None, first_steps: int | None = None,
                cond_steps: int | None = None) -> torch.Tensor:
        """One sampling pass; `hires_pass` 1 or 2 in a hires-fix run (which passes refine);
        `first_steps`: the first pass's steps, in a hires pass (its prompt editing's timeline);
        `cond_steps`: the steps prompt editing counts over (default: the pass's; an img2img pass:
        the requested steps, of which it samples the last ones, counting from 0 as A1111 does)."""
        steps = len(sigmas) - 1
        sampler = resolve(p.sampler, p.scheduler)[0]
        need_uncond = sampler in NEEDS_UNCOND or ip2p.image_guided(self, p)
        guidance = self.guidance(p, cond_steps or steps, width, height, need_uncond, first_steps)
        if image_cond is None and self.config.inpainting:
            image_cond = self.inpainting_cond(None, None, width, height)
        elif image_cond is None and ip2p.is_edit(self.config):
            image_cond = ip2p.image_channels(self, None, width, height)  # txt2img: zeros
        control = None
        if self._controls:  # ControlNets see their image at this pass's size (hires: the hires size)
            from ..adapters.controlnet import ControlApplier
            control = ControlApplier(self._controls, width, height, self.device, self.dtype, p.distilled_guidance)
        skip = self._skip_counter(p, sampler, steps, width, height)
        pads = P.mode_of(p.pad_cond_uncond, p.pad_cond_uncond_v0)
        denoise = self.denoiser(guidance, sigmas, image_cond, p.clip_skip, control, p.distilled_guidance,
                                p.text_options(), skip, pads)
        if ip2p.image_guided(self, p):
            denoise = ip2p.with_image_guidance(self, p, denoise, guidance, sigmas, image_cond, p.clip_skip,
                                               p.text_options(), pads, control)
        refiner = self._refiner
        if refiner is not None and refiner.refines(hires_pass):
            def refined():  # the refiner's own prompt encoding, at this pass's size and steps
                r = refiner.pipe
                g = r.guidance(p, cond_steps or steps, width, height, need_uncond, first_steps)
                ic = r.inpainting_cond(None, None, width, height) if r.config.inpainting else None
                return r.denoiser(g, sigmas, ic, p.clip_skip, text=p.text_options(), skip=skip,
                                  pads=pads)  # A1111's count carries on

            by_steps = (steps * 2 if sampler in SECOND_ORDER else steps) if p.refiner_switch_by_sample_steps else None
            denoise = switching(denoise, refined, self.model_sampling(width, height, p.shift), refiner.switch_at,
                                lambda: setattr(self, "_refined", True), by_steps)
        if self._controls:  # ControlNet inpaint_only units keep the unmasked area on their image's latent
            from ..adapters.controlnet_inpaint import restoring
            denoise = restoring(denoise, self._controls, self, width, height)
        if latent_mask is not None:
            inner = denoise

            def masked(x, sigma):  # keep the unmasked area on the original image's path
                both = with_uncond(inner, x, sigma)
                if p.soft_inpainting is not None:
                    return tuple(SI.blend(p.soft_inpainting, init, e, latent_mask, sigma) for e in both)
                return tuple(init * (1 - latent_mask) + e * latent_mask for e in both)

            denoise = Guided(masked)

        sample = self.model_sampling().sampler(sampler)  # flow models step in their own space
        taken = sampler_options(sampler)  # options another sampler takes are not for this one (A1111's rule)
        options = {k: v for k, v in p.sampler_options.items() if k in taken}
        def step(i, _x, denoised):
            if self.on_latents is not None:
                self.on_latents(denoised)
            report(i + 1)

        other = refiner.pipe if refiner is not None else self  # the refiner's network runs here too
        with self.family.running(self.model), other.family.running(other.model), self._image_prompt(guidance), \
                self._speedups.unet(self.family.network(self.model), p.token_merging, hires_pass == 2), \
                self.hypernets_hooked():
            x = sample(denoise, x, sigmas, step, **sampler_context(sampler, noise, self.schedule), **options)
        if latent_mask is not None and p.soft_inpainting is None:  # soft inpainting composites after decoding
            x = init * (1 - latent_mask) + x * latent_mask
        return x

    def _skip_counter(self, p: Params, sampler: str, steps: int, width: int, height: int) -> SkipCounter | None:
        """This pass's count of A1111's negative-prompt skips (pipeline/cfg_skips.py) and its padding
        (cond_padding.py), or None when neither can happen; what it did goes into the image's
        info["cfg_skips"] for the infotext."""
        pad_key = P.INFOTEXT_KEYS.get(P.mode_of(p.pad_cond_uncond, p.pad_cond_uncond_v0))
        if p.cfg_skips.off and pad_key is None:
            return None
        sampling = self.model_sampling(width, height, p.shift)
        counter = SkipCounter(p.cfg_skips, sampler, steps, lambda sigma: float(sampling.timestep(torch.tensor(sigma))),
                              pad_key)
        self._cfg_skips.append(counter)
        return counter

    # --- building blocks -------------------------------------------------------------------

    def sigmas(self, p: Params, steps: int, txt2img: bool = False) -> torch.Tensor:
        """The sampler's sigma sequence: the chosen (or the sampler's default) schedule, under A1111's
        schedule settings (`txt2img`: the first pass from noise, where UniPC's skip type applies)."""
        sampler, schedule = self.sampler_and_schedule(p)
        return make_sigmas(schedule, self.model_sampling(p.width, p.height, p.shift, steps).schedule, steps, sampler=sampler,
                           family=self.config.family, options=p.schedule_options, txt2img=txt2img)

    def sampler_and_schedule(self, p: Params) -> tuple[str, str]:
        """(sampler id, schedule id) this model runs `p` with: "Automatic" means the family's default
        schedule where it has one (Flux: simple), else the sampler's."""
        automatic = p.scheduler is None or p.scheduler.strip().lower() == "automatic"
        return resolve(p.sampler, self.family.default_scheduler if automatic else p.scheduler)

    def model_sampling(self, width: int | None = None, height: int | None = None, shift: float | None = None,
                       steps: int | None = None):
        """How this model is sampled at this image size (a ModelSampling for eps/v networks, a
        FlowSampling for rectified flow, whose schedule can depend on the size, the step count
        (FLUX.2) and on `shift`; no size: the family's size-free default)."""
        return self.family.sampling(self, width, height, shift, steps)

    def noise(self, seeds: list[int], h: int, w: int) -> torch.Tensor:
        """Initial noise per image (see ImageNoise), stacked."""
        shape = (1, self.config.latent_channels, h, w)
        return torch.cat([ImageNoise(s, shape, self.device).initial for s in seeds])

    def denoiser(self, g: G.Guidance, sigmas: torch.Tensor, image_cond: torch.Tensor | None = None,
                 clip_skip: int | None = None, control=None, distilled: float | None = None,
                 text: dict | None = None, skip: SkipCounter | None = None,
                 pads: str = P.EMPTY_PADDING):
        """`denoise(x, sigma)` for the samplers: guidance `g` over this model's UNet, with the inpainting
        channels `image_cond` and the residuals of `control(x, t, context, y, fraction, n_uncond=...)`
        (a ControlApplier, or ComfyUI's per-row hints). `distilled`: the distilled guidance scale of
        networks that take one (Flux dev; None: the family's default). `text`: the prompt encoder's
        options (Params.text_options), for the empty prompts that pad cond and uncond. `skip`: the
        pass's count of A1111's negative-prompt skips (pipeline/cfg_skips.py); `pads`: how rows of
        different lengths are padded and batched (pipeline/cond_padding.py; ComfyUI's nodes keep
        opensd's own)."""
        net = self.family.net_fn(self.model, distilled, references=self._references or None)

        def unet_fn(x, t, context, y, fraction, n_uncond):
            self._n_uncond = n_uncond  # the IP-Adapter's patch reads it (_image_prompt)
            residuals = None if control is None else control(x, t, context, y, fraction, n_uncond=n_uncond)
            if image_cond is not None:  # inpainting models see [x, mask, masked image] channels
                x = torch.cat([x, image_cond.expand(len(x), -1, -1, -1).to(x)], dim=1)
            with torch.no_grad():
                return net(x, t, context, y, residuals).float()

        model = functools.partial(self.model_sampling().denoise, unet_fn)
        layout = P.layout(pads, self.conditioner(clip_skip, **(text or {})).empty())
        return G.denoiser(g, model, layout, sigmas, self.config.cfg_embed_channels, self.device, skip)

def _speedups_allowed(p: Params, pipe) -> None:
    """Token merging and Hypertile patch a UNet's PyTorch attention: other networks, or a compiled
    UNet (--compile, the openvino backend: the layers run as traced, the patch and its random
    tiling would be ignored or frozen), are refused in one line."""
    h = p.hypertile
    for name, on in (("token_merging", p.token_merging > 0 or bool(p.hires and p.hires.token_merging)),
                     ("hypertile", h is not None and (h.unet or h.unet_hires or h.vae))):
        if on:
            pipe.family.require("attention_speedups", name)
            if getattr(pipe.family.network(pipe.model), "_compiled_call_impl", None) is not None:
                raise InvalidArgument(f"{name}: it patches the UNet's PyTorch attention layers, which a compiled "
                                      "UNet (--compile, the openvino backend) does not run; use neither")


def _round8(v: int) -> int:
    return max(8, round(v / 8) * 8)


def load(path, *, vae=None, device: str | None = None, precision: str = "auto",
         prediction: str | None = None, embeddings_dir=None, loras_dir=None, memory: str = "auto",
         text_encoders=()) -> Pipeline:
    """Load a checkpoint file or diffusers folder into a ready pipeline (`vae` and `text_encoders`:
    files replacing or adding those parts, as SD3/Flux networks alone need); `embeddings_dir` holds
    textual-inversion embeddings usable by file name in prompts, `loras_dir` the LoRAs that
    prompts name with <lora:name:weight>. device None/"auto" and precision "auto" choose from
    this machine (pipeline/precision.py); `pipe.precision.line(pipe.device)` says what and why.
    `memory`: auto, normal, medvram or lowvram (pipeline/offload.py; `pipe.memory` says which)."""
    from .memory_modes import check as check_memory
    from .offload import set_memory_mode

    dev = resolve_device(device)
    check_memory(memory)
    if precision != "auto":
        resolve_dtype(precision)  # a bad name fails before the file is read
    if prediction not in (None, "eps", "v"):
        raise InvalidArgument(f"prediction: {prediction!r} must be 'eps' or 'v'")
    chosen: list[Precision] = []

    def dtypes(cfg):
        chosen.append(choose_precision(precision, dev, cfg))
        return chosen[0].dtype, chosen[0].vae_dtype

    # Weights that may be offloaded load to the CPU first; set_memory_mode moves what fits.
    staged = torch.device("cpu") if dev.type == "cuda" and memory != "normal" else dev
    loaded = load_model(Path(path), vae=vae, prediction=prediction, device=staged, dtypes=dtypes,
                        text_encoders=text_encoders, runs_on=dev)
    embeddings = load_embeddings(embeddings_dir) if embeddings_dir is not None else None
    pipe = Pipeline(loaded, dev, chosen[0].dtype, embeddings=embeddings)
    pipe.precision = replace(chosen[0], kept=kept_16bit(loaded.model))
    set_memory_mode(pipe, memory)
    if loras_dir is not None:
        if not Path(loras_dir).is_dir():
            raise InvalidArgument(f"loras_dir: {loras_dir} is not a folder")
        pipe.lora_folders = [Path(loras_dir)]
    return pipe
