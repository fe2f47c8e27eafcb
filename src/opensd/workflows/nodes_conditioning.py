"""Conditioning nodes with ComfyUI's names, inputs and semantics: combining, averaging and
concatenating prompts, confining them to an area or a mask, a timestep range or zeros, and SDXL's
text encoders with their size and aesthetic conditioning. The extras are ComfyUI's keys; conds.py
is where sampling reads them."""
from __future__ import annotations

import logging

import torch

from .loras import activate
from .types import MAX_RESOLUTION, NodeDef, register

log = logging.getLogger(__name__)


def set_values(conditioning: list, **values) -> list:
    """Every entry with `values` added to its extras (node_helpers.conditioning_set_values)."""
    return [[context, dict(extra or {}, **values)] for context, extra in conditioning]


def _strength():
    return ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01})


def combine(call, conditioning_1, conditioning_2):
    return (conditioning_1 + conditioning_2,)


register(NodeDef(
    "ConditioningCombine", combine, {"conditioning_1": ("CONDITIONING", {}), "conditioning_2": ("CONDITIONING", {})},
    ("CONDITIONING",), category="conditioning", display_name="Conditioning (Combine)"))


def average(call, conditioning_to, conditioning_from, conditioning_to_strength):
    if len(conditioning_from) > 1:
        log.warning("ConditioningAverage: conditioning_from has more than one entry; only the first is used")
    cond_from = conditioning_from[0][0]
    pooled_from = (conditioning_from[0][1] or {}).get("pooled_output")
    s = conditioning_to_strength
    out = []
    for t1, extra in conditioning_to:
        extra = dict(extra or {})
        t0 = cond_from[:, :t1.shape[1]]
        if t0.shape[1] < t1.shape[1]:  # a shorter prompt is padded with zeros
            t0 = torch.cat([t0, torch.zeros(1, t1.shape[1] - t0.shape[1], t1.shape[2])], dim=1)
        pooled_to = extra.get("pooled_output", pooled_from)
        if pooled_from is not None and pooled_to is not None:
            extra["pooled_output"] = pooled_to * s + pooled_from * (1.0 - s)
        elif pooled_from is not None:
            extra["pooled_output"] = pooled_from
        out.append([t1 * s + t0 * (1.0 - s), extra])
    return (out,)


# ComfyUI's display name table spells this one "ConditioningAverage " (a trailing space), so its
# display name is the class name
register(NodeDef(
    "ConditioningAverage", average,
    {"conditioning_to": ("CONDITIONING", {}), "conditioning_from": ("CONDITIONING", {}),
     "conditioning_to_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01})},
    ("CONDITIONING",), category="conditioning"))


def concat(call, conditioning_to, conditioning_from):
    if len(conditioning_from) > 1:
        log.warning("ConditioningConcat: conditioning_from has more than one entry; only the first is used")
    cond_from = conditioning_from[0][0]
    return ([[torch.cat((t1, cond_from), 1), dict(extra or {})] for t1, extra in conditioning_to],)


register(NodeDef(
    "ConditioningConcat", concat,
    {"conditioning_to": ("CONDITIONING", {}), "conditioning_from": ("CONDITIONING", {})},
    ("CONDITIONING",), category="conditioning", display_name="Conditioning (Concat)"))


def set_area(call, conditioning, width, height, x, y, strength):
    return (set_values(conditioning, area=(height // 8, width // 8, y // 8, x // 8), strength=strength,
                       set_area_to_bounds=False),)


_POS8 = ("INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 8})
_SIDE8 = ("INT", {"default": 64, "min": 64, "max": MAX_RESOLUTION, "step": 8})
register(NodeDef(
    "ConditioningSetArea", set_area,
    {"conditioning": ("CONDITIONING", {}), "width": _SIDE8, "height": _SIDE8, "x": _POS8, "y": _POS8,
     "strength": _strength()},
    ("CONDITIONING",), category="conditioning", display_name="Conditioning (Set Area)"))


def set_area_percentage(call, conditioning, width, height, x, y, strength):
    return (set_values(conditioning, area=("percentage", height, width, y, x), strength=strength,
                       set_area_to_bounds=False),)


_FRACTION = {"min": 0, "max": 1.0, "step": 0.01}
register(NodeDef(
    "ConditioningSetAreaPercentage", set_area_percentage,
    {"conditioning": ("CONDITIONING", {}), "width": ("FLOAT", {"default": 1.0, **_FRACTION}),
     "height": ("FLOAT", {"default": 1.0, **_FRACTION}), "x": ("FLOAT", {"default": 0, **_FRACTION}),
     "y": ("FLOAT", {"default": 0, **_FRACTION}), "strength": _strength()},
    ("CONDITIONING",), category="conditioning", display_name="Conditioning (Set Area with Percentage)"))


def set_area_strength(call, conditioning, strength):
    return (set_values(conditioning, strength=strength),)


register(NodeDef(
    "ConditioningSetAreaStrength", set_area_strength, {"conditioning": ("CONDITIONING", {}), "strength": _strength()},
    ("CONDITIONING",), category="conditioning"))


def set_mask(call, conditioning, mask, strength, set_cond_area):
    mask = mask[None] if mask.ndim < 3 else mask
    return (set_values(conditioning, mask=mask, set_area_to_bounds=set_cond_area != "default",
                       mask_strength=strength),)


register(NodeDef(
    "ConditioningSetMask", set_mask,
    {"conditioning": ("CONDITIONING", {}), "mask": ("MASK", {}), "strength": _strength(),
     "set_cond_area": (["default", "mask bounds"], {})},
    ("CONDITIONING",), category="conditioning", display_name="Conditioning (Set Mask)"))


def zero_out(call, conditioning):
    out = []
    for context, extra in conditioning:
        extra = dict(extra or {})
        if extra.get("pooled_output") is not None:
            extra["pooled_output"] = torch.zeros_like(extra["pooled_output"])
        out.append([torch.zeros_like(context), extra])
    return (out,)


register(NodeDef("ConditioningZeroOut", zero_out, {"conditioning": ("CONDITIONING", {})}, ("CONDITIONING",),
                 category="advanced/conditioning"))


def set_timestep_range(call, conditioning, start, end):
    return (set_values(conditioning, start_percent=start, end_percent=end),)


register(NodeDef(
    "ConditioningSetTimestepRange", set_timestep_range,
    {"conditioning": ("CONDITIONING", {}),
     "start": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001}),
     "end": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001})},
    ("CONDITIONING",), category="advanced/conditioning"))


