"""A file's tensors into a model built on the meta device, one tensor at a time.

Each tensor is taken out of the state dict (`pop`), made (a Deferred fused q/k/v), converted to
the dtype and device it is kept in, and put in place before the next one: a source the loader
owns (a pickle, a converted or fused tensor) is freed tensor by tensor, so the model and its
source never both exist whole. A tensor already in its dtype on the CPU stays the file's own
memory-mapped storage (no copy). Linear weights stored in float8 or GGUF blocks stay so where the
family allows it (StoredLinear unpacks them per call); anything else stored so is unpacked here.
So do bf16/fp16 Linear weights of a model computed in fp32 (a CPU without native bf16): the upcast
per call is exact, so the outputs are those of an fp32 load at half its memory (Z-Image's network
and text encoder: 20 GB instead of 40).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..checkpoints.keymap_dit import Deferred
from ..models.stored_weights import HALF, StoredLinear, is_stored, unpack


def _to(t: torch.Tensor, dtype: torch.dtype, device) -> torch.Tensor:
    if is_stored(t):
        return unpack(t, dtype, device)
    if t.is_floating_point():
        return t.to(device=device, dtype=dtype)
    return t.to(device=device)


def _kept(src, dtype: torch.dtype, device) -> bool:
    """Whether a Linear weight `src`, to be computed in `dtype`, stays as stored: float8/GGUF always,
    16-bit when computed in fp32 (the per-call upcast is exact) in RAM or on CUDA (older MPS has no bf16)."""
    if is_stored(src):
        return True
    return (dtype == torch.float32 and isinstance(src, torch.Tensor) and src.dtype in HALF
            and torch.device(device).type in ("cpu", "cuda"))


def assign(model: nn.Module, sd: dict, keys: Iterable[str], dtype_of: Callable[[str], torch.dtype], device,
           keeps_stored: Callable[[str], bool] = lambda key: False) -> None:
    """Move `keys` of `sd` into `model` (a meta-device module whose state-dict names they are);
    `dtype_of(key)`: the dtype a floating tensor is kept in; `keeps_stored(key)`: whether a Linear
    weight stored in float8/GGUF (or 16-bit, computed in fp32) may stay so."""
    for key in keys:
        src = sd.pop(key)
        if isinstance(src, Deferred):
            src = src.make()
        path, _, name = key.rpartition(".")
        module = model.get_submodule(path)
        if name == "weight" and type(module) is nn.Linear and keeps_stored(key) and _kept(src, dtype_of(key), device):
            parent, _, child = path.rpartition(".")
            model.get_submodule(parent).register_module(child, StoredLinear(module, src, device))
            continue
        value = _to(src, dtype_of(key), device)
        if name in module._parameters:
            module._parameters[name] = nn.Parameter(value, requires_grad=False)
        else:
            module._buffers[name] = value
