"""ComfyUI's TorchCompileModel (comfy_extras.nodes_torch_compile): in the runs of this MODEL its
network's calls go through torch.compile (pipeline/compiled.py: inductor, with CUDA graphs where the
weights are on CUDA). The compiled call is kept per network, so the next run reuses it (a new shape
or changed weights compile again); other MODELs of the same checkpoint keep running eagerly."""
from __future__ import annotations

import weakref
from contextlib import contextmanager
from dataclasses import replace

from ..pipeline.compiled import compile_in_place
from .types import NodeDef, register

BACKENDS = ["inductor", "cudagraphs"]  # ComfyUI's choices; both are inductor here, graphs replayed on CUDA
_CALLS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # network -> its compiled call


@contextmanager
def compiled(network):
    """The network's calls compiled for the duration of the block; afterwards as they were."""
    call = _CALLS.get(network)
    before = network._compiled_call_impl
    if call is None:
        compile_in_place(network)
        call = _CALLS[network] = network._compiled_call_impl
    network._compiled_call_impl = call
    try:
        yield
    finally:
        network._compiled_call_impl = before


def torch_compile_model(call, model, backend):
    def patch(network, sigma: float):
        return compiled(network)
    return (replace(model, network_patches=model.network_patches + (patch,)),)


register(NodeDef(
    "TorchCompileModel", torch_compile_model,
    {"model": ("MODEL", {}), "backend": (BACKENDS, {"default": "inductor"})},
    ("MODEL",), category="_for_testing", module="comfy_extras.nodes_torch_compile"))
