"""The X/Y/Z plot's axis types: AUTOMATIC1111 1.10's list, in its order, so that the index a client
sends as `x_type` means the same axis here (the txt2img list leaves out the img2img-only axes and the
other way round). Each type says how to read its values, how to label them and what a value changes
in a Spec; the ones whose setting does nothing here are listed with the reason and refused.
"""
from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import InvalidArgument
from ..sampling.names import resolve, scheduler_id
from ..text.styles import apply_styles
from .spec import Spec
from .value_lists import MAX_VALUES

INT, FLOAT, TEXT, ORDER = "int", "float", "text", "order"


@dataclass(frozen=True)
class AxisType:
    label: str
    kind: str = TEXT
    apply: Callable | None = None        # (spec, value, values, face) -> None; None: not done here
    modes: tuple[str, ...] = ("txt2img", "img2img")
    named: bool = True                   # label cells "Steps: 20" (else just the value)
    cost: float = 0.0                    # costly axes (model switches) run in the outer loop
    choices: bool = False                # A1111 offers a dropdown (script_args' *_values_dropdown)
    missing: str = ""                    # why it is refused

    def label_of(self, value) -> str:
        if self.label == "Nothing":
            return ""
        if isinstance(value, float):
            value = round(value, 8)
        if self.kind == ORDER:
            value = ", ".join(value)
        elif self.label in ("Checkpoint name", "Refiner checkpoint"):
            value = os.path.basename(str(value))
        return f"{self.label}: {value}" if self.named else str(value)


def _field(name: str):
    def apply(spec: Spec, value, values, face):
        spec.kwargs[name] = value
    return apply


def _option(name: str):
    def apply(spec: Spec, value, values, face):
        spec.kwargs.setdefault("sampler_options", {})[name] = value
    return apply


def _schedule_setting(name: str, boolean: bool = False):
    """An A1111 schedule setting (sampling/schedule_options.py; A1111's axis overrides it): a
    number, or for the boolean axes "True"/"False" in any case (any other text is False, as A1111 reads it)."""
    def apply(spec: Spec, value, values, face):
        spec.kwargs.setdefault("schedule_options", {})[name] = value.strip().lower() == "true" if boolean else value
    return apply


def _hires(name: str):
    def apply(spec: Spec, value, values, face):
        if spec.kwargs.get("hires"):
            spec.kwargs["hires"][name] = value
    return apply


def _seed(spec: Spec, value, values, face):
    spec.seed = value


def _subseed(spec: Spec, value, values, face):
    spec.subseed = value


def _prompt_sr(spec: Spec, value, values, face):
    spec.prompt = spec.prompt.replace(values[0], value)
    spec.negative_prompt = spec.negative_prompt.replace(values[0], value)


def _prompt_order(spec: Spec, value, values, face):
    """The value's words in this order, at the places the prompt had them."""
    found = sorted((spec.prompt.find(word), word) for word in value)
    rest, parts = spec.prompt, []
    for _, word in found:
        at = rest.find(word)
        parts.append(rest[:at])
        rest = rest[at + len(word):]
    spec.prompt = "".join(part + word for part, word in zip(parts, value)) + rest


def _sampler(spec: Spec, value, values, face):
    spec.kwargs["sampler"], spec.kwargs["scheduler"] = resolve(value, spec.schedule)


def _hires_sampler(spec: Spec, value, values, face):
    if spec.kwargs.get("hires"):
        spec.kwargs["hires"]["sampler"], spec.kwargs["hires"]["scheduler"] = resolve(value, spec.schedule)


def _schedule(spec: Spec, value, values, face):
    spec.kwargs["scheduler"] = scheduler_id(value, spec.kwargs.get("sampler"))
    spec.schedule = None if value.strip().lower() == "automatic" else spec.kwargs["scheduler"]


def _checkpoint(spec: Spec, value, values, face):
    spec.model = face.checkpoint(value)


