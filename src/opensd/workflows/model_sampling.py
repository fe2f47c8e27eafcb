"""ComfyUI's "model_sampling" objects for a MODEL: the checkpoint's own (its family's), and the ones
ModelSamplingDiscrete (and CheckpointLoader's yaml) replace it with (sampling.model_sampling:
eps, v, x0, LCM's distilled schedule of 50 of the 1000 training timesteps, every 20th from 19),
or ModelSamplingContinuousEDM / V with (continuous sigmas between two bounds; Playground v2.5's
EDM sampling comes with its own latent statistics, checkpoints/markers.py's PLAYGROUND_*).

* zsnr: the schedule rescaled to zero terminal SNR (Lin et al. 2023), its last alpha_bar set to
  ComfyUI's 4.8973451890853435e-08 so the largest sigma stays finite.
"""
from __future__ import annotations

import torch

from ..sampling.model_sampling import ModelSampling, zero_terminal_snr
from ..sampling.schedules import DiscreteSchedule

PREDICTIONS = ("eps", "v", "x0", "lcm")
LCM_STEPS = 50


def default_sampling(pipe):
    """The checkpoint's own (a ModelSampling, or a FlowSampling at the family's size-free default)."""
    return pipe.model_sampling()


def model_sampling(base: DiscreteSchedule, sampling: str, zsnr: bool) -> ModelSampling:
    """ModelSamplingDiscrete's object for a model trained on `base` (its 1000 discrete sigmas)."""
    sigmas = base.sigmas.double()
    if zsnr:
        sigmas = zero_terminal_snr(sigmas)
    prediction = {"eps": "eps", "v_prediction": "v", "lcm": "lcm", "x0": "x0"}[sampling]
    skip = 1
    if prediction == "lcm":
        skip = len(sigmas) // LCM_STEPS
        sigmas = torch.stack([sigmas[len(sigmas) - 1 - i * skip] for i in range(LCM_STEPS)]).flip(0)
    return ModelSampling(DiscreteSchedule(1 / (sigmas ** 2 + 1)), prediction, skip, zsnr)
