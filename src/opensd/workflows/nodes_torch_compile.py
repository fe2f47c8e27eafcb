"""ComfyUI's TorchCompileModel (comfy_extras.nodes_torch_compile): in the runs of this MODEL its
network's calls go through torch.compile (pipeline/compiled.py: inductor, with CUDA graphs where the
weights are on CUDA). The compiled call is kept per network, so the next run reuses it (a new shape
or changed weights compile again); other MODELs of the same checkpoint keep running eagerly."""
from __future__ import annotations

from dataclasses import replace

from ..pipeline.compiled import compiled_during
from .types import NodeDef, register

BACKENDS = ["inductor", "cudagraphs"]  # ComfyUI's choices; both are inductor here, graphs replayed on CUDA


def torch_compile_model(call, model, backend):
    def patch(network, sigma: float):
        return compiled_during(network)
    return (replace(model, network_patches=model.network_patches + (patch,)),)


register(NodeDef(
    "TorchCompileModel", torch_compile_model,
    {"model": ("MODEL", {}), "backend": (BACKENDS, {"default": "inductor"})},
    ("MODEL",), category="_for_testing", module="comfy_extras.nodes_torch_compile"))