def _refiner(spec: Spec, value, values, face):
    off = value.strip().lower() in ("", "none")  # A1111: "None" runs without a refiner
    spec.refiner = "None" if off else face.checkpoint(value, "Refiner checkpoint")


def _refiner_switch(spec: Spec, value, values, face):
    if not 0 <= value <= 1:
        raise InvalidArgument(f"Refiner switch at: {value} is not a fraction in 0..1")
    spec.refiner_switch = value


def _vae(spec: Spec, value, values, face):
    spec.vae = face.vae(value)


def _clip_skip(spec: Spec, value, values, face):
    spec.kwargs["clip_skip"] = value if value > 1 else None


def _denoising(spec: Spec, value, values, face):
    if face.img2img:
        spec.kwargs["strength"] = value
    elif spec.kwargs.get("hires"):  # in txt2img A1111's denoising strength is the hires pass's
        spec.kwargs["hires"]["denoise"] = value


def _styles(spec: Spec, value, values, face):
    names = [n.strip() for n in value.split(",") if n.strip()]
    spec.prompt, spec.negative_prompt = apply_styles(spec.prompt, spec.negative_prompt, names, face.styles(),
                                                     where="Styles")


def _unipc_order(spec: Spec, value, values, face):
    spec.kwargs.setdefault("sampler_options", {})["order"] = min(value, spec.kwargs.get("steps", 20) - 1)


def _face_restore(spec: Spec, value, values, face):
    if value.strip().lower() not in ("false", "no", "n", "0", "none", ""):
        raise InvalidArgument(f"Face restore: {value!r}: no face restoration model here")


def _hires_upscaler(spec: Spec, value, values, face):
    upscaler = face.upscaler(value, hires=True)
    if spec.kwargs.get("hires"):
        spec.kwargs["hires"]["upscaler"] = upscaler


RNG_SOURCES = ("GPU", "CPU")  # A1111's third, NV, is not implemented


def _rng(spec: Spec, value, values, face):
    source = value.strip().upper()
    if source not in RNG_SOURCES:
        raise InvalidArgument(f"RNG source: {value!r} is not CPU or GPU (NV's generator is not implemented)")
    spec.kwargs["device_noise"] = source == "GPU"


def _size(spec: Spec, value, values, face):
    w, sep, h = value.lower().partition("x")
    try:
        spec.kwargs["width"], spec.kwargs["height"] = int(w), int(h)
    except ValueError:
        raise InvalidArgument(f"Size: {value!r} is not WIDTHxHEIGHT") from None
    if not sep:
        raise InvalidArgument(f"Size: {value!r} is not WIDTHxHEIGHT")


