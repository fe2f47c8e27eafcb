"""Generation parameters, A1111's names and defaults, validated in one place."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from ..errors import InvalidArgument
from ..sampling.samplers import ALL_OPTIONS, OPTION_TYPES
from . import limits as L
from .cfg_skips import CfgSkips
from .images import FILL_MODES, RESIZE_MODES



@dataclass
class Hires:
    """Hires fix: upscale the first pass and repaint it with a second img2img pass."""
    scale: float = 2.0
    upscaler: str = "latent"          # a latent mode, None/Lanczos/Nearest or a model (opensd.upscale)
    steps: int | None = None          # None: same as the first pass
    denoise: float = 0.7
    width: int | None = None          # explicit target size wins over scale
    height: int | None = None
    sampler: str | None = None        # None: same as the first pass
    scheduler: str | None = None
    prompt: str | None = None         # None: same prompt
    negative_prompt: str | None = None

    def target(self, width: int, height: int) -> tuple[int, int]:
        if self.width or self.height:
            w = self.width or round(width * (self.height / height) / 8) * 8
            h = self.height or round(height * (self.width / width) / 8) * 8
            return w, h
        return round(width * self.scale / 8) * 8, round(height * self.scale / 8) * 8


@dataclass
class Params:
    prompt: str = ""
    negative_prompt: str = ""
    steps: int = 20
    cfg: float = 7.0
    seed: int | None = -1
    subseed: int | None = None
    subseed_strength: float = 0.0
    width: int | None = None
    height: int | None = None
    batch_size: int = 1
    sampler: str = "euler"
    scheduler: str | None = None
    clip_skip: int | None = None
    tiling: bool = False              # A1111's "Tiling": circular padding in the UNet and VAE
    # Rectified-flow models (SD3, Flux): the schedule's shift (None: the model's own; SD3 3.0, Flux
    # dev from the image size) and the distilled guidance fed to the network (Flux dev; None: 3.5).
    shift: float | None = None
    distilled_guidance: float | None = None
    # Sampler options by name (eta, s_churn, s_tmin, s_tmax, s_noise, order, ...; opensd.sampling.samplers):
    # each pass's sampler gets the ones it takes, as in A1111.
    sampler_options: dict = field(default_factory=dict)
    noise_seed_delta: int = 0         # A1111's ENSD: per-step noise drawn from seed + this (noise.py)
    device_noise: bool = False        # draw noise on the device, not the CPU (A1111's randn_source "GPU")
    # Evaluations without the negative prompt (A1111's CFG denoiser; pipeline/cfg_skips.py): NGMS
    # below this sigma on every other evaluation (every one with s_min_uncond_all), and the first
    # skip_early_cond fraction of each pass's evaluations. 0: off.
    s_min_uncond: float = 0.0
    s_min_uncond_all: bool = False
    skip_early_cond: float = 0.0
    # A prompt and negative prompt of different lengths (pipeline/cond_padding.py): by default two UNet
    # calls, as A1111; A1111's settings pad them into one (empty prompts; v0: the negative's last token).
    pad_cond_uncond: bool = False
    pad_cond_uncond_v0: bool = False
    # img2img / inpainting
    strength: float = 0.75
    resize_mode: str = "just resize"
    mask_blur: int = 4
    inpainting_fill: str = "original"
    inpaint_full_res: bool = False
    inpaint_full_res_padding: int = 32
    invert_mask: bool = False
    hires: Hires | None = field(default=None)

    @property
    def cfg_skips(self) -> CfgSkips:
        return CfgSkips(self.s_min_uncond, self.s_min_uncond_all, self.skip_early_cond)

    @classmethod
    def of(cls, **kwargs) -> "Params":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise InvalidArgument(f"{unknown[0]}: unknown parameter")
        return cls(**kwargs)

    def validate(self, limits: L.Limits = L.DEFAULT_LIMITS) -> None:
        if not isinstance(self.prompt, str) or not isinstance(self.negative_prompt, str):
            raise InvalidArgument("prompt: prompt and negative prompt must be text")
        L.check_size(self.width, self.height, limits)
        L.check_steps(self.steps, limits)
        L.check_cfg(self.cfg, limits)
        L.check_batch(self.batch_size, limits)
        L.check_seed(self.seed)
        if self.subseed is not None:
            L.check_seed(self.subseed, "subseed")
        _fraction("subseed_strength", self.subseed_strength)
        _fraction("strength", self.strength)
        if self.resize_mode not in RESIZE_MODES:
            raise InvalidArgument(f"resize_mode: {self.resize_mode!r} is not one of {', '.join(RESIZE_MODES)}")
        if self.inpainting_fill not in FILL_MODES:
            raise InvalidArgument(f"inpainting_fill: {self.inpainting_fill!r} is not one of {', '.join(FILL_MODES)}")
        if not isinstance(self.tiling, bool):
            raise InvalidArgument(f"tiling: {self.tiling!r} must be true or false")
        _sampler_options(self.sampler_options)
        if not isinstance(self.noise_seed_delta, int) or not 0 <= self.noise_seed_delta < 2**32:
            raise InvalidArgument(f"noise_seed_delta: {self.noise_seed_delta!r} is outside 0..{2**32 - 1}")
        if not isinstance(self.device_noise, bool):
            raise InvalidArgument(f"device_noise: {self.device_noise!r} must be true or false")
        L.check_clip_skip(self.clip_skip)
        self.cfg_skips.validate()
        for name in ("pad_cond_uncond", "pad_cond_uncond_v0"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidArgument(f"{name}: {getattr(self, name)!r} must be true or false")
        for name in ("shift", "distilled_guidance"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value) or not 0 <= value <= 100):
                raise InvalidArgument(f"{name}: {value!r} must be a number in 0..100")
        if not 0 <= self.inpaint_full_res_padding <= 1024:
            raise InvalidArgument(f"inpaint_full_res_padding: {self.inpaint_full_res_padding} is outside 0..1024")
        if self.hires is not None:
            h = self.hires
            if not isinstance(h.upscaler, str) or not h.upscaler.strip() or len(h.upscaler) > 255:
                raise InvalidArgument(f"hires upscaler: {h.upscaler!r} is not an upscaler name (a latent mode, "
                                      "None, Lanczos, Nearest or an upscaler model's name)")
            if not isinstance(h.scale, (int, float)) or not math.isfinite(h.scale) or not 1 <= h.scale <= 8:
                raise InvalidArgument(f"hires scale: {h.scale!r} is outside 1..8")
            _fraction("hires denoise", h.denoise)
            if h.steps is not None:
                L.check_steps(h.steps, limits)
            L.check_size(*h.target(self.width, self.height), limits)


def _sampler_options(options) -> None:
    if not isinstance(options, dict):
        raise InvalidArgument(f"sampler_options: expected an object, got {options!r}")
    for name, value in options.items():
        if name not in ALL_OPTIONS:
            raise InvalidArgument(f"sampler_options: {name!r} is not an option of any sampler "
                                  f"({', '.join(sorted(ALL_OPTIONS))})")
        if isinstance(value, float) and not math.isfinite(value) and not (name == "s_tmax" and value > 0):
            raise InvalidArgument(f"sampler_options.{name}: {value!r} must be finite")
        if not isinstance(value, (int, float, str)):
            raise InvalidArgument(f"sampler_options.{name}: {value!r} must be a number or a name")
        kind = OPTION_TYPES[name]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind is bool and not isinstance(value, bool) or kind is str and not isinstance(value, str) \
                or kind in (int, float) and not number or kind is int and number and not float(value).is_integer():
            raise InvalidArgument(f"sampler_options.{name}: {value!r} must be {_KINDS[kind]}")
        if name in _NON_NEGATIVE and value < 0:
            raise InvalidArgument(f"sampler_options.{name}: {value!r} must be 0 or more")


_KINDS = {bool: "true or false", str: "a name", int: "a whole number", float: "a number"}
_NON_NEGATIVE = {"eta", "s_churn", "s_tmin", "s_tmax", "s_noise", "r", "rtol", "atol", "h_init", "accept_safety"}


def _fraction(name: str, value) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= 1:
        raise InvalidArgument(f"{name}: {value!r} must be a number in 0..1")
