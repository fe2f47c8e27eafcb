"""The hires fix's second pass: upscale the first pass (a latent mode, or the decoded image through
an upscaler), renoise and denoise at the target size, on this model or A1111's hires checkpoint."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace

import torch
import torch.nn.functional as F
from PIL import Image

from ..models.conv import circular_padding
from ..sampling.names import resolve
from ..sampling.samplers import NEEDS_UNCOND
from ..upscale import latent_mode
from . import images as I
from . import img2img as i2i
from .params import Hires, Params


class HiresPass:
    """A Pipeline's hires pass (a part of Pipeline, kept in its own file)."""

    def _hires(self, p: Params, h: Hires, latents: torch.Tensor | None, seed: int, subseed: int | None,
               report) -> torch.Tensor:
        """Second pass at the target size: upscale (a latent mode, or the decoded image through an
        upscaler and encoded again, as A1111 does), renoise, denoise. With a hires model (A1111's
        hr_checkpoint_name) this model decodes the first pass and the hires model does the rest."""
        down = self.config.vae.downscale
        up_w, up_h, cut_x, cut_y = h.upscaled(p.width, p.height, down)
        w, h_px = h.target(p.width, p.height, down)
        offset = 0 if latents is None else i2i.steps_run(p.steps, 1.0)
        second = replace(p, width=w, height=h_px, steps=h.steps or p.steps, strength=h.denoise,
                         sampler=h.sampler or p.sampler, scheduler=h.scheduler or p.scheduler,
                         prompt=p.prompt if h.prompt is None else h.prompt,
                         negative_prompt=p.negative_prompt if h.negative_prompt is None else h.negative_prompt,
                         token_merging=h.token_merging or p.token_merging)  # A1111's `or`: 0 is "the same"
        hr = self._hires_model or self
        mode = latent_mode(h.upscaler)
        image = None
        if mode is not None:  # a given first pass is encoded at its own size, as A1111 does
            first = latents if latents is not None else self.encode(self._first_pass)
            init = F.interpolate(first, size=(up_h // down, up_w // down), mode=mode[0], antialias=mode[1])
        else:  # a model upscaler may take a while: the stop check runs after each of its tiles
            first = self._decoded(latents) if latents is not None else self._first_pass
            image = self.upscalers.resize(first, up_w, up_h, h.upscaler, "hires upscaler",
                                          progress=lambda i, n: report(offset))
            init = hr.encode(image)
        if cut_x or cut_y:  # A1111 cuts the excess of a covering upscale off the latents, centred
            top, left = cut_y // 2, cut_x // 2
            init = init[:, :, top:top + h_px // down, left:left + w // down]
            if image is not None:  # (inpainting models' channels: the same part of the image)
                image = image.crop((left * down, top * down, left * down + w, top * down + h_px))
        self._speedups.before_hires(w, h_px)
        # A1111 hands the hires pass its steps: exactly that many, of a longer schedule
        total, run = i2i.schedule_steps(second.steps, h.denoise, fixed=True)
        with self._lent_to(hr, second.prompt, p.tiling), self._own_networks(hr, p, second, run, w, h_px):
            # A1111 draws the second pass's noise afresh from the same seeds, at the new size.
            noise = hr._image_noise(p, seed, subseed, tuple(init.shape))
            sigmas = i2i.tail(hr.sigmas(second, total), run)
            image_cond = hr._hires_image_cond(p, init, image, w, h_px)
            x = hr._noised(second, sigmas[0], noise.initial, init, p.extra_noise)
            return hr._sample(second, x, sigmas, noise, lambda i: report(offset + i), w, h_px, image_cond=image_cond,
                              hires_pass=2, first_steps=p.steps)

    @contextmanager
    def _lent_to(self, hr: "HiresPass", prompt: str, tiling: bool):
        """The running generation's extras (ControlNets, references, image prompt, refiner, previews)
        on the hires model for its pass, with the LoRAs its prompt names (A1111 applies the hires
        prompt's extra networks to the hires checkpoint); nothing to do when it is this model."""
        if hr is self:
            yield
            return
        hr._cond_cache = {}
        hr.apply_loras(prompt)
        hr._controls, hr._references, hr._ip_adapter = self._controls, self._references, self._ip_adapter
        hr._reference_images = getattr(self, "_reference_images", [])  # Qwen-Image-Edit's prompts see them
        hr._refiner, hr._refined, hr.on_latents = hr._checked(self._refiner), False, self.on_latents
        hr._speedups = self._speedups  # one Hypertile draw sequence for the run, decode included
        hr._cfg_skips = self._cfg_skips  # its pass's negative-prompt skips count for the image too
        try:
            with circular_padding(hr.family.network(hr.model), hr.model.vae, enabled=tiling):
                yield
        finally:
            self._refined = self._refined or hr._refined
            hr._controls, hr._references, hr._ip_adapter, hr._refiner, hr.on_latents = [], [], None, None, None
            hr._reference_images = []

    @contextmanager
    def _own_networks(self, hr: "HiresPass", p: Params, second: Params, steps: int, width: int, height: int):
        """The hires pass on this model: with the LoRAs its prompt names, as A1111 activates the hires
        prompt's extra networks for it, and the first pass's again after (the next image's). With
        `p.hires.firstpass_conds` (A1111's hires_fix_use_firstpass_conds) the pass's prompts are encoded
        before the switch, under the first pass's LoRAs, as A1111 encodes them beside the first
        pass's; the UNet still runs with the hires prompt's."""
        if hr is not self:
            yield  # the hires checkpoint (_lent_to), where A1111 does not use the setting
            return
        if p.hires.firstpass_conds:  # the encodings the pass asks for (Pipeline._sample), made now
            self.guidance(second, steps, width, height, resolve(second.sampler, second.scheduler)[0] in NEEDS_UNCOND,
                          p.steps)
        first = self._cond_cache  # encoded under the first pass's LoRAs
        self.apply_loras(second.prompt)  # a changed set starts a new cache
        if p.hires.firstpass_conds:
            self._cond_cache = first
        try:
            yield
        finally:
            hires = self._cond_cache
            self.apply_loras(p.prompt)
            if self._cond_cache is not hires:  # switched back: the first pass's encodings hold again
                self._cond_cache = first

    def _hires_image_cond(self, p: Params, latents: torch.Tensor, image: Image.Image | None, width: int,
                          height: int) -> torch.Tensor | None:
        """Inpainting models' channels for the hires pass: an empty image, as in txt2img, unless
        inpainting_mask_weight < 1 leaves part of the upscaled image in them. As A1111 does, the
        image is the decoded upscaled latents in [-1, 1] after a latent upscale, but the upscaler's
        image in [0, 1] after an image upscaler (A1111 passes it unscaled)."""
        if not self.config.inpainting:
            return None
        if p.mask_weight == 1:
            return self.inpainting_cond(None, None, width, height)
        pixels = self.decode_tensor(latents) if image is None else (I.to_tensor(image) + 1) / 2
        return self.inpainting_cond(pixels, None, weight=p.mask_weight)
