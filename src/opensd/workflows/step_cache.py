"""Step caching as ComfyUI's EasyCache and LazyCache nodes do it (comfy_extras.nodes_easycache):
skip evaluations whose output can be guessed from the input's change since the last real one.

Between adjacent steps the change of a prediction tracks the change of its input: the ratio
k = |output change| / |input change|, measured between the last two real evaluations, turns the
input's change alone into an estimate of the output's, relative to the last output's size:
k * |x - x_prev| / mean|output_prev|. These estimates add up from step to step; while the sum stays
below `reuse_threshold` the evaluation is skipped and its output taken as this input plus the
(output - input) of the last real evaluation. When the sum reaches the threshold the evaluation runs
and the sum starts again from 0. Changes are mean absolute differences over every 8th row and
column of the latent (ComfyUI's subsample factor), sizes mean absolute values.

* EasyCache (ComfyUI's DIFFUSION_MODEL wrapper): per network call. The input is the network's
  (the sampler's latent times c_in), the output its raw prediction (eps, v or flow velocity). The
  change is measured on the rows of one conditioning entry, the first of the first call in the
  range (ComfyUI's first cond); its call decides for the step, and the step's other calls
  (entries batched apart: other crops, context lengths) follow that decision. Every entry keeps its
  own output - input. Predictions a guider or patch asks for besides the step's lists (PerpNeg's
  empty prompt, SAG's and PAG's extra predictions) always run and leave the cache alone.
* LazyCache (ComfyUI's PREDICT_NOISE wrapper): per guided prediction, whichever way the model
  computes it. The input is the sampler's latent, the output the guided denoised estimate (for
  CFG++ samplers also the unconditional one, kept the same way).

Steps whose sigma lies above sigma(start_percent) run in full (EasyCache does not measure them,
LazyCache does); at or below sigma(end_percent) they run in full and the cache is left as it is.
Each image of a batch keeps its own cache, as each is guided on its own here (ComfyUI measures the
whole batch at once), and a sampling run starts with an empty one. The MODEL carries only the
settings (:class:`StepCache`); the network itself is never changed.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from ..sampling.cfg_pp import Guided, with_uncond

log = logging.getLogger(__name__)

SUBSAMPLE = 8  # every 8th latent row and column, ComfyUI's subsample_factor


@dataclass(frozen=True)
class StepCache:
    """A MODEL's step-caching settings (ModelRef.step_cache): the node's inputs."""
    name: str                  # "EasyCache" (per network call) or "LazyCache" (per guided prediction)
    reuse_threshold: float
    start_percent: float
    end_percent: float
    verbose: bool = False

    @property
    def per_network_call(self) -> bool:
        return self.name == "EasyCache"


def _subsampled(t: torch.Tensor) -> torch.Tensor:
    return t[..., ::SUBSAMPLE, ::SUBSAMPLE]


def _distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().mean())


def _ratio(a: float, b: float) -> float:
    """a / b; infinite (never reused) where b is 0, as ComfyUI's tensor division leaves it."""
    return a / b if b else math.inf


class _Tracker:
    """The measurements and the running estimate both caches share."""

    def __init__(self, settings: StepCache, sampling):
        self.settings = settings
        self.sigma_start = sampling.percent_to_sigma(settings.start_percent)
        self.sigma_end = sampling.percent_to_sigma(settings.end_percent)
        self.x_prev: torch.Tensor | None = None    # subsampled input of the last measured evaluation
        self.out_prev: torch.Tensor | None = None  # its subsampled output
        self.norm_prev: float | None = None        # mean |output| of that evaluation
        self.rate: float | None = None             # k: output change / input change
        self.accumulated = 0.0
        self.skipped = 0
        self.measured_rates: list[float] = []      # verbose: real and estimated relative output changes
        self.estimated_rates: list[float] = []

    def past_end(self, sigma: float) -> bool:
        return sigma <= self.sigma_end

    def started(self, sigma: float) -> bool:
        return sigma <= self.sigma_start

    def change(self, x_sub: torch.Tensor) -> float | None:
        return None if self.x_prev is None else _distance(x_sub, self.x_prev)

    def reusable(self, change: float, cached: bool = True) -> bool:
        """Add this step's estimated output change; True (a skip) while the sum stays below the
        threshold and there is a cached difference to apply, else the sum restarts from 0."""
        if self.norm_prev is None or self.rate is None:
            return False
        self.accumulated += self._estimate(change)
        keep = self.accumulated < self.settings.reuse_threshold and cached
        if self.settings.verbose:
            log.info("%s [verbose] - %s step; cumulative_change_rate: %s, reuse_threshold: %s", self.settings.name,
                     "skipping" if keep else "NOT skipping", self.accumulated, self.settings.reuse_threshold)
        if keep:
            self.skipped += 1
        else:
            self.accumulated = 0.0
        return keep

    def _estimate(self, change: float) -> float:
        return _ratio(self.rate * change, self.norm_prev)

    def record(self, x_sub: torch.Tensor, out: torch.Tensor, out_sub: torch.Tensor, change: float | None) -> None:
        """Keep a real evaluation's measurements; with the last one's, k is updated."""
        if self.norm_prev is not None and change is not None:
            moved = _distance(out_sub, self.out_prev)
            if self.settings.verbose:
                self.measured_rates.append(_ratio(moved, self.norm_prev))
                if self.rate is not None:
                    self.estimated_rates.append(self._estimate(change))
            self.rate = _ratio(moved, change)
        self.x_prev, self.out_prev = x_sub.clone(), out_sub.clone()
        self.norm_prev = float(out.abs().mean())

    def summary(self, steps: int) -> str:
        done = steps - self.skipped
        speedup = steps / done if done > 0 else 1.0
        line = f"{self.settings.name} - skipped {self.skipped}/{steps} steps ({speedup:.2f}x speedup)"
        if self.settings.verbose:
            line += (f"; output_change_rates {self.measured_rates}; "
                     f"approx_output_change_rates {self.estimated_rates}")
        return line


