"""Where and in what precision a pipeline runs: device and dtype names as the user gives them."""
from __future__ import annotations

import torch

from ..errors import InvalidArgument

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str | None) -> torch.device:
    """"auto"/None: CUDA, else MPS, else the CPU; a named device must exist."""
    if name in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name not in ("cpu", "cuda", "mps") and not name.startswith("cuda:"):
        raise InvalidArgument(f"device: unknown device {name!r}; use cpu, cuda, cuda:N or mps")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidArgument("device: CUDA was requested but this PyTorch build has no usable CUDA device")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InvalidArgument("device: MPS was requested but is not available on this machine")
    return torch.device(name)


def resolve_dtype(precision: str) -> torch.dtype:
    if precision not in PRECISIONS:
        raise InvalidArgument(f"precision: {precision!r} is not one of auto, {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]
