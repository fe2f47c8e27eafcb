"""Request bodies of the AUTOMATIC1111 API, with A1111's field names and defaults.

Every model allows extra fields (clients send many we do not implement); they are accepted and
reported in the response's info (a1111_unsupported), never an error. Values are range-checked
here (422 naming the field); NaN/inf are refused for every float. A whole-number field takes a
number with a fraction and drops the fraction, as A1111 does (its pydantic 1 models do): clients
send such (AIYA: hr_second_pass_steps = steps / 2)."""
from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from ..pipeline import limits as L

_LIM = L.DEFAULT_LIMITS
MAX_PROMPT = 20_000


def _whole(value):
    return int(value) if isinstance(value, float) and math.isfinite(value) else value


Int = Annotated[int, BeforeValidator(_whole)]


def _finite(default, lo, hi):
    return Field(default, ge=lo, le=hi, allow_inf_nan=False)


class _Base(BaseModel):
    model_config = ConfigDict(extra="allow", ser_json_inf_nan="null")


class GenerationRequest(_Base):
    prompt: str = Field("", max_length=MAX_PROMPT)
    negative_prompt: str = Field("", max_length=MAX_PROMPT)
    styles: list[str] | None = None
    seed: Int = Field(-1, ge=-1, le=L.MAX_SEED)
    subseed: Int = Field(-1, ge=-1, le=L.MAX_SEED)
    subseed_strength: float = _finite(0.0, 0, 1)
    # A1111's "Resize seed from": 0 or -1 is off; the noise is drawn at this size (pixels)
    seed_resize_from_h: Int = Field(-1, ge=-1, le=_LIM.max_side)
    seed_resize_from_w: Int = Field(-1, ge=-1, le=_LIM.max_side)
    sampler_name: str | None = Field(None, max_length=100)
    sampler_index: str | None = Field("Euler", max_length=100)
    scheduler: str | None = Field(None, max_length=100)
    batch_size: Int = Field(1, ge=1, le=_LIM.max_batch)
    n_iter: Int = Field(1, ge=1, le=100)
    steps: Int = Field(50, ge=1, le=_LIM.max_steps)
    cfg_scale: float = _finite(7.0, 0, _LIM.max_cfg)
    # Flux dev's distilled guidance (Forge's field; None: the model's 3.5) and the flow schedule's
    # shift of SD3/Flux (opensd's; None: the model's own)
    distilled_cfg_scale: float | None = Field(None, ge=0, le=100, allow_inf_nan=False)
    shift: float | None = Field(None, ge=0, le=100, allow_inf_nan=False)
    width: Int = Field(512, ge=8, le=_LIM.max_side)
    height: Int = Field(512, ge=8, le=_LIM.max_side)
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = Field(None, allow_inf_nan=False)
    denoising_strength: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    s_min_uncond: float | None = Field(None, allow_inf_nan=False)
    s_churn: float | None = Field(None, allow_inf_nan=False)
    s_tmax: float | None = Field(None, allow_inf_nan=False)
    s_tmin: float | None = Field(None, allow_inf_nan=False)
    s_noise: float | None = Field(None, allow_inf_nan=False)
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = Field(None, allow_inf_nan=False)
    disable_extra_networks: bool = False
    comments: dict[str, Any] | None = None
    script_name: str | None = None
    script_args: list[Any] = Field(default_factory=list)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    infotext: str | None = None
    force_task_id: str | None = None
    # opensd's: reference images (base64, as init_images) for the models that edit with them
    # (a1111_references.py; at most MAX_REFERENCES, checked there with its own message)
    reference_images: list[str] = Field(default_factory=list, max_length=64)


class Txt2ImgRequest(GenerationRequest):
    enable_hr: bool = False
    firstpass_image: str | None = None
    firstphase_width: Int = Field(0, ge=0, le=_LIM.max_side)  # A1111 1.x: the image's size when set
    firstphase_height: Int = Field(0, ge=0, le=_LIM.max_side)
    hr_scale: float = _finite(2.0, 1, 8)
    hr_upscaler: str | None = Field(None, max_length=100)
    hr_second_pass_steps: Int = Field(0, ge=0, le=_LIM.max_steps)
    hr_resize_x: Int = Field(0, ge=0, le=_LIM.max_side)
    hr_resize_y: Int = Field(0, ge=0, le=_LIM.max_side)
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = Field(None, max_length=100)
    hr_scheduler: str | None = Field(None, max_length=100)
    hr_prompt: str = Field("", max_length=MAX_PROMPT)
    hr_negative_prompt: str = Field("", max_length=MAX_PROMPT)


class Img2ImgRequest(GenerationRequest):
    init_images: list[str] = Field(default_factory=list, max_length=64)
    resize_mode: Int = Field(0, ge=0, le=3)
    image_cfg_scale: float | None = Field(None, allow_inf_nan=False)
    mask: str | None = None
    mask_blur_x: Int = Field(4, ge=0, le=256)
    mask_blur_y: Int = Field(4, ge=0, le=256)
    mask_blur: Int | None = Field(None, ge=0, le=256)
    inpainting_fill: Int = Field(0, ge=0, le=3)
    inpaint_full_res: bool = True
    inpaint_full_res_padding: Int = Field(0, ge=0, le=1024)
    inpainting_mask_invert: Int = Field(0, ge=0, le=1)
    initial_noise_multiplier: float | None = Field(None, allow_inf_nan=False)
    latent_mask: str | None = None
    include_init_images: bool = False
    denoising_strength: float = _finite(0.75, 0, 1)


class PngInfoRequest(_Base):
    image: str = ""
