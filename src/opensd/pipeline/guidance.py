"""Guidance: how each denoising step combines the prompt, the negative prompt and the CFG scale.

The pipeline's modes and ComfyUI's KSampler (workflows/ksampler.py) both use it. `plan` picks the
form for a sampling pass; `denoiser` turns it into the samplers' `denoise(x, sigma)`, one UNet call
per evaluation on the rows the form needs:

* Plain CFG with A1111's AND composition: rows [negative, part_1..part_k] and
  negative + cfg * sum w_i (part_i - negative). When cfg * sum w_i = 1 (CFG scale 1 on an ordinary
  prompt) the negative's coefficient is 0 and its row is not run, as ComfyUI and Forge do at scale 1:
  Turbo/LCM/Lightning-style models then run at batch 1.
* A guidance-distilled model (its UNet takes the CFG scale as "y") guides itself at s = cfg * w for
  a prompt of one part with s in its trained range (GUIDANCE_RANGE). Without a negative prompt, or
  with one that encodes as the empty prompt (ComfyUI sends tensors, not texts): one row, G_s(c).
  With one: rows [empty, negative, prompt], all at scale s, and
  G_s(c) - (1 - 1/s) (G_s(negative) - G_s(empty)). With G_s(x) = u + s (x - u) that is CFG's
  u_n + s (c - u_n); it weights the student's guided outputs by less than 1, where the same rewritten
  on its scale-1 predictions multiplies their errors by s - 1 (measured: the images fall apart).
  At s = 1 the negative rows' coefficient is 0: one row. Other cases on such a model (several
  parts, scales outside the range, ControlNet hints in ComfyUI) run plain CFG on its scale-1
  predictions.

* Renormalised CFG (`renorm`, a model config's cfg_renorm: Qwen-Image's pipeline): plain CFG taken on a
  flow model's velocities, then rescaled per renorm x renorm latent patch to the norm of the prompt's
  own velocity (`combine_flow`), as QwenImagePipeline does. `plan` sets it only when asked (the
  pipeline's prompt encoding); ComfyUI's graphs run plain CFG, as ComfyUI does.

Samplers that also step with the unconditional estimate (CFG++) plan with `need_uncond`: plain CFG
whose negative row always runs (ComfyUI's disable_cfg1_optimization); `denoiser` returns a
sampling.cfg_pp.Guided, giving that row's estimate beside the guided one.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..models.config import ModelConfig
from ..models.unet import GUIDANCE_RANGE, guidance_embedding
from ..sampling.cfg_pp import Guided
from ..sampling.denoiser import Denoiser
from .cfg_skips import SkipCounter
from .cond_padding import Layout
from .conditioning import Conditioning, CondSchedule

Schedule = Callable[[], CondSchedule]


@dataclass(frozen=True)
class Guidance:
    """The rows of one pass's UNet batch and how their predictions combine (see the module doc)."""
    cond: CondSchedule
    negatives: tuple[CondSchedule, ...]  # rows before the prompt's: (), (negative,) or (empty, negative)
    cfg: float
    scale: float | None = None           # the scale a guidance-distilled model guides itself at; None: plain CFG
    renorm: int = 0                      # plain CFG of flow velocities rescaled to the prompt's norm per
    #                                      renorm x renorm patch (combine_flow)

    @property
    def n_uncond(self) -> int:
        """How many rows of the batch come before the prompt's (ControlNets treat them apart)."""
        return len(self.negatives)

    def rows(self, step: int) -> tuple[list[float], list[Conditioning]]:
        """(the prompt parts' weights, every row's conditioning) at sampling step `step`."""
        parts = self.cond.at(step)
        return [w for w, _ in parts], [*(n.at(step)[0][1] for n in self.negatives), *(c for _, c in parts)]

    def combine(self, out: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
        """The step's prediction (batch of 1) from the rows' predictions `out`."""
        n = self.n_uncond
        if self.scale is not None:
            return out[-1:] if n == 0 else out[2:] - (1 - 1 / self.scale) * (out[1:2] - out[:1])
        result = torch.zeros_like(out[:1]) if n == 0 else out[:1].clone()
        for weight, o in zip(weights, out[n:]):
            result += self.cfg * weight * (o[None] if n == 0 else o[None] - out[:1])
        return result

    def combine_flow(self, out: torch.Tensor, weights: Sequence[float], x: torch.Tensor,
                     sigma: torch.Tensor) -> torch.Tensor:
        """`combine` of a flow model's denoised rows `out` at (x, sigma), renormalised (renorm) as
        QwenImagePipeline does it: on the velocities (x - denoised) / sigma, the combined one
        rescaled per patch to the prompt's own velocity's norm."""
        if not self.renorm or not self.n_uncond or self.scale is not None:
            return self.combine(out, weights)
        v = (x - out) / sigma
        guided = renormed(self.combine(v, weights), self.without_negative(v[self.n_uncond:], weights), self.renorm)
        return x - sigma * guided

    def without_negative(self, out: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
        """The prediction from the prompt's rows alone: A1111 puts the first part's prediction where
        the negative's would be and combines at scale 1 (one part: its own prediction)."""
        first = out[:1]
        result = first.clone()
        for weight, o in zip(weights, out):
            result += weight * (o[None] - first)
        return result


def renormed(x: torch.Tensor, like: torch.Tensor, patch: int) -> torch.Tensor:
    """`x` (B, C, H, W) scaled so that each patch x patch cell's norm over its channels and pixels is
    `like`'s (QwenImagePipeline's true CFG: the combined prediction keeps the prompt's norm per
    packed token)."""
    b, c, h, w = x.shape

    def norms(t):
        cells = t.view(b, c, h // patch, patch, w // patch, patch)
        return torch.linalg.vector_norm(cells, dim=(1, 3, 5), keepdim=True)

    return (x.view(b, c, h // patch, patch, w // patch, patch) * (norms(like) / norms(x))).view_as(x)


def self_guided_scale(config: ModelConfig, cond: CondSchedule, cfg: float) -> float | None:
    """The scale a guidance-distilled model guides itself at for this prompt, or None (plain CFG)."""
    if not config.cfg_embed_channels or len(cond.parts) != 1:
        return None
    scale = cfg * cond.parts[0].weight
    return scale if GUIDANCE_RANGE[0] <= scale <= GUIDANCE_RANGE[1] else None


def plan(config: ModelConfig, cond: CondSchedule, cfg: float, negative: Schedule | None, empty: Schedule,
         self_guidance: bool = True, need_uncond: bool = False, renorm: int = 0) -> Guidance:
    """The guidance for one pass. `negative` gives the negative prompt's schedule (None: there is no
    negative prompt), `empty` the empty prompt's, each called only when its rows are needed.
    `self_guidance` False keeps a guidance-distilled model on plain CFG; `need_uncond` asks for
    plain CFG with its negative row at every scale; `renorm`: the model's CFG renormalisation patch
    (config.cfg_renorm: Qwen-Image's pipeline; ComfyUI's graphs run plain CFG and leave it 0)."""
    scale = self_guided_scale(config, cond, cfg) if self_guidance and not need_uncond else None
    if scale is not None:
        if negative is None or scale == 1:
            return Guidance(cond, (), cfg, scale)
        theirs, mine = negative(), empty()
        return Guidance(cond, () if _encodes_as(theirs, mine) else (mine, theirs), cfg, scale)
    if not need_uncond and math.isclose(cfg * sum(p.weight for p in cond.parts), 1.0, rel_tol=1e-9):
        return Guidance(cond, (), cfg)
    return Guidance(cond, ((negative or empty)(),), cfg, renorm=renorm)


def _encodes_as(a: CondSchedule, b: CondSchedule) -> bool:
    if len(a.parts) != 1 or len(a.parts[0].conds) != 1:
        return False
    theirs, mine = a.parts[0].conds[0].context, b.parts[0].conds[0].context
    return theirs.shape == mine.shape and torch.allclose(theirs.float(), mine.float(), atol=1e-4)


def denoiser(g: Guidance, model: Denoiser, layout: Layout, sigmas: torch.Tensor, adm_channels: int, device,
             record: SkipCounter | None = None) -> Guided:
    """`denoise(x, sigma)` for the samplers: `model` (a Denoiser whose UNet function takes context, y,
    the pass's progress `fraction` and `n_uncond`, how many leading rows are negative ones) on the
    guidance's rows, padded and split into UNet calls by `layout` (pipeline/cond_padding.py). Its
    unconditional estimate is the negative row's under plain CFG, else the guided one. `record`, told
    of each evaluation, says when to leave the negative rows out (pipeline/cfg_skips.py): the
    prediction is then the prompt's own."""
    levels = sigmas[:-1]
    built: dict = {}

    def both(x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The step whose sigma this evaluation is at (or just below, for 2nd-order samplers).
        step = int((levels > sigma.item() * (1 + 1e-6)).sum().clamp(max=len(levels) - 1))
        weights, conds = g.rows(step)
        skipped = record is not None and record(sigma.item()) and g.n_uncond > 0
        key = (*map(id, conds), skipped)  # the schedules keep these alive, so ids stay unique
        if key not in built:  # same tensors each step: the UNet reuses its context K/V
            if len(built) > 4:  # prompt editing moved on: older rows are not coming back
                built.clear()
            built[key] = _calls(g, layout(conds, g.n_uncond, skipped), adm_channels, device)
        calls, padded = built[key]
        if record is not None:
            record.padded = padded
        n = 0 if skipped else g.n_uncond
        outs, done = [], 0
        for context, y in calls:
            rows = len(context)
            outs.append(model(x.expand(rows, -1, -1, -1), sigma, context=context, y=y,
                              fraction=step / len(levels), n_uncond=max(0, min(n - done, rows))))
            done += rows
        out = torch.cat(outs) if len(outs) > 1 else outs[0]
        if skipped:
            if g.scale is not None:
                return out[-1:], out[-1:]
            return g.without_negative(out, weights), out[:1]
        guided = g.combine_flow(out, weights, x, sigma)
        return guided, (out[:1] if g.n_uncond and g.scale is None else guided)

    return Guided(both)


def _calls(g: Guidance, laid: tuple[list[list[Conditioning]], bool], adm_channels: int, device):
    """((context, y) per UNet call, padded) for a layout's calls."""
    groups, padded = laid
    calls = []
    for batch in groups:
        y = None if batch[0].pooled is None else torch.cat([c.pooled for c in batch])
        if g.scale is not None:
            y = guidance_embedding(torch.full((len(batch),), g.scale, device=device), adm_channels)
        calls.append((torch.cat([c.context for c in batch]), y))
    return calls, padded
