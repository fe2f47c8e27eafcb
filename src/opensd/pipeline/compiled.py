"""--compile: the denoising network through torch.compile (inductor, weights frozen into the
graph), opt-in because the first call of each new shape compiles for minutes on a small CPU.

Freezing lets inductor pre-pack the weights for oneDNN and fold them into the graph, so an
in-place weight change (a LoRA patch) would not be seen: a stamp of the weights' version counters
is checked on every call (the same signal the context K/V reuse in models/unet.py trusts), and a
change compiles afresh. Compiled code is cached on disk (inductor's FX graph cache, under
~/.cache/opensd/inductor unless TORCHINDUCTOR_CACHE_DIR says otherwise), so the next process with
the same model and shapes starts in seconds. With gradients enabled (training) the module runs eagerly.

On CUDA the compiled code also runs as CUDA graphs (inductor's cudagraph trees): one replay per call
instead of hundreds of kernel launches, which is most of an SD 1.5 step's time on a large GPU; the
weights are not frozen there (nothing to pre-pack, and frozen graphs skip inductor's cache). A
replay overwrites the previous call's outputs, so each call returns a copy.

The context K/V reuse of models/unet.py is suspended during compiled calls: its cache checks broke
the graph in two places per cross-attention and recompiled per layer shape (past dynamo's limit of
8, the rest ran eagerly), and a replay would overwrite the cached K/V. Recomputing the K/V of 77
tokens each step costs little next to one whole graph.
"""
from __future__ import annotations

import os
import weakref
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from ..models.unet import CrossAttention, kv_reuse_suspended

BACKEND = "inductor"  # tests use "eager": the same graph capture, without minutes of C++ compilation


def _stamp(module: nn.Module) -> tuple:
    return tuple((id(p), p._version) for p in module.parameters())


def _on_cuda(module: nn.Module) -> bool:
    return any(p.is_cuda for p in module.parameters())


def _copied(out):
    """Outputs of a CUDA graph replay, copied out of the graph's memory pool."""
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, (tuple, list)):
        return type(out)(_copied(o) for o in out)
    return out


def compile_in_place(module: nn.Module, cudagraphs: bool | None = None) -> nn.Module:
    """From now on calls of `module` (inference only) run compiled code; returns `module`.
    `cudagraphs`: replay CUDA graphs (None: when the module's weights are on CUDA now)."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path.home() / ".cache" / "opensd" / "inductor"))
    on_cuda = _on_cuda(module)
    cudagraphs = on_cuda if cudagraphs is None else cudagraphs
    state: dict = {"stamp": None, "fn": None}
    options = None
    if BACKEND == "inductor":  # freezing pays on CPUs (oneDNN packing); on CUDA it only defeats the graph cache
        options = ({"triton.cudagraphs": True} if cudagraphs else {}) | ({} if on_cuda else {"freezing": True})

    def call(*args, **kwargs):
        if torch.is_grad_enabled():
            return module._call_impl(*args, **kwargs)
        stamp = _stamp(module)
        if stamp != state["stamp"]:
            if state["fn"] is not None:
                torch._dynamo.reset()  # the frozen weights are stale: drop the compiled code
            state["fn"] = torch.compile(module._call_impl, backend=BACKEND, dynamic=False, options=options)
            state["stamp"] = stamp
        with kv_reuse_suspended(cross_attentions):
            out = state["fn"](*args, **kwargs)
        return _copied(out) if cudagraphs else out

    cross_attentions = [m for m in module.modules() if isinstance(m, CrossAttention)]
    module._compiled_call_impl = call  # what nn.Module.compile sets: __call__ goes through it
    return module


_KEPT: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # module -> its compiled call, for compiled_during


@contextmanager
def compiled_during(module: nn.Module):
    """Within the block calls of `module` run compiled; afterwards as before. The compiled call is
    made on first use and kept for the module's later blocks (ComfyUI's TorchCompileModel: only
    that MODEL's runs are compiled, and the next run reuses the compilation)."""
    before = module._compiled_call_impl
    if module not in _KEPT:
        _KEPT[module] = compile_in_place(module)._compiled_call_impl
    module._compiled_call_impl = _KEPT[module]
    try:
        yield module
    finally:
        module._compiled_call_impl = before


def uncompile(module: nn.Module) -> nn.Module:
    module._compiled_call_impl = None
    return module
