"""Every bound a user parameter is checked against, in one place and configurable."""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import InvalidArgument

MAX_SEED = 2**32 - 1
MAX_CLIP_SKIP = 12  # A1111's range for "Clip skip" (the model may allow fewer: conditioning.py)


@dataclass(frozen=True)
class Limits:
    max_side: int = 4096          # pixels, width or height
    max_pixels: int = 4096 * 4096
    max_steps: int = 500
    max_batch: int = 64
    max_cfg: float = 100.0
    multiple: int = 8             # width/height granularity


DEFAULT_LIMITS = Limits()


def check_size(width: int, height: int, limits: Limits = DEFAULT_LIMITS) -> None:
    for name, v in (("width", width), ("height", height)):
        if not isinstance(v, int) or isinstance(v, bool):
            raise InvalidArgument(f"{name}: must be an integer, got {v!r}")
        if v < limits.multiple or v > limits.max_side:
            raise InvalidArgument(f"{name}: {v} is outside {limits.multiple}..{limits.max_side}")
        if v % limits.multiple:
            raise InvalidArgument(f"{name}: {v} is not a multiple of {limits.multiple}")
    if width * height > limits.max_pixels:
        raise InvalidArgument(f"width x height: {width}x{height} exceeds {limits.max_pixels} pixels")


def check_steps(steps: int, limits: Limits = DEFAULT_LIMITS) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= limits.max_steps:
        raise InvalidArgument(f"steps: {steps!r} is outside 1..{limits.max_steps}")


def check_cfg(cfg: float, limits: Limits = DEFAULT_LIMITS) -> None:
    if not isinstance(cfg, (int, float)) or not math.isfinite(cfg) or not 0 <= cfg <= limits.max_cfg:
        raise InvalidArgument(f"cfg: {cfg!r} must be a finite number in 0..{limits.max_cfg}")


def check_batch(batch: int, limits: Limits = DEFAULT_LIMITS) -> None:
    if not isinstance(batch, int) or isinstance(batch, bool) or not 1 <= batch <= limits.max_batch:
        raise InvalidArgument(f"batch: {batch!r} is outside 1..{limits.max_batch}")


def check_seed(seed: int | None, name: str = "seed") -> None:
    if seed is None:
        return
    if not isinstance(seed, int) or isinstance(seed, bool) or not -1 <= seed <= MAX_SEED:
        raise InvalidArgument(f"{name}: {seed!r} must be an integer in 0..{MAX_SEED}, or -1 for random")


def check_clip_skip(clip_skip: int | None, name: str = "clip_skip") -> None:
    if clip_skip is None:
        return
    if not isinstance(clip_skip, int) or isinstance(clip_skip, bool) or not 1 <= clip_skip <= MAX_CLIP_SKIP:
        raise InvalidArgument(f"{name}: {clip_skip!r} is outside 1..{MAX_CLIP_SKIP}")