class NetworkCache(_Tracker):
    """EasyCache for one image's network calls in one sampling run (guiders.ModelRun keeps it)."""

    def __init__(self, settings: StepCache, sampling):
        super().__init__(settings, sampling)
        self.first = None        # the entry whose rows are measured
        self.skip_step = False   # the measured call of this step chose to skip: the others follow
        self.diffs: dict = {}    # entry -> its rows' output - input at its last real evaluation

    def new_step(self) -> None:
        self.skip_step = False

    def wrap(self, unet_fn, sigma: torch.Tensor, entries: list):
        """unet_fn(x, t, **cond) for one call over `entries` (an equal share of x's rows each)."""
        s = float(sigma.reshape(-1)[0])

        def call(x, t, **cond):
            return self._call(lambda: unet_fn(x, t, **cond), x, s, entries)
        return call

    def _rows(self, t: torch.Tensor, entries: list, i: int) -> torch.Tensor:
        n = t.shape[0] // len(entries)
        return t[i * n:(i + 1) * n]

    def _reuse(self, x: torch.Tensor, entries: list) -> torch.Tensor:
        return torch.cat([self._rows(x, entries, i) + self.diffs[e] for i, e in enumerate(entries)])

    def _call(self, evaluate, x: torch.Tensor, sigma: float, entries: list) -> torch.Tensor:
        if self.past_end(sigma):
            return evaluate()
        measured = self.first is not None and any(e is self.first for e in entries)
        change = x_sub = None
        if self.started(sigma):
            cached = all(e in self.diffs for e in entries)
            if self.skip_step and cached:
                return self._reuse(x, entries)
            if self.first is None:
                self.first, measured = entries[0], True
            if measured:
                x_sub = _subsampled(self._rows(x, entries, self._index(entries)))
                change = self.change(x_sub)
                if change is not None and self.reusable(change, cached):
                    self.skip_step = True
                    return self._reuse(x, entries)
        out = evaluate()
        for i, e in enumerate(entries):
            self.diffs[e] = self._rows(out, entries, i) - self._rows(x, entries, i)
        if measured:
            i = self._index(entries)
            if x_sub is None:
                x_sub = _subsampled(self._rows(x, entries, i))
            self.record(x_sub, out, _subsampled(self._rows(out, entries, i)), change)
        return out

    def _index(self, entries: list) -> int:
        return next(i for i, e in enumerate(entries) if e is self.first)


class PredictionCache(_Tracker):
    """LazyCache for one image's guided predictions in one sampling run."""

    def __init__(self, settings: StepCache, sampling):
        super().__init__(settings, sampling)
        self.diff: torch.Tensor | None = None         # guided - x at the last real evaluation
        self.uncond_diff: torch.Tensor | None = None  # unconditional - x

    def both(self, evaluate, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(guided, unconditional) at x from evaluate(x, sigma), or from the cache."""
        s = float(sigma.reshape(-1)[0])
        if self.past_end(s):
            return evaluate(x, sigma)
        x_sub, change = _subsampled(x), None
        if self.started(s):
            change = self.change(x_sub)
            if change is not None and self.reusable(change):
                return x + self.diff, x + self.uncond_diff
        guided, uncond = evaluate(x, sigma)
        self.diff = guided - x
        self.uncond_diff = self.diff if uncond is guided else uncond - x
        self.record(x_sub, guided, _subsampled(guided), change)
        return guided, uncond


class Cached(Guided):
    """One image's denoiser under a step cache; `cache` is read for the run's summary."""

    def __init__(self, both, cache: _Tracker):
        super().__init__(both)
        self.cache = cache


def network_cache(settings: StepCache | None, sampling) -> NetworkCache | None:
    """The EasyCache state for one image's ModelRun, when the MODEL carries EasyCache."""
    return NetworkCache(settings, sampling) if settings is not None and settings.per_network_call else None


def cached_denoiser(settings: StepCache | None, denoise, run):
    """`denoise` (one image's, over guiders.ModelRun `run`) under the MODEL's step cache, if any."""
    if settings is None:
        return denoise
    if settings.per_network_call:
        cache = run.cache

        def step(x, sigma):
            cache.new_step()
            return with_uncond(denoise, x, sigma)
        return Cached(step, cache)
    cache = PredictionCache(settings, run.sampling)
    return Cached(lambda x, sigma: cache.both(lambda xi, s: with_uncond(denoise, xi, s), x, sigma), cache)


def log_summaries(denoisers, steps: int) -> None:
    """ComfyUI's closing line per cached image: how many of the run's `steps` were skipped."""
    for i, d in enumerate(denoisers):
        if isinstance(d, Cached):
            log.info("image %d: %s", i, d.cache.summary(steps))
