"""A1111's settings that leave the negative prompt out of some of a pass's evaluations (its
CFGDenoiser, modules/sd_samplers_cfg_denoiser.py), written from its code:

* "Skip Early CFG" (setting skip_early_cond, a fraction): while evaluation / expected evaluations
  <= the fraction, the negative rows are not run.
* "NGMS", negative guidance minimum sigma (request field or setting s_min_uncond): when the noise
  level is below it, on odd-numbered evaluations (every one with s_min_uncond_all, "NGMS all
  steps"), the negative rows are not run.

An evaluation without its negative rows predicts the prompt's own: the first AND part stands in for
the negative at scale 1 (for one part, exactly its prediction). A1111 counts evaluations (the
denoiser's calls), not sampling steps, and expects `total_steps` of them per pass: two per step for
its second-order samplers. Its DDIM, PLMS and UniPC give the denoiser the model's timestep (0..999)
where the others give sigma, and NGMS compares that number, so for them it acts only on the last
timesteps. The count restarts in each pass (the hires pass has its own) and carries on across a
refiner's switch, as in A1111. Each image records what was applied (`applied`): A1111 writes the
keys only when a skip happened.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import InvalidArgument

# A1111's samplers with "second_order": its expected evaluations per pass are twice the steps.
SECOND_ORDER = frozenset({"heun", "dpm_2", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "restart"})
# A1111's timestep samplers (sd_samplers_timesteps): NGMS compares the model timestep, not sigma.
TIMESTEP_SAMPLERS = frozenset({"ddim", "plms", "uni_pc"})
MAX_MIN_UNCOND = 100.0  # far above any model's sigma_max (SD1: 14.6); A1111's slider stops at 15


@dataclass(frozen=True)
class CfgSkips:
    s_min_uncond: float = 0.0       # NGMS; 0 = off
    s_min_uncond_all: bool = False  # NGMS on every evaluation, not every other
    skip_early_cond: float = 0.0    # fraction of the pass's evaluations without the negative; 0 = off

    @property
    def off(self) -> bool:
        return not self.s_min_uncond and not self.skip_early_cond

    def validate(self) -> None:
        check(self.s_min_uncond, self.s_min_uncond_all, self.skip_early_cond)


def check(s_min_uncond, s_min_uncond_all, skip_early_cond) -> None:
    """One clear line naming the first value out of range."""
    if isinstance(s_min_uncond, bool) or not isinstance(s_min_uncond, (int, float)) \
            or not math.isfinite(s_min_uncond) or not 0 <= s_min_uncond <= MAX_MIN_UNCOND:
        raise InvalidArgument(f"s_min_uncond: {s_min_uncond!r} must be a number in 0..{MAX_MIN_UNCOND:g}")
    if not isinstance(s_min_uncond_all, bool):
        raise InvalidArgument(f"s_min_uncond_all: {s_min_uncond_all!r} must be true or false")
    if isinstance(skip_early_cond, bool) or not isinstance(skip_early_cond, (int, float)) \
            or not math.isfinite(skip_early_cond) or not 0 <= skip_early_cond <= 1:
        raise InvalidArgument(f"skip_early_cond: {skip_early_cond!r} must be a number in 0..1")


class SkipCounter:
    """One pass's evaluations: `__call__(sigma)` counts one and says whether it leaves the negative
    rows out. `level` turns sigma into what NGMS compares (the timestep for TIMESTEP_SAMPLERS). The
    denoiser also sets `padded`, whether the last evaluation padded the rows (pipeline/cond_padding.py),
    which A1111 records under `pad_key`."""

    def __init__(self, skips: CfgSkips, sampler: str, steps: int, level: Callable[[float], float],
                 pad_key: str | None = None):
        self.skips = skips
        self.total = steps * 2 if sampler in SECOND_ORDER else steps
        self.level = level if sampler in TIMESTEP_SAMPLERS else (lambda sigma: sigma)
        self.calls = 0
        self.skipped = 0
        self.applied: dict = {}  # A1111's infotext keys for what was applied
        self.padded = False
        self.pad_key = pad_key

    @property
    def infotext(self) -> dict:
        """A1111's infotext keys for what this pass did."""
        return {**self.applied, **({self.pad_key: True} if self.padded and self.pad_key else {})}

    def __call__(self, sigma: float) -> bool:
        call, s = self.calls, self.skips
        self.calls += 1
        if s.skip_early_cond and call / max(self.total, 1) <= s.skip_early_cond:
            self.applied["Skip Early CFG"] = s.skip_early_cond
        elif (call % 2 or s.s_min_uncond_all) and s.s_min_uncond > 0 and self.level(sigma) < s.s_min_uncond:
            self.applied["NGMS"] = s.s_min_uncond
            if s.s_min_uncond_all:
                self.applied["NGMS all steps"] = True
        else:
            return False
        self.skipped += 1
        return True
