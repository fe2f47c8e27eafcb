"""A refiner in one run (A1111's refiner_checkpoint / refiner_switch_at): sampling starts on the main
model and, from the first model evaluation at a low enough noise level on, continues on the refiner
model, on the same sigmas, from the same latents.

The switch follows A1111 (sd_samplers_common.apply_refiner): an evaluation at `sigma` counts as
(999 - t) / 1000 of the way, t being the main model's timestep nearest that sigma (on a flow
model, SD3 or Flux: 1 - sigma, its time), and the refiner
takes over when that reaches `switch_at` (0.8: timestep 199 and below). So it is a noise level, not
a step count: with A1111's default schedules the first 80% of a txt2img run's steps stay on the
main model, an img2img run of low denoising strength may run on the refiner alone, and a switch
at 1.0 never happens. Once switched, the run stays on the refiner (Restart's jumps back up too).
The refiner encodes the prompts with its own text encoders and conditioning (the SDXL refiner:
OpenCLIP-G with aesthetic scores 6 / 2.5), has no LoRAs or ControlNets applied, and the main
model's VAE decodes the result.

With hires fix, `hires_pass` (A1111's hires_fix_refiner_pass setting) says which pass refines:
"second pass" (A1111's default), "first pass" or "both passes"; each pass starts on the main model.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InvalidArgument
from ..sampling.cfg_pp import Guided, with_uncond

HIRES_PASSES = ("first pass", "second pass", "both passes")


@dataclass(frozen=True)
class Refiner:
    pipe: Any                 # the refiner model's Pipeline
    switch_at: float = 0.8    # 0: the refiner runs every evaluation; 1: never
    hires_pass: str = "second pass"

    def check_settings(self) -> None:
        """Refuse a bad fraction or pass (before any model loads)."""
        if isinstance(self.switch_at, bool) or not isinstance(self.switch_at, (int, float)) \
                or not 0 <= self.switch_at <= 1:
            raise InvalidArgument(f"refiner_switch_at: {self.switch_at!r} must be a number in 0..1")
        if self.hires_pass not in HIRES_PASSES:
            raise InvalidArgument(f"hires_fix_refiner_pass: {self.hires_pass!r} is not one of {', '.join(HIRES_PASSES)}")

    def check(self, main) -> None:
        """Refuse what cannot work before any sampling: bad settings, another latent space."""
        self.check_settings()
        check_same_latents(self.pipe, main, "refiner")

    def refines(self, hires_pass: int | None) -> bool:
        """Whether this pass may switch: any pass without hires fix, else as `hires_pass` says."""
        if hires_pass is None or self.hires_pass == "both passes":
            return True
        return (hires_pass == 2) == (self.hires_pass == "second pass")


def check_same_latents(other, main, what: str) -> None:
    """Refuse a second model (`what`: "refiner", "hires checkpoint") that cannot continue `main`'s
    latents: another family, or another latent shape."""
    theirs, mine = other.config, main.config
    if other.family is not main.family:  # SD3 and Flux share latent shapes, not latent spaces
        raise InvalidArgument(f"{what}: {other.name} is a {other.family.label} model and {main.name} a "
                              f"{main.family.label} model: a {what} must be of the main model's family")
    if (theirs.latent_channels, theirs.vae.downscale) != (mine.latent_channels, mine.vae.downscale):
        raise InvalidArgument(f"{what}: {other.name} works on {theirs.latent_channels}-channel latents "
                              f"at 1/{theirs.vae.downscale} size; the model {main.name} on "
                              f"{mine.latent_channels} at 1/{mine.vae.downscale}: they cannot share a run")


def completed(sampling, sigma: torch.Tensor) -> float:
    """A1111's completed_ratio of an evaluation at `sigma` on the main model's `sampling` (its
    ModelSampling or FlowSampling): (999 - nearest timestep) / 1000 on a discrete schedule; on a
    flow model's, whose time runs from 1 to 0 with sigma, 1 - sigma."""
    if sampling.prediction == "flow":
        return 1.0 - float(sigma)
    t = int(torch.argmin((sampling.schedule.sigmas.double() - float(sigma)).abs()))
    return (999 - t) / 1000


def switching(main: Callable, refiner: Callable[[], Callable], sampling, switch_at: float,
              on_switch: Callable[[], None], evaluations: int | None = None) -> Guided:
    """`main`'s estimates until the switch, then those of the denoiser `refiner()` builds (once).
    `evaluations`: switch by count instead (A1111's refiner_switch_by_sample_steps): an evaluation
    counts as the evaluations before it / this many (the pass's steps, twice for its second-order
    samplers) of the way."""
    current: list = [main]
    calls = [0]

    def done(sigma) -> float:
        if evaluations is None:
            return completed(sampling, sigma)
        calls[0] += 1
        return (calls[0] - 1) / evaluations

    def both(x, sigma):
        if current[0] is main and done(sigma) >= switch_at:
            current[0] = refiner()
            on_switch()
        return with_uncond(current[0], x, sigma)

    return Guided(both)