_T, _I = ("txt2img",), ("img2img",)
AXES: tuple[AxisType, ...] = (
    AxisType("Nothing", apply=lambda *a: None),
    AxisType("Seed", INT, _seed),
    AxisType("Var. seed", INT, _subseed),
    AxisType("Var. strength", FLOAT, _field("subseed_strength")),
    AxisType("Steps", INT, _field("steps")),
    AxisType("Hires steps", INT, _hires("steps"), modes=_T),
    AxisType("CFG Scale", FLOAT, _field("cfg")),
    AxisType("Image CFG Scale", FLOAT, _field("image_cfg_scale"), modes=_I),
    AxisType("Prompt S/R", TEXT, _prompt_sr, named=False),
    AxisType("Prompt order", ORDER, _prompt_order, named=False),
    AxisType("Sampler", TEXT, _sampler, modes=_T, named=False, choices=True),
    AxisType("Hires sampler", TEXT, _hires_sampler, modes=_T, choices=True),
    AxisType("Sampler", TEXT, _sampler, modes=_I, named=False, choices=True),
    AxisType("Checkpoint name", TEXT, _checkpoint, named=False, cost=1.0, choices=True),
    AxisType("Negative Guidance minimum sigma", FLOAT,
             missing="every step uses the negative prompt here"),
    AxisType("Sigma Churn", FLOAT, _option("s_churn")),
    AxisType("Sigma min", FLOAT, _option("s_tmin")),
    AxisType("Sigma max", FLOAT, _option("s_tmax")),
    AxisType("Sigma noise", FLOAT, _option("s_noise")),
    AxisType("Schedule type", TEXT, _schedule, choices=True),
    AxisType("Schedule min sigma", FLOAT, _schedule_setting("sigma_min")),
    AxisType("Schedule max sigma", FLOAT, _schedule_setting("sigma_max")),
    AxisType("Schedule rho", FLOAT, _schedule_setting("rho")),
    AxisType("Skip Early CFG", FLOAT, missing="every step uses the negative prompt here"),
    AxisType("Beta schedule alpha", FLOAT, _schedule_setting("beta_dist_alpha")),
    AxisType("Beta schedule beta", FLOAT, _schedule_setting("beta_dist_beta")),
    AxisType("Eta", FLOAT, _option("eta")),
    AxisType("Clip skip", INT, _clip_skip),
    AxisType("Denoising", FLOAT, _denoising),
    AxisType("Initial noise multiplier", FLOAT, _field("noise_multiplier")),
    AxisType("Extra noise", FLOAT, _field("extra_noise")),
    AxisType("Hires upscaler", TEXT, _hires_upscaler, modes=_T, choices=True),
    AxisType("Cond. Image Mask Weight", FLOAT, _field("mask_weight"), modes=_I),
    AxisType("VAE", TEXT, _vae, cost=0.7, choices=True),
    AxisType("Styles", TEXT, _styles, choices=True),
    AxisType("UniPC Order", INT, _unipc_order, cost=0.5),
    AxisType("Face restore", TEXT, _face_restore, named=False),
    AxisType("Token merging ratio", FLOAT, _field("token_merging")),  # A1111: override token_merging_ratio
    AxisType("Token merging ratio high-res", FLOAT, _hires("token_merging")),
    AxisType("Always discard next-to-last sigma", TEXT, _schedule_setting("always_discard_next_to_last_sigma", True),
             choices=True),
    AxisType("SGM noise multiplier", TEXT, _schedule_setting("sgm_noise_multiplier", True), choices=True),
    AxisType("Refiner checkpoint", TEXT, _refiner, named=False, cost=1.0, choices=True),
    AxisType("Refiner switch at", FLOAT, _refiner_switch),
    AxisType("RNG source", TEXT, _rng, choices=True),
    AxisType("FP8 mode", TEXT, cost=0.9, choices=True, missing="FP8 weights are not implemented here"),
    AxisType("Size", TEXT, _size),
)


def axis_types(img2img: bool) -> list[AxisType]:
    """The axis types in the order of that mode's list (its indices are A1111's)."""
    mode = "img2img" if img2img else "txt2img"
    return [a for a in AXES if mode in a.modes]


def find_axis(key, img2img: bool, where: str) -> AxisType:
    """An axis type by A1111 index or by label (any case)."""
    types = axis_types(img2img)
    if isinstance(key, bool) or not isinstance(key, (int, str)):
        raise InvalidArgument(f"{where}: expected an axis index or name, got {key!r}")
    if isinstance(key, int) or key.strip().isdigit():
        index = int(key)
        if not 0 <= index < len(types):
            raise InvalidArgument(f"{where}: {index} is not an axis index (0..{len(types) - 1})")
        axis = types[index]
    else:
        found = [a for a in types if a.label.lower() == key.strip().lower()]
        if not found:
            raise InvalidArgument(f"{where}: unknown axis {key!r}; axes: {', '.join(a.label for a in types)}")
        axis = found[0]
    if axis.missing:
        raise InvalidArgument(f"{where}: the {axis.label!r} axis is not available: {axis.missing}")
    return axis


def permutations(values: list[str]) -> list[tuple[str, ...]]:
    if math.factorial(len(values)) > MAX_VALUES:  # 12 items: 479,001,600 orders, built before any check
        raise InvalidArgument(f"{len(values)} items have {math.factorial(len(values)):,} orders, more than "
                              f"{MAX_VALUES} values")
    return list(itertools.permutations(values))
