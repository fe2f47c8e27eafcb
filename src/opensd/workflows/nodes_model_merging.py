"""Model merging nodes with ComfyUI's names and arithmetic (comfy_extras.nodes_model_merging), as
its add_patches computes them: ModelMergeSimple model1 * ratio + model2 * (1 - ratio),
ModelMergeAdd model1 + model2, ModelMergeSubtract (model1 - model2) * multiplier, over the diffusion
model's weights; CLIPMergeSimple/Add/Subtract the same over the text encoders' (position ids and
logit scale stay clip1's). The merged weights are made when a branch runs (loras.py)."""
from __future__ import annotations

from dataclasses import replace

from .types import MergeEntry, NodeDef, register

_MODULE = "comfy_extras.nodes_model_merging"


def merged(first, second, self_strength: float, other_strength: float):
    """`first` with `second`'s weights merged in; LoRAs stacked later go on top of the merge."""
    return replace(first, merge=MergeEntry(first, second, float(self_strength), float(other_strength)), loras=())


def model_merge_simple(call, model1, model2, ratio):
    return (merged(model1, model2, ratio, 1.0 - ratio),)


def model_merge_add(call, model1, model2):
    return (merged(model1, model2, 1.0, 1.0),)


def model_merge_subtract(call, model1, model2, multiplier):
    return (merged(model1, model2, multiplier, -multiplier),)


def clip_merge_simple(call, clip1, clip2, ratio):
    return (merged(clip1, clip2, ratio, 1.0 - ratio),)


def clip_merge_add(call, clip1, clip2):
    return (merged(clip1, clip2, 1.0, 1.0),)


def clip_merge_subtract(call, clip1, clip2, multiplier):
    return (merged(clip1, clip2, multiplier, -multiplier),)


_RATIO = ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01})
_MULTIPLIER = ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01})
for name, fn, kind, extra in [
    ("ModelMergeSimple", model_merge_simple, "MODEL", {"ratio": _RATIO}),
    ("ModelMergeSubtract", model_merge_subtract, "MODEL", {"multiplier": _MULTIPLIER}),
    ("ModelMergeAdd", model_merge_add, "MODEL", {}),
    ("CLIPMergeSimple", clip_merge_simple, "CLIP", {"ratio": _RATIO}),
    ("CLIPMergeSubtract", clip_merge_subtract, "CLIP", {"multiplier": _MULTIPLIER}),
    ("CLIPMergeAdd", clip_merge_add, "CLIP", {}),
]:
    first = "model" if kind == "MODEL" else "clip"
    register(NodeDef(name, fn, {f"{first}1": (kind, {}), f"{first}2": (kind, {}), **extra}, (kind,),
                     category="advanced/model_merging", module=_MODULE))
