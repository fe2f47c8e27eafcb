"""Learning-rate schedules by the names kohya sd-scripts and diffusers give them (--lr_scheduler),
as the factor of the peak rate at optimizer step `step` (0-based) of `total`, after `warmup` steps
rising linearly from 0:

- constant: 1 (no warm-up, as in diffusers);
- constant_with_warmup: 1 after the warm-up;
- linear: down to 0 at the last step;
- cosine: half a cosine wave, down to 0;
- cosine_with_restarts: `cycles` cosine waves, each from 1 to 0 (hard restarts);
- polynomial: (1 - progress)^power from the peak down to `lr_end`.
"""
from __future__ import annotations

import math

SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
LR_END = 1e-7  # polynomial's final rate, diffusers' default


def lr_factor(name: str, step: int, total: int, warmup: int = 0, cycles: int = 1, power: float = 1.0,
              lr: float = 1.0) -> float:
    """The factor of the peak rate `lr` at `step` (polynomial needs `lr` for its floor LR_END)."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown learning-rate schedule {name!r}")
    if name == "constant":
        return 1.0
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    if name == "constant_with_warmup":
        return 1.0
    if name == "linear":
        return max(0.0, (total - step) / max(1, total - warmup))
    if name == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    if name == "cosine_with_restarts":
        return 0.0 if progress >= 1.0 else max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((cycles * progress) % 1.0))))
    if step > total:
        return LR_END / lr
    return ((lr - LR_END) * (1 - progress) ** power + LR_END) / lr
