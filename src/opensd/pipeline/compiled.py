"""--compile: the denoising network through torch.compile (inductor, weights frozen into the
graph), opt-in because the first call of each new shape compiles for minutes on a small CPU.

Freezing lets inductor pre-pack the weights for oneDNN and fold them into the graph, so an
in-place weight change (a LoRA patch) would not be seen: a stamp of the weights' version counters
is checked on every call (the same signal the context K/V reuse in models/unet.py trusts), and a
change compiles afresh. Compiled code is cached on disk (inductor's FX graph cache, under
~/.cache/opensd/inductor unless TORCHINDUCTOR_CACHE_DIR says otherwise), so the next process with
the same model and shapes starts in seconds. With gradients enabled (training) the module runs eagerly.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

BACKEND = "inductor"  # tests use "eager": the same graph capture, without minutes of C++ compilation


def _stamp(module: nn.Module) -> tuple:
    return tuple((id(p), p._version) for p in module.parameters())


def compile_in_place(module: nn.Module) -> nn.Module:
    """From now on calls of `module` (inference only) run compiled code; returns `module`."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path.home() / ".cache" / "opensd" / "inductor"))
    state: dict = {"stamp": None, "fn": None}

    def call(*args, **kwargs):
        if torch.is_grad_enabled():
            return module._call_impl(*args, **kwargs)
        stamp = _stamp(module)
        if stamp != state["stamp"]:
            if state["fn"] is not None:
                torch._dynamo.reset()  # the frozen weights are stale: drop the compiled code
            options = {"freezing": True} if BACKEND == "inductor" else None
            state["fn"] = torch.compile(module._call_impl, backend=BACKEND, dynamic=False, options=options)
            state["stamp"] = stamp
        return state["fn"](*args, **kwargs)

    module._compiled_call_impl = call  # what nn.Module.compile sets: __call__ goes through it
    return module


def uncompile(module: nn.Module) -> nn.Module:
    module._compiled_call_impl = None
    return module
