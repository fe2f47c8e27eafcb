"""Weights kept as a file stores them and unpacked one layer at a time, when the layer runs.

A Flux-dev network is 24 GB in bf16 and 12 GB in fp8 or Q8_0 (7 GB in Q4_K): upcasting such a
file on load would take back the memory it was made to save, so a Linear whose weight is stored in
float8 (e4m3fn, e5m2) or GGML blocks (GGUF) becomes a StoredLinear, which casts or dequantises its
weight into the input's dtype on each call. The cost is one layer's weight in the compute dtype at
a time, and the cast at every call (small next to the matrix product on a GPU; on a CPU an fp8
cast runs at memory speed). Other tensors (biases, norms, convolutions, embeddings) are few and
small and are upcast when loaded. A bf16/fp16 Linear weight of a model computed in fp32 (a CPU
without native bf16) is kept so too (pipeline/weights.py): the upcast is exact, the memory half.

A LoRA on such a weight is not written into it (GGML blocks cannot take a sum; float8's 3 mantissa
bits would round most of a LoRA's change away): the layer keeps it as WeightPatches (below) in the
compact form the file gives (a LoRA's two factors) and adds their change to the unpacked weight at
each call, in float32, as a LoRA merged into a float weight is added. Taking them off leaves the
stored weight untouched.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .ggml_quants import dequantize, type_name

FLOAT8 = (torch.float8_e4m3fn, torch.float8_e5m2)
HALF = (torch.bfloat16, torch.float16)


@dataclass(frozen=True, eq=False)
class Quantized:
    """A GGML-quantised tensor as a GGUF file holds it: rows of blocks (uint8) and its real shape."""
    data: torch.Tensor
    qtype: int
    shape: torch.Size

    def dequantize(self, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
        data = self.data if device is None else self.data.to(device)
        return dequantize(data, self.qtype, tuple(self.shape), dtype)

    @property
    def kind(self) -> str:
        return type_name(self.qtype)


@dataclass(frozen=True, eq=False)
class Scaled:
    """A float8 weight with its scale (ComfyUI's "scaled" float8 files): the weight is data * scale,
    the scale one number per tensor or one per output row (checkpoints/scaled_fp8.py reads them)."""
    data: torch.Tensor
    scale: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    @property
    def dtype(self) -> torch.dtype:
        return self.data.dtype

    def is_floating_point(self) -> bool:
        return True

    def dequantize(self, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
        if device is None:
            return scaled(self.data, self.scale, dtype)
        return scaled(self.data.to(device), self.scale.to(device), dtype)


def scaled(data: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """data * scale in `dtype`, multiplied in float32 (the scale: one number, or one per row)."""
    scale = scale.float().reshape(-1, *([1] * (data.ndim - 1))) if scale.numel() > 1 else scale.float().reshape(())
    return (data.float() * scale).to(dtype)


def is_stored(t) -> bool:
    """Whether `t` holds weights that are unpacked before use (GGML blocks, float8, scaled float8)."""
    return isinstance(t, (Quantized, Scaled)) or (isinstance(t, torch.Tensor) and t.dtype in FLOAT8)


def unpack(t, dtype: torch.dtype, device) -> torch.Tensor:
    """A stored tensor in `dtype` on `device`, for a module that keeps plain weights."""
    if isinstance(t, (Quantized, Scaled)):
        return t.dequantize(dtype, device)
    return t.to(device=device, dtype=dtype)


@dataclass(eq=False)
class WeightPatch:
    """A change to a stored Linear weight, added when the layer runs: `source.delta(shape, device)`
    gives it in float32 (before `strength`) from what `source` keeps (adapters.lora_files.LoraWeights:
    a LoRA's factors, on `device`), for the weight's rows `rows` (None: all of them). When the layer
    runs on another device (a memory mode moved it), the source follows it once
    (`source.weight_update_on(device)`), not at every call."""
    source: object
    shape: torch.Size
    strength: float
    rows: slice | None
    device: torch.device

    def change(self, device: torch.device) -> torch.Tensor:
        if device != self.device:
            self.source, self.device = self.source.weight_update_on(device), device
        return self.source.delta(self.shape, device) * self.strength


class StoredLinear(nn.Module):
    """nn.Linear's computation with the weight kept as stored: `weight` is a buffer holding the
    float8 tensor or the GGML blocks (so the state-dict keys stay `weight` and `bias`); a scaled
    float8 weight's scale is a buffer outside the state dict (`scale`, None for the others).
    `patches`: the WeightPatches (LoRAs) added to the unpacked weight at each call."""

    patches: tuple[WeightPatch, ...] = ()

    def __init__(self, linear: nn.Linear, stored, device):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.qtype = stored.qtype if isinstance(stored, Quantized) else None
        packed = isinstance(stored, (Quantized, Scaled))
        self.register_buffer("weight", (stored.data if packed else stored).to(device))
        scale = stored.scale.float().to(device) if isinstance(stored, Scaled) else None
        if scale is not None and scale.numel() not in (1, self.out_features):
            raise ValueError(f"a float8 weight {tuple(stored.shape)} with {scale.numel()} scales (one, or one "
                             "per output row, expected)")
        self.register_buffer("scale", scale, persistent=False)
        self.bias = linear.bias

    @property
    def kind(self) -> str:
        """What the weight is stored as: "float8_e4m3fn", "scaled float8_e4m3fn", "Q4_K", ..."""
        if self.qtype is not None:
            return type_name(self.qtype)
        return ("scaled " if self.scale is not None else "") + str(self.weight.dtype).removeprefix("torch.")

    def unpacked(self, dtype: torch.dtype) -> torch.Tensor:
        if self.scale is not None:
            return scaled(self.weight, self.scale, dtype)
        if self.qtype is None:
            return self.weight.to(dtype)
        return dequantize(self.weight, self.qtype, (self.out_features, self.in_features), dtype)

    def patched(self, dtype: torch.dtype) -> torch.Tensor:
        """The unpacked weight plus its patches' changes, summed in float32 (as a LoRA merged into a
        float32 weight is), in `dtype`."""
        weight = self.unpacked(torch.float32)
        if len(self.patches) == 1 and self.patches[0].rows is None:  # the sum below, without the zeros
            total = self.patches[0].change(weight.device)
        else:
            total = torch.zeros_like(weight)
            for p in self.patches:
                (total if p.rows is None else total[p.rows]).add_(p.change(weight.device))
        return weight.add_(total).to(dtype)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        """A scaled weight is given as its value (float8 * scale, in the bias's dtype), so that the
        state dict (saved checkpoints, ControlNets copied from the network) is the weights the layer uses."""
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.scale is not None:
            destination[prefix + "weight"] = self.unpacked(torch.float32 if self.bias is None else self.bias.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.patched(x.dtype) if self.patches else self.unpacked(x.dtype), bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, stored as {self.kind}"


def float_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    """`module`'s parameters by name and, among them, its Linear weights kept in 16 bits (buffers of
    StoredLinears): the float weights a model merge may change in place."""
    found = dict(module.named_parameters())
    found.update({f"{name}.weight": m.weight for name, m in module.named_modules()
                  if isinstance(m, StoredLinear) and m.weight.dtype in HALF})
    return found


def kept_16bit(module: nn.Module) -> str | None:
    """The 16-bit dtype(s) ("bf16", "fp16") in which Linear weights under `module` are kept as stored
    and computed in a wider dtype; None where there are none."""
    names = {torch.bfloat16: "bf16", torch.float16: "fp16"}
    found = sorted({names[m.weight.dtype] for m in module.modules()
                    if isinstance(m, StoredLinear) and m.weight.dtype in HALF})
    return "/".join(found) or None


def store_linears(module: nn.Module, dtype: torch.dtype) -> int:
    """Every nn.Linear under `module` keeps its weight in `dtype` (float8) from now on, cast per call
    (ComfyUI's UNETLoader weight_dtype); returns how many."""
    linears = [(name, m) for name, m in module.named_modules()
               if type(m) is nn.Linear or (isinstance(m, StoredLinear) and m.weight.dtype in HALF)]
    for name, linear in linears:
        parent, _, leaf = name.rpartition(".")
        weight = linear.weight.detach()
        module.get_submodule(parent).register_module(leaf, StoredLinear(linear, weight.to(dtype), weight.device))
    return len(linears)
