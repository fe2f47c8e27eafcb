"""Generation parameters, A1111's names and defaults, validated in one place."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from ..errors import InvalidArgument
from ..sampling import schedule_options
from ..sampling.samplers import ALL_OPTIONS, OPTION_TYPES
from ..text.prompt_parser import EMPHASIS_LABELS
from . import limits as L
from .cfg_skips import CfgSkips
from .images import FILL_MODES, RESIZE_MODES
from .soft_inpaint_settings import SoftInpainting
from .speedups import HyperTile, check_ratio



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
    token_merging: float | None = None  # None or 0: the first pass's (A1111's token_merging_ratio_hr)
    # A1111's hires_fix_use_firstpass_conds: the pass's prompts encoded under the first pass's LoRAs
    firstpass_conds: bool = False

    def upscaled(self, width: int, height: int, down: int = 8) -> tuple[int, int, int, int]:
        """A1111's calculate_target_resolution for a `width` x `height` first pass: (the width and
        height it upscales to, the latent columns and rows it then cuts off, half on each side). A
        scale or one side keeps the aspect (sizes rounded down); both sides cover that size and the
        excess is cut off, centred."""
        if not (self.width or self.height):
            return int(width * self.scale), int(height * self.scale), 0, 0
        if not self.height:
            return self.width, self.width * height // width, 0, 0
        if not self.width:
            return self.height * width // height, self.height, 0, 0
        if width / height < self.width / self.height:
            up_w, up_h = self.width, self.width * height // width
        else:
            up_w, up_h = self.height * width // height, self.height
        return up_w, up_h, (up_w - self.width) // down, (up_h - self.height) // down

    def target(self, width: int, height: int, down: int = 8) -> tuple[int, int]:
        """The size the hires pass samples and the image has: what upscaled() leaves, in whole latents."""
        up_w, up_h, cut_x, cut_y = self.upscaled(width, height, down)
        return (up_w // down - cut_x) * down, (up_h // down - cut_y) * down


_TEXT_DEFAULTS = {"emphasis": "original", "comma_backtrack": 20, "clip_l_skip": False, "old_emphasis": False}


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
    # A1111's noise-schedule settings by its names (sigma_min, rho, sd_noise_schedule, ...;
    # opensd.sampling.schedule_options), the ones off A1111's defaults.
    schedule_options: dict = field(default_factory=dict)
    noise_seed_delta: int = 0         # A1111's ENSD: per-step noise drawn from seed + this (noise.py)
    device_noise: bool = False        # draw noise on the device, not the CPU (A1111's randn_source "GPU")
    # A1111's "Resize seed from width/height": the initial noise drawn at this size, centred into the
    # image's (noise.py); on only when both are above 0.
    seed_resize_from_w: int = 0
    seed_resize_from_h: int = 0
    # How prompts are encoded, A1111's settings (pipeline/conditioning.py): "emphasis" (one of
    # EMPHASIS_LABELS' ids), "comma_padding_backtrack" (0..74 tokens), "sdxl_clip_l_skip" (SDXL's
    # CLIP-L follows clip_skip), "use_old_emphasis_implementation" (bracket tokens, one chunk), and
    # SDXL's crop-coordinates conditioning.
    emphasis: str = "original"
    comma_padding_backtrack: int = 20
    sdxl_clip_l_skip: bool = False
    use_old_emphasis_implementation: bool = False
    sdxl_crop_top: int = 0
    sdxl_crop_left: int = 0
    # Speed for a little quality (pipeline/speedups.py): the ratio of tokens ToMe merges (A1111's
    # token_merging_ratio; 0: off) and A1111's Hypertile settings (None: off).
    token_merging: float = 0.0
    hypertile: HyperTile | None = None
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
    fix_steps: bool = False           # A1111's img2img_fix_steps: run exactly `steps` steps (img2img.py)
    refiner_switch_by_sample_steps: bool = False  # A1111's old refiner switch: by evaluations (refiner.py)
    old_scheduling: bool = False      # A1111's use_old_scheduling: prompt editing's old timelines
    resize_mode: str = "just resize"
    mask_blur: int = 4
    mask_blur_y: int | None = None    # A1111's mask_blur_y where it differs from mask_blur (its _x)
    inpainting_fill: str = "original"
    inpaint_full_res: bool = False
    inpaint_full_res_padding: int = 32
    invert_mask: bool = False
    # A1111's img2img settings: initial_noise_multiplier scales img2img's initial noise;
    # img2img_extra_noise adds that noise again, times this, after noising (img2img and the hires
    # pass); inpainting_mask_weight: how much of the masked area inpainting models' conditioning
    # image blanks (0: none, the whole image); img2img_color_correction matches the results'
    # colours to the init image's (color_correction.py).
    noise_multiplier: float = 1.0
    extra_noise: float = 0.0
    mask_weight: float = 1.0
    color_correction: bool = False
    image_cfg_scale: float | None = None  # InstructPix2Pix models' image guidance (instruct_pix2pix.py); None: off
    soft_inpainting: SoftInpainting | None = None  # A1111's Soft Inpainting (soft_inpaint.py); None: off
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
        if kwargs.get("soft_inpainting") is not None:  # stored jobs keep it as a plain dict
            kwargs["soft_inpainting"] = SoftInpainting.of(kwargs["soft_inpainting"])
        return cls(**kwargs)

    def seed_resize(self) -> tuple[int, int] | None:
        """(width, height) the seed's noise is drawn at, or None (A1111: both must be above 0)."""
        w, h = self.seed_resize_from_w, self.seed_resize_from_h
        return (w, h) if w > 0 and h > 0 else None

    def text_options(self) -> dict:
        """The prompt encoder's options (PromptConditioner) this asks for, only those off their defaults."""
        wanted = {"emphasis": self.emphasis, "comma_backtrack": self.comma_padding_backtrack,
                  "clip_l_skip": self.sdxl_clip_l_skip, "old_emphasis": self.use_old_emphasis_implementation}
        return {k: v for k, v in wanted.items() if v != _TEXT_DEFAULTS[k]}

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
        schedule_options.check(self.schedule_options)
        if not isinstance(self.noise_seed_delta, int) or not 0 <= self.noise_seed_delta < 2**32:
            raise InvalidArgument(f"noise_seed_delta: {self.noise_seed_delta!r} is outside 0..{2**32 - 1}")
        if not isinstance(self.device_noise, bool):
            raise InvalidArgument(f"device_noise: {self.device_noise!r} must be true or false")
        L.check_clip_skip(self.clip_skip)
        if self.emphasis not in EMPHASIS_LABELS:
            raise InvalidArgument(f"emphasis: {self.emphasis!r} is not one of {', '.join(EMPHASIS_LABELS)}")
        _whole("comma_padding_backtrack", self.comma_padding_backtrack, 0, 74)
        _whole("sdxl_crop_top", self.sdxl_crop_top, 0, limits.max_side)
        _whole("sdxl_crop_left", self.sdxl_crop_left, 0, limits.max_side)
        for name in ("sdxl_clip_l_skip", "use_old_emphasis_implementation"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidArgument(f"{name}: {getattr(self, name)!r} must be true or false")
        for name in ("seed_resize_from_w", "seed_resize_from_h"):
            _whole(name, getattr(self, name), -1, limits.max_side)
        check_ratio("token_merging", self.token_merging)
        if self.hypertile is not None:
            if not isinstance(self.hypertile, HyperTile):
                raise InvalidArgument(f"hypertile: {self.hypertile!r} is not a HyperTile")
            self.hypertile.validate()
        self.cfg_skips.validate()
        for name in ("pad_cond_uncond", "pad_cond_uncond_v0", "fix_steps", "refiner_switch_by_sample_steps",
                     "old_scheduling"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidArgument(f"{name}: {getattr(self, name)!r} must be true or false")
        for name in ("shift", "distilled_guidance"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value) or not 0 <= value <= 100):
                raise InvalidArgument(f"{name}: {value!r} must be a number in 0..100")
        for name in IMG2IMG_SETTINGS:
            check_img2img_setting(name, getattr(self, name))
        if not 0 <= self.inpaint_full_res_padding <= 1024:
            raise InvalidArgument(f"inpaint_full_res_padding: {self.inpaint_full_res_padding} is outside 0..1024")
        if self.soft_inpainting is not None:
            self.soft_inpainting.validate()
        s = self.image_cfg_scale
        if s is not None and not (isinstance(s, (int, float)) and math.isfinite(s) and 0 <= s <= 30):
            raise InvalidArgument(f"image_cfg_scale: {s!r} is outside 0..30")
        if self.hires is not None:
            h = self.hires
            if not isinstance(h.upscaler, str) or not h.upscaler.strip() or len(h.upscaler) > 255:
                raise InvalidArgument(f"hires upscaler: {h.upscaler!r} is not an upscaler name (a latent mode, "
                                      "None, Lanczos, Nearest or an upscaler model's name)")
            if not isinstance(h.scale, (int, float)) or not math.isfinite(h.scale) or not 1 <= h.scale <= 8:
                raise InvalidArgument(f"hires scale: {h.scale!r} is outside 1..8")
            _fraction("hires denoise", h.denoise)
            if h.token_merging is not None:
                check_ratio("hires token_merging", h.token_merging)
            if h.steps is not None:
                L.check_steps(h.steps, limits)
            L.check_size(*h.target(self.width, self.height), limits)


def _whole(name: str, value, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidArgument(f"{name}: {value!r} must be a whole number in {lo}..{hi}")


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
        if name in _NOISE_SCALES and value > _NOISE_SCALES[name]:
            raise InvalidArgument(f"sampler_options.{name}: {value!r} must be at most {_NOISE_SCALES[name]}")


_KINDS = {bool: "true or false", str: "a name", int: "a whole number", float: "a number"}
_NON_NEGATIVE = {"eta", "s_churn", "s_tmin", "s_tmax", "s_noise", "r", "rtol", "atol", "h_init", "accept_safety"}
# Noise scales, at most ComfyUI's own maximum for them (its sampler nodes' eta and s_noise): far
# past any use, short of the float32 overflow (1e30: NaN images, DPM adaptive's division by zero).
_NOISE_SCALES = {"eta": 100.0, "s_noise": 100.0}


# A1111's img2img settings (Params field -> the most it may be; None: true or false)
IMG2IMG_SETTINGS = {"noise_multiplier": 1.5, "extra_noise": 1, "mask_weight": 1, "color_correction": None}


def check_img2img_setting(name: str, value) -> None:
    most = IMG2IMG_SETTINGS[name]
    if most is not None:
        _number(name, value, most)
    elif not isinstance(value, bool):
        raise InvalidArgument(f"{name}: {value!r} must be true or false")


def _number(name: str, value, most: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 <= value <= most:
        raise InvalidArgument(f"{name}: {value!r} must be a number in 0..{most}")


def _fraction(name: str, value) -> None:
    _number(name, value, 1)
