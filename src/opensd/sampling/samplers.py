"""Samplers: small pure functions `sample(denoise, x, sigmas, callback) -> x` (k-diffusion's shape)."""
from __future__ import annotations

from typing import Callable

import torch

from ..errors import InvalidArgument

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# callback(step_index, x, denoised); raising from it stops sampling (interrupt).
Callback = Callable[[int, torch.Tensor, torch.Tensor], None] | None


@torch.no_grad()
def sample_euler(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback = None) -> torch.Tensor:
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[i])
        d = (x - denoised) / sigmas[i]
        x = x + d * (sigmas[i + 1] - sigmas[i])
        if callback is not None:
            callback(i, x, denoised)
    return x


SAMPLERS: dict[str, Callable] = {"euler": sample_euler}
# Names as A1111 shows them, mapped to ours.
_ALIASES = {"Euler": "euler"}


def get_sampler(name: str) -> Callable:
    key = _ALIASES.get(name, name)
    if key not in SAMPLERS:
        valid = ", ".join(sorted(set(SAMPLERS) | set(_ALIASES)))
        raise InvalidArgument(f"sampler: unknown sampler {name!r}; valid: {valid}")
    return SAMPLERS[key]
