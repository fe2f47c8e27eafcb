"""Refuse, before reading a tensor, a model whose files alone would not fit this machine's memory.

A 16-bit DiT file loaded on a CPU keeps its Linear weights as stored (pipeline/weights.py), so a
model needs about its files' size in RAM; where even that exceeds the available RAM and free swap
(/proc/meminfo), loading would end with the kernel killing the process without a word. One clear
error names the sizes instead and points at the smaller files (GGUF, float8) made for such machines.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from ..checkpoints.keymap_dit import Deferred
from ..errors import OutOfMemoryForModel
from . import peak_memory

GIB = 2 ** 30


def stored_bytes(tensors: Iterable) -> int:
    """Bytes the tensors take as their files store them (GGUF blocks, scaled float8: their data)."""
    total = 0
    for t in tensors:
        if isinstance(t, Deferred):  # a fused tensor, made when the loader takes it
            total += math.prod(t.shape) * t.dtype.itemsize
        else:
            t = getattr(t, "data", t)  # Quantized, Scaled: their stored data
            total += t.numel() * t.element_size()
    return total


def check_fits(tensors: Iterable, path, device, smaller: str = "") -> None:
    """OutOfMemoryForModel (a CheckpointError) when the tensors (every part of one model), for a model
    that runs on `device`, exceed the available RAM plus swap. A model run on a GPU is not checked:
    its weights go to the GPU or wait in RAM as its memory mode decides (pipeline/offload.py). `smaller`:
    the family's own smaller files, named in the advice (Family.smaller_files)."""
    found = peak_memory.free_memory() if torch.device(device).type == "cpu" else None
    if found is None:  # a GPU's, or no /proc/meminfo (not Linux): nothing to compare with
        return
    need = stored_bytes(tensors)
    ram, swap = found
    if need > ram + swap:
        raise OutOfMemoryForModel(path, f"this model's weights take {need / GIB:.1f} GiB as stored, more than this "
                                    f"machine's {ram / GIB:.1f} GiB of available RAM and {swap / GIB:.1f} GiB of "
                                    "free swap; use a smaller file of it (GGUF Q8_0/Q4_K or float8"
                                    + (f"; {smaller}" if smaller else "") + "), close other programs, or add swap")
