"""The generation pipeline: a loaded model plus tokenizer, device and precision, and the modes."""
from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from .loader import LoadedModel, load_model
from ..errors import InvalidArgument
from ..sampling.denoiser import Denoiser
from ..sampling.samplers import get_sampler
from ..sampling.schedules import DiscreteSchedule, normal_sigmas, scaled_linear_alphas_cumprod
from ..text.tokenizer import default_tokenizer
from . import limits as L
from .conditioning import Conditioning, encode_prompts, size_vector

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# progress(step, total), called after every sampling step.
Progress = Callable[[int, int], None] | None


def resolve_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name not in ("cpu", "cuda", "mps") and not name.startswith("cuda:"):
        raise InvalidArgument(f"device: unknown device {name!r}; use cpu, cuda, cuda:N or mps")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidArgument("device: CUDA was requested but this PyTorch build has no usable CUDA device")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InvalidArgument("device: MPS was requested but is not available on this machine")
    return torch.device(name)


def resolve_dtype(precision: str) -> torch.dtype:
    if precision not in PRECISIONS:
        raise InvalidArgument(f"precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


class Pipeline:
    def __init__(self, loaded: LoadedModel, device: torch.device, dtype: torch.dtype,
                 limits: L.Limits = L.DEFAULT_LIMITS):
        self.loaded = loaded
        self.model = loaded.model
        self.config = loaded.config
        self.device = device
        self.dtype = dtype
        self.limits = limits
        self.tokenizer = default_tokenizer()
        alphas = loaded.alphas_cumprod if loaded.alphas_cumprod is not None else scaled_linear_alphas_cumprod()
        self.schedule = DiscreteSchedule(alphas)

    @property
    def name(self) -> str:
        return self.loaded.path.stem if self.loaded.path.is_file() else self.loaded.path.name

    # --- modes -----------------------------------------------------------------------------

    def txt2img(self, prompt: str, negative_prompt: str = "", *, steps: int = 20, cfg: float = 7.0,
                seed: int | None = None, width: int | None = None, height: int | None = None,
                batch_size: int = 1, sampler: str = "euler", progress: Progress = None) -> list[Image.Image]:
        """Generate `batch_size` images; image i uses seed + i. Each image's `info` carries its seed."""
        width = self.config.resolution if width is None else width
        height = self.config.resolution if height is None else height
        L.check_size(width, height, self.limits)
        L.check_steps(steps, self.limits)
        L.check_cfg(cfg, self.limits)
        L.check_batch(batch_size, self.limits)
        L.check_seed(seed)
        sample = get_sampler(sampler)
        if not isinstance(prompt, str) or not isinstance(negative_prompt, str):
            raise InvalidArgument("prompt: prompt and negative prompt must be text")
        down = self.config.vae.downscale
        if width % down or height % down:
            raise InvalidArgument(f"width/height: must be multiples of {down} for this model")
        seed = random.randint(0, L.MAX_SEED - batch_size) if seed in (None, -1) else seed
        seeds = [(seed + i) % (L.MAX_SEED + 1) for i in range(batch_size)]

        cond = self._condition([prompt], width, height)
        uncond = self._condition([negative_prompt], width, height, negative=True)
        denoise = self._cfg_denoiser(uncond.cat(cond), cfg)
        sigmas = normal_sigmas(self.schedule, steps)
        total = steps * batch_size
        images = []
        # One image at a time: batched kernels round differently, and image i of a batch must be
        # bit-identical to generating seed+i alone.
        for n, s in enumerate(seeds):
            x = self.noise([s], height // down, width // down) * sigmas[0]
            callback = (lambda i, _x, _d, n=n: progress(n * steps + i + 1, total)) if progress else None
            latents = sample(denoise, x, sigmas, callback)
            (image,) = self.decode(latents)
            image.info["seed"] = s
            images.append(image)
        return images

    # --- building blocks -------------------------------------------------------------------

    def noise(self, seeds: list[int], h: int, w: int) -> torch.Tensor:
        """Initial noise drawn on the CPU per image, so a seed gives the same image on any device
        and image i of a batch equals generating it alone."""
        c = self.config.latent_channels
        noise = [torch.randn((c, h, w), generator=torch.Generator("cpu").manual_seed(s)) for s in seeds]
        return torch.stack(noise).to(self.device)

    def _condition(self, prompts: list[str], width: int, height: int, negative: bool = False) -> Conditioning:
        c = encode_prompts(self.model, self.tokenizer, prompts, self.device)
        if self.config.unet.adm_in_channels:
            score = 2.5 if negative else 6.0  # refiner's conventional aesthetic scores
            c.pooled = size_vector(self.config, c.pooled, width, height, score)
        return c

    def _cfg_denoiser(self, both: Conditioning, cfg: float):
        """Classifier-free guidance: one UNet call on [uncond; cond] per step."""
        unet = self.model.unet

        def unet_fn(x, t, context, y):
            with torch.no_grad():
                return unet(x, t, context, y).float()

        model = Denoiser(unet_fn, self.schedule, self.config.prediction)

        def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            out = model(torch.cat([x, x]), sigma, context=both.context, y=both.pooled)
            uncond, cond = out.chunk(2)
            return uncond + cfg * (cond - uncond)

        return denoise

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        vae = self.model.vae
        images = []
        for z in latents:  # one at a time: VAE decoding at full size dominates peak memory
            z = (z[None] / self.config.vae.scaling_factor)
            x = vae.decode(z.to(next(vae.parameters()).dtype))
            if not torch.isfinite(x).all():
                if next(vae.parameters()).dtype == torch.float32:
                    raise FloatingPointError("VAE decode produced NaN/inf even in fp32; the model is broken")
                # fp16 VAEs (SD1/SDXL) overflow; decode in fp32 from now on rather than save a black image.
                log.warning("VAE produced NaN in %s; switching the VAE to fp32", x.dtype)
                vae.float()
                x = vae.decode(z.float())
            images.append(to_pil(x[0]))
        return images


def to_pil(x: torch.Tensor) -> Image.Image:
    """(3, H, W) in [-1, 1] -> RGB image."""
    arr = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")


def load(path, *, vae=None, device: str | None = None, precision: str = "fp32",
         prediction: str | None = None) -> Pipeline:
    """Load a checkpoint file or diffusers folder into a ready pipeline."""
    dev = resolve_device(device)
    dtype = resolve_dtype(precision)
    if prediction not in (None, "eps", "v"):
        raise InvalidArgument(f"prediction: {prediction!r} must be 'eps' or 'v'")
    loaded = load_model(Path(path), vae=vae, prediction=prediction, dtype=dtype, device=dev)
    return Pipeline(loaded, dev, dtype)
