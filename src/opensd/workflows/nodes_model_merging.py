"""Model merging nodes with ComfyUI's names and arithmetic (comfy_extras.nodes_model_merging), as
its add_patches computes them: ModelMergeSimple model1 * ratio + model2 * (1 - ratio),
ModelMergeAdd model1 + model2, ModelMergeSubtract (model1 - model2) * multiplier, over the diffusion
model's weights; CLIPMergeSimple/Add/Subtract the same over the text encoders' (position ids and
logit scale stay clip1's); ModelMergeBlocks and the model-specific ModelMergeSD1/SD2/SDXL/SD3_2B/
SD35_Large/Flux1 (nodes_model_merging_model_specific) with a ratio per block, picked by the longest
weight-name prefix. The merged weights are made when a branch runs (loras.py)."""
from __future__ import annotations

from dataclasses import dataclass, replace

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


@dataclass(frozen=True)
class BlockMergeEntry(MergeEntry):
    """A merge whose ratio depends on the weight: (name prefix, ratio) pairs (loras._strengths)."""
    blocks: tuple[tuple[str, float], ...] = ()


def block_merge(prefixes: tuple[str, ...]):
    """The node: model1 * ratio + model2 * (1 - ratio) per weight, the ratio of the longest input
    name the weight's name starts with (the first input's for weights none matches)."""
    def node(call, model1, model2, **ratios):
        entry = BlockMergeEntry(model1, model2, 1.0, 0.0, tuple((p, float(ratios[p])) for p in prefixes))
        return (replace(model1, merge=entry, loras=()),)
    return node


def _block_inputs(prefixes: tuple[str, ...]) -> dict:
    return {"model1": ("MODEL", {}), "model2": ("MODEL", {}), **{p: _RATIO for p in prefixes}}


def _numbered(prefix: str, count: int, dot: str = ".") -> list[str]:
    return [f"{prefix}{i}{dot}" for i in range(count)]


_BLOCKS = ("input", "middle", "out")
model_merge_blocks = block_merge(_BLOCKS)
register(NodeDef("ModelMergeBlocks", model_merge_blocks, _block_inputs(_BLOCKS), ("MODEL",),
                 category="advanced/model_merging", module=_MODULE))
_SD3 = ("pos_embed.", "x_embedder.", "context_embedder.", "y_embedder.", "t_embedder.")
_SPECIFIC = {
    "ModelMergeSD1": ("time_embed.", "label_emb.", *_numbered("input_blocks.", 12), *_numbered("middle_block.", 3),
                      *_numbered("output_blocks.", 12), "out."),
    "ModelMergeSDXL": ("time_embed.", "label_emb.", *_numbered("input_blocks.", 9, ""),
                       *_numbered("middle_block.", 3, ""), *_numbered("output_blocks.", 9, ""), "out."),
    "ModelMergeSD3_2B": (*_SD3, *_numbered("joint_blocks.", 24), "final_layer."),
    "ModelMergeFlux1": ("img_in.", "time_in.", "guidance_in", "vector_in.", "txt_in.",
                        *_numbered("double_blocks.", 19), *_numbered("single_blocks.", 38), "final_layer."),
    "ModelMergeSD35_Large": (*_SD3, *_numbered("joint_blocks.", 38), "final_layer."),
}
_SPECIFIC["ModelMergeSD2"] = _SPECIFIC["ModelMergeSD1"]  # the same blocks, as ComfyUI maps it
for name, prefixes in _SPECIFIC.items():
    register(NodeDef(name, block_merge(prefixes), _block_inputs(prefixes), ("MODEL",),
                     category="advanced/model_merging/model_specific",
                     module="comfy_extras.nodes_model_merging_model_specific"))
