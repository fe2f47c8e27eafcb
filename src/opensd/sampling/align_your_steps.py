"""Align Your Steps (Sabour et al. 2024, NVIDIA): noise levels optimised for 10 sampling steps of
SD 1.x, SDXL and Stable Video Diffusion, published as tables; other step counts interpolate them
log-linearly (the authors' recipe)."""
from __future__ import annotations

import numpy as np
import torch

NOISE_LEVELS = {
    "SD1": [14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092,
            0.9642583904, 0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582],
    "SDXL": [14.6146412293, 6.3184485287, 3.7681790315, 2.1811480769, 1.3405244945, 0.8620721141,
             0.5550693289, 0.3798540708, 0.2332364134, 0.1114188177, 0.0291671582],
    "SVD": [700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002],
}


def loglinear_interp(levels: list[float], count: int) -> np.ndarray:
    """`count` decreasing values whose logs interpolate the logs of `levels` linearly, end to end."""
    ys = np.log(np.asarray(levels, dtype=np.float64)[::-1])
    xs = np.linspace(0, 1, len(levels))
    return np.exp(np.interp(np.linspace(0, 1, count), xs, ys))[::-1].copy()


def ays_sigmas(model_type: str, steps: int) -> torch.Tensor:
    """steps + 1 sigmas for `model_type` ("SD1", "SDXL", "SVD"), the last one 0."""
    levels = NOISE_LEVELS[model_type]
    sigmas = np.asarray(levels, dtype=np.float64) if steps + 1 == len(levels) else loglinear_interp(levels, steps + 1)
    sigmas[-1] = 0.0
    return torch.tensor(sigmas, dtype=torch.float32)
