"""ComfyUI-WD14-Tagger's node (pythongosssss/ComfyUI-WD14-Tagger), ``WD14Tagger|pysssss``: each picture of
an IMAGE batch tagged by a WD14 tagger (tagging/wd14.py), one STRING per picture (an output list, as
there; also shown on the node as its "tags"). The text is tag_text.comfy_text's: characters above
`character_threshold`, then general tags above `threshold`, underscores, exclusions, trailing comma
and escaped parentheses as the node does.

The model list is the taggers installed in the models folder's wd14_tagger/ (<name>.onnx beside
<name>.csv, the extension's own layout); a model that is not there is refused in words when the node
runs (the extension would download it; nothing is downloaded here).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..errors import InvalidArgument
from ..tagging import wd14
from ..tagging.tag_text import comfy_text
from .types import Choices, NodeDef, register


@dataclass(frozen=True)
class TaggerModels(Choices):
    """The installed WD14 taggers by name (wd14.installed), checked when the node runs."""
    source: str = wd14.KIND
    strict: bool = False

    def values(self, ctx) -> list[str] | None:
        if ctx is None or ctx.folders is None:
            return None
        return sorted(wd14.installed(ctx.folders))


def _unit(default: float):
    return ("FLOAT", {"default": default, "min": 0.0, "max": 1, "step": 0.05})


def wd14_tagger(call, image, model, threshold=0.35, character_threshold=0.85, replace_underscore=False,
                trailing_comma=False, exclude_tags=""):
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] != 3 or min(image.shape) < 1:
        raise InvalidArgument("image: expected an RGB IMAGE (batch, height, width, 3)")
    tagger = wd14.load(wd14.find(call.ctx.folders, model), str(call.ctx.device or "cpu"))
    # as the extension turns the tensor into pictures: x 255, cut to whole values
    pixels = (image.detach().float().cpu().clamp(0, 1) * 255).numpy().astype(np.uint8)
    tags = []
    for k, frame in enumerate(pixels):
        tags.append(comfy_text(wd14.score(tagger, Image.fromarray(frame)), threshold, character_threshold,
                               replace_underscore, trailing_comma, exclude_tags))
        call.progress(k + 1, len(pixels))
    return {"ui": {"tags": tags}, "result": (tags,)}


register(NodeDef(
    "WD14Tagger|pysssss", wd14_tagger,
    {"image": ("IMAGE", {}), "model": (TaggerModels(), {}), "threshold": _unit(0.35),
     "character_threshold": _unit(0.85), "replace_underscore": ("BOOLEAN", {"default": False}),
     "trailing_comma": ("BOOLEAN", {"default": False}), "exclude_tags": ("STRING", {"default": ""})},
    ("STRING",), output_is_list=(True,), output_node=True, category="image", display_name="WD14 Tagger 🐍",
    module="custom_nodes.ComfyUI-WD14-Tagger"))