# --- SDXL's text encoders ----------------------------------------------------------------------

def encode_split(clip, text_g: str, text_l: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(context, pooled) with the CLIP-L-type encoder reading text_l and the OpenCLIP ones text_g
    (SDXL: ViT-L / ViT-bigG). Each text is chunked on its own; the one with fewer 77-token chunks is
    padded with encoded empty chunks, as ComfyUI pads the token lists."""
    pipe = clip.pipe
    activate(clip, part="te")
    pc = pipe.conditioner(clip.clip_skip)
    encoded = {text: pc.encode(text) for text in {text_g, text_l}}
    empty = pc.empty().context
    chunks = max(encoded[t].context.shape[1] for t in (text_g, text_l))
    parts, start = [], 0
    for cfg in pipe.config.text_encoders:
        c = encoded[text_l if cfg.naming == "hf" else text_g].context[..., start:start + cfg.width]
        fill = empty[..., start:start + cfg.width].repeat(1, (chunks - c.shape[1]) // empty.shape[1], 1)
        parts.append(torch.cat([c, fill], dim=1))
        start += cfg.width
    pooled = encoded[text_g].pooled
    return torch.cat(parts, dim=-1).float().cpu(), None if pooled is None else pooled.float().cpu()


def clip_text_encode_sdxl(call, clip, width, height, crop_w, crop_h, target_width, target_height, text_g, text_l):
    context, pooled = encode_split(clip, text_g, text_l)
    return ([[context, {"pooled_output": pooled, "width": width, "height": height, "crop_w": crop_w,
                         "crop_h": crop_h, "target_width": target_width, "target_height": target_height}]],)


def _size(default: int):
    return ("INT", {"default": default, "min": 0, "max": MAX_RESOLUTION})


_TEXT = ("STRING", {"multiline": True, "dynamicPrompts": True})
_SDXL = "comfy_extras.nodes_clip_sdxl"
register(NodeDef(
    "CLIPTextEncodeSDXL", clip_text_encode_sdxl,
    {"clip": ("CLIP", {}), "width": _size(1024), "height": _size(1024), "crop_w": _size(0), "crop_h": _size(0),
     "target_width": _size(1024), "target_height": _size(1024), "text_g": _TEXT, "text_l": _TEXT},
    ("CONDITIONING",), category="advanced/conditioning", module=_SDXL))


def clip_text_encode_sdxl_refiner(call, ascore, width, height, text, clip):
    context, pooled = encode_split(clip, text, text)
    return ([[context, {"pooled_output": pooled, "aesthetic_score": ascore, "width": width, "height": height}]],)


register(NodeDef(
    "CLIPTextEncodeSDXLRefiner", clip_text_encode_sdxl_refiner,
    {"ascore": ("FLOAT", {"default": 6.0, "min": 0.0, "max": 1000.0, "step": 0.01}), "width": _size(1024),
     "height": _size(1024), "text": _TEXT, "clip": ("CLIP", {})},
    ("CONDITIONING",), category="advanced/conditioning", module=_SDXL))
