"""ComfyUI's "dit" block replacements that skip a block (SkipLayerGuidance) on our SD3 and Flux
networks, without touching models/: for one prediction, forward hooks make the chosen blocks hand
their inputs on unchanged. Indices follow ComfyUI's: "double_block" i is SD3's joint block i or
Flux's double-stream block i, "single_block" i Flux's single-stream block i; others are ignored."""
from __future__ import annotations

from contextlib import contextmanager

from ..models.module_patches import removed_after


def _pass_streams(module, args, out):  # (context, x) -> (context, x); Flux: (img, txt) -> (img, txt)
    return args[0], args[1]


def _pass_tokens(module, args, out):
    return args[0]


@contextmanager
def skip_blocks(network, double: list[int], single: list[int]):
    doubles = getattr(network, "joint_blocks", None) or getattr(network, "double_blocks", None) or []
    singles = getattr(network, "single_blocks", None) or []
    handles = [doubles[i].register_forward_hook(_pass_streams) for i in double if i < len(doubles)]
    handles += [singles[i].register_forward_hook(_pass_tokens) for i in single if i < len(singles)]
    with removed_after(handles):
        yield
