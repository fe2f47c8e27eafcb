"""GLIGEN on our UNet for one network call, as ComfyUI's "middle_patch": the grounding tokens of the
conditioning entry's boxes are made once for the call (position net), and each transformer block of
the n-th SpatialTransformer (in the order the UNet runs them) passes its state through the n-th
gated self-attention between its self- and cross-attention."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

from ..errors import InvalidArgument
from ..models.gligen import Gligen
from ..models.unet import SpatialTransformer


@dataclass(frozen=True, eq=False)
class GligenRef:
    """ComfyUI's GLIGEN value (GLIGENLoader)."""
    model: Gligen
    name: str


@contextmanager
def grounded(network, gligen: Gligen, boxes: list, shape):
    """Inside: `network`'s transformer blocks grounded on `boxes` ((phrase, h, w, y, x) in cells of a
    latent of `shape` (B, C, H, W))."""
    transformers = [m for m in network.modules() if isinstance(m, SpatialTransformer)]
    if len(transformers) != len(gligen.module_list):
        raise InvalidArgument(f"gligen_textbox_model: it grounds {len(gligen.module_list)} transformers, but this "
                              f"model has {len(transformers)} (GLIGEN models are made for SD 1.x)")
    param = next(network.parameters())
    gligen.to(param.device, param.dtype)
    objs = gligen.objects(boxes, shape[0], shape[2], shape[3])
    blocks = []
    try:
        for transformer, fuser in zip(transformers, gligen.module_list):
            for block in transformer.transformer_blocks:
                block.between = lambda x, f=fuser: f(x, objs.to(x))
                blocks.append(block)
        yield
    finally:
        for block in blocks:
            del block.between
