"""The pipeline's prompts: each CLIP skip's and option set's prompt encoder, the prompt encoded for
every step (cached, with SDXL's size conditioning) and the guidance a pass builds from it."""
from __future__ import annotations

import logging

from ..text.embeddings import EmbeddingDatabase
from . import guidance as G
from .conditioning import CondSchedule, PromptConditioner, size_vector
from .params import Params

log = logging.getLogger(__name__)


class PromptEncoding:
    """A Pipeline's prompt encoding (a part of Pipeline, kept in its own file)."""

    def set_embeddings(self, embeddings: EmbeddingDatabase | None) -> None:
        """Use these textual-inversion embeddings from the next encoding on."""
        self.embeddings = embeddings
        self._conditioners.clear()
        self._cond_cache = {}

    def forget_encodings(self) -> None:
        """Drop the cached prompt encodings: the text encoders' weights were changed from outside."""
        self._cond_cache = {}

    def conditioner(self, clip_skip: int | None = None, **text) -> PromptConditioner:
        """The prompt encoder for this CLIP skip and `text` options (Params.text_options)."""
        key = (clip_skip, *sorted(text.items())) if text else clip_skip
        if key not in self._conditioners:
            self._conditioners[key] = self.family.conditioner(self, clip_skip, **text)
        return self._conditioners[key]

    def cond_schedule(self, prompt: str, clip_skip: int | None, steps: int, width: int, height: int,
                      negative: bool = False, text: dict | None = None, crop: tuple[int, int] = (0, 0),
                      hires_steps: int | None = None, old_scheduling: bool = False) -> CondSchedule:
        """The prompt encoded for every step (A1111 syntax: weights, AND, editing, alternation),
        with SDXL's size conditioning (crop: A1111's sdxl_crop_top/left) folded into each part's
        pooled vector. `text`: the encoder's options (Params.text_options); `hires_steps`: for a hires
        pass of that many steps after a first pass of `steps`; `old_scheduling`: A1111's old prompt
        editing timelines (text.prompt_parser.prompt_schedule)."""
        text = text or {}
        key = (prompt, clip_skip, steps, width, height, negative, *sorted(text.items()), crop, hires_steps,
               old_scheduling)
        if key not in self._cond_cache:  # a batch encodes its prompt once, not once per image
            sched = self.conditioner(clip_skip, **text).schedule(prompt, steps, negative=negative,
                                                                 hires_steps=hires_steps, old_scheduling=old_scheduling)
            others = [n for n in sched.extra_networks if n.kind not in ("lora", "lyco", "hypernet")]
            if others:  # LoRA and hypernet tags were applied in apply_loras; other kinds have no adapter yet
                log.warning("extra networks in the prompt are not applied: %s",
                            ", ".join(f"<{n.kind}:{n.name}>" for n in others))
            if self.config.size_conditioned:
                score = 2.5 if negative else 6.0  # refiner's conventional aesthetic scores
                for part in sched.parts:
                    for c in part.conds:
                        c.pooled = size_vector(self.config, c.pooled, width, height, score,
                                               crop_w=crop[1], crop_h=crop[0])
            self._cond_cache[key] = sched
        return self._cond_cache[key]

    def guidance(self, p: Params, steps: int, width: int, height: int, need_uncond: bool = False,
                 first_steps: int | None = None) -> G.Guidance:
        """How this pass guides (pipeline/guidance.py): the prompt, the negative prompt and the scale;
        `need_uncond` for samplers that step with the unconditional estimate too (CFG++);
        `first_steps`: in a hires pass, the first pass's steps (A1111's hires timeline for prompt
        editing: steps count on from the first pass's, fractions 1 to 2 span the hires pass)."""
        text, crop = p.text_options(), (p.sdxl_crop_top, p.sdxl_crop_left)
        base, hires = (steps, None) if first_steps is None else (first_steps, steps)

        def encoded(prompt, negative=False):
            return self.cond_schedule(prompt, p.clip_skip, base, width, height, negative, text, crop, hires,
                                      p.old_scheduling)

        cond = encoded(p.prompt)
        negative = None if not p.negative_prompt.strip() else lambda: encoded(p.negative_prompt, True)
        return G.plan(self.config, cond, p.cfg, negative, lambda: encoded("", True),
                      need_uncond=need_uncond, renorm=getattr(self.config, "cfg_renorm", 0))
