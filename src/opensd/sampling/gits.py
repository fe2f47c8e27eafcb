"""GITS schedules as ComfyUI's GITSScheduler gives them: the published table's schedule for 2..20
steps; above 20 the 20-step schedule log-linearly interpolated to `steps + 1` levels (the Align
Your Steps recipe); the last level set to 0."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import InvalidArgument
from .align_your_steps import loglinear_interp
from .gits_levels import NOISE_LEVELS

COEFFS = sorted(NOISE_LEVELS)
MIN_STEPS = 2


def gits_sigmas(coeff: float, steps: int) -> torch.Tensor:
    """steps + 1 float32 sigmas, the last one 0."""
    rows = NOISE_LEVELS.get(round(coeff, 2))
    if rows is None:
        raise InvalidArgument(f"coeff: GITS has tables for {COEFFS[0]:.2f} to {COEFFS[-1]:.2f} in steps of 0.05, "
                              f"not {coeff}")
    if steps < MIN_STEPS:
        raise InvalidArgument(f"steps: GITS schedules start at {MIN_STEPS} steps, not {steps}")
    if steps - MIN_STEPS < len(rows):
        sigmas = np.array(rows[steps - MIN_STEPS], dtype=np.float64)
    else:
        sigmas = loglinear_interp(list(rows[-1]), steps + 1)
    sigmas[-1] = 0.0
    return torch.tensor(sigmas, dtype=torch.float32)
