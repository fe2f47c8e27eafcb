"""Align Your Steps (Sabour et al. 2024, NVIDIA): noise levels optimised for 10 sampling steps of
SD 1.x, SDXL and Stable Video Diffusion, published as tables; other step counts interpolate them
log-linearly (the authors' recipe).

Two readings of the recipe are in use: ComfyUI's AlignYourStepsScheduler (`ays_sigmas`: steps + 1
levels, the last set to 0) and A1111's "Align Your Steps" schedule type (`a1111_ays_sigmas`: its own
3-decimal copy of the tables, `steps` levels down to sigma_min, then 0).
"""
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


# A1111's copy (sd_schedulers.py): SDXL models get the SDXL table, every other model SD1's.
A1111_LEVELS = {
    "SD1": [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029],
    "SDXL": [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029],
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


def a1111_ays_sigmas(sdxl: bool, steps: int) -> torch.Tensor:
    """A1111's "Align Your Steps": `steps` levels (its table as is for 11), then 0."""
    levels = A1111_LEVELS["SDXL" if sdxl else "SD1"]
    sigmas = np.asarray(levels, dtype=np.float64) if steps == len(levels) else loglinear_interp(levels, steps)
    return torch.tensor(np.append(sigmas, 0.0), dtype=torch.float32)
