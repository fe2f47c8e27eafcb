"""Prompts -> the tensors the UNet is conditioned on, for every family.

Two ways in:

* :func:`encode_prompts` -- the plain encoding (each prompt cut to 77 tokens, no syntax). Kept
  unchanged for callers that want exactly what diffusers does.
* :class:`PromptConditioner` -- AUTOMATIC1111-compatible prompts: ``(word:1.2)`` emphasis,
  ``BREAK``, prompts of any length in 75-token chunks, textual-inversion embeddings, CLIP skip,
  prompt editing / alternation over the steps and ``AND`` composition (:meth:`PromptConditioner.schedule`),
  with ``<lora:...>`` tags cut out and returned for whoever applies them.

How A1111 encodes a prompt, and what we do (written from its wiki and ``sd_hijack_clip.py``):

* Chunks. The prompt's tokens are cut into chunks of 75; each chunk is encoded on its own as
  BOS + 75 tokens (padded with EOS) + EOS = 77, and the hidden states of the chunks are concatenated
  along the sequence axis: 120 tokens -> (1, 154, D). If a chunk fills up and a comma was among its
  last 20 tokens (``comma_backtrack``), the tokens after that comma move to the next chunk. ``BREAK``
  pads the current chunk and starts a new one. An embedding never straddles two chunks.
* Emphasis ("Original"): every token carries the product of its brackets' multipliers; per chunk,
  hidden states are multiplied by their token's weight and then rescaled so the mean over the batch
  chunk equals the unweighted mean. Weights never touch the pooled output. ``emphasis="no_norm"``
  skips the rescale, ``"ignore"`` parses the syntax but applies no weights, ``"none"`` treats brackets
  and ``BREAK`` as plain text -- A1111's other emphasis settings.
* SD2's open_clip pads with 0 after the first EOS; SD1/SDXL CLIP-L pad with EOS (each encoder's
  ``pad_token``).
* SDXL: both encoders see the same chunks; each applies emphasis to its own output, then the two are
  concatenated along the feature axis. The pooled vector is bigG's for the *first* chunk.
* Texts encoded together (:meth:`PromptConditioner.encode_batch`, which :meth:`schedule` uses for the
  texts of one prompt's schedule) are padded to the same number of chunks with empty chunks, and the
  emphasis rescale uses the mean over all of them, exactly as A1111 batches a prompt's schedule.
* CLIP skip (``clip_skip``: 1 = last layer, 2 = penultimate, ...) applies to SD1-style models (one
  CLIP-L encoder, LDM layout) only, where the final LayerNorm is applied after the skipped layer as
  A1111 does. SD2 (23rd of 24 layers) and SDXL (penultimate of both) keep their own layer from the
  model config and ``clip_skip`` is ignored for them -- A1111's default. With A1111's "Clip skip SDXL"
  (``clip_l_skip``) SDXL's CLIP-L takes the ``clip_skip``-th layer from the end instead (1 = last).
* Cond and uncond of different lengths: pipeline/cond_padding.py runs them as A1111 does (by default
  in separate UNet calls; its padding settings pad them into one). :meth:`PromptConditioner.pad`
  appends encoded empty prompts to the shorter ones (ComfyUI's nodes batch that way).

Deviations from A1111 that are fixes of its accidents: when the comma rule moves tokens to the next
chunk, an embedding among them moves with them (A1111 leaves its vectors behind in the old chunk);
the emphasis rescale is computed in float32; a step past the end of a schedule uses its last entry.

The cutting of a prompt into weighted chunks (:func:`tokenize_prompt`) lives in prompt_chunks.py.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..errors import InvalidArgument
from ..models.config import ModelConfig
from ..models.stable_diffusion import SGM_FAMILIES, StableDiffusion
from ..models.unet import timestep_embedding
from ..text.embeddings import EmbeddingDatabase
from ..text.prompt_parser import (
    EMPHASIS_LABELS,
    ExtraNetwork,
    extract_extra_networks,
    prompt_schedule,
    split_and,
)
from ..text.tokenizer import BOS, EOS, CLIPTokenizer
from .prompt_chunks import CHUNK_TOKENS, PromptChunk, tokenize_prompt, tokenize_prompt_old

__all__ = [
    "CHUNK_TOKENS",
    "EMPHASIS_MODES",
    "CondSchedule",
    "Conditioning",
    "PromptChunk",
    "PromptConditioner",
    "ScheduledPart",
    "encode_prompts",
    "pad_conditionings",
    "pooled_width",
    "size_vector",
    "tokenize_prompt",
]

EMPHASIS_MODES = tuple(EMPHASIS_LABELS)


@dataclass
class Conditioning:
    context: torch.Tensor              # (B, T, context_dim) cross-attention input
    pooled: torch.Tensor | None = None  # (B, P) SDXL's pooled text vector

    @property
    def length(self) -> int:
        """Sequence length T (77 per chunk)."""
        return self.context.shape[1]

    def cat(self, other: Conditioning) -> Conditioning:
        """Stack along the batch axis. Both must have the same length: see :func:`pad_conditionings`."""
        if self.context.shape[1:] != other.context.shape[1:]:
            raise ValueError(f"cannot batch conditionings of shapes {tuple(self.context.shape)} and "
                             f"{tuple(other.context.shape)}; pad them to the same length first "
                             "(PromptConditioner.pad / pad_conditionings)")
        pooled = None if self.pooled is None else torch.cat([self.pooled, other.pooled])
        return Conditioning(torch.cat([self.context, other.context]), pooled)


def pad_conditionings(conds: Sequence[Conditioning], filler: Conditioning) -> list[Conditioning]:
    """Bring all ``conds`` to the longest one's length by appending copies of ``filler`` (normally
    one encoded empty prompt, (1, 77, D)) along the sequence axis. Pooled vectors are unchanged."""
    if not conds:
        return []
    step = filler.length
    target = max(c.length for c in conds)
    out = []
    for c in conds:
        missing = target - c.length
        if missing == 0:
            out.append(c)
            continue
        if missing % step:
            raise ValueError(f"cannot pad a conditioning of length {c.length} to {target} with "
                             f"{step}-token filler chunks")
        fill = filler.context.to(c.context.device, c.context.dtype)
        fill = fill.expand(c.context.shape[0], -1, -1).repeat(1, missing // step, 1)
        out.append(Conditioning(torch.cat([c.context, fill], dim=1), c.pooled))
    return out


@torch.no_grad()
def encode_prompts(model: StableDiffusion, tokenizer: CLIPTokenizer, prompts: list[str],
                   device: torch.device) -> Conditioning:
    """Plain encoding: each prompt cut to 77 tokens, no prompt syntax (diffusers' behaviour)."""
    hidden, pooled = [], None
    for enc, cfg in zip(model.text_encoders, model.config.text_encoders):
        ids = tokenizer(prompts, max_length=cfg.max_length, pad_token=cfg.pad_token).to(device)
        out = enc(ids)
        hidden.append(out.hidden)
        if cfg.pooled:
            pooled = out.pooled
    return Conditioning(torch.cat(hidden, dim=-1), pooled)


def pooled_width(cfg: ModelConfig) -> int:
    """The width of the pooled text that starts an SDXL-type "y" (1280 for SDXL and its refiner):
    the rest is 256-wide embeddings of 6 size ids (5 for the refiner)."""
    return cfg.unet.adm_in_channels - 256 * (5 if cfg.family == "sdxl_refiner" else 6)


def size_vector(cfg: ModelConfig, pooled: torch.Tensor, width: int, height: int,
                aesthetic_score: float = 6.0, crop_w: int = 0, crop_h: int = 0,
                target_width: int | None = None, target_height: int | None = None) -> torch.Tensor:
    """SDXL's "y": pooled text + 256-d Fourier embeddings of original size, crop and target size
    (base; the target defaults to the original size) or original size, crop and aesthetic score
    (refiner)."""
    if cfg.family == "sdxl_refiner":
        ids = [height, width, crop_h, crop_w, aesthetic_score]
    else:
        target = [height if target_height is None else target_height, width if target_width is None else target_width]
        ids = [height, width, crop_h, crop_w, *target]
    per_value = (cfg.unet.adm_in_channels - pooled.shape[1]) // len(ids)
    emb = timestep_embedding(torch.tensor(ids, dtype=torch.float32), per_value).reshape(1, -1)
    return torch.cat([pooled.float(), emb.to(pooled.device).expand(len(pooled), -1)], dim=1)


# --- A1111-compatible prompt encoding --------------------------------------------------------


@dataclass
class ScheduledPart:
    """One AND-part of a prompt: its weight, its text, and its conditioning over the steps."""
    weight: float
    text: str
    entries: list[tuple[int, str]]        # (end_at_step, text used up to that step), from prompt_schedule
    conds: list[Conditioning]             # one per entry

    def at(self, step: int) -> Conditioning:
        """The conditioning at 0-based sampling step ``step``: the first entry with
        ``step <= end_at_step`` (A1111's rule), the last entry past the end."""
        for (end, _), cond in zip(self.entries, self.conds):
            if step <= end:
                return cond
        return self.conds[-1]


@dataclass
class CondSchedule:
    """A prompt encoded for every step of a run.

    ``at(step)`` gives the AND-parts as ``[(weight, Conditioning)]``; A1111 combines their
    predictions as ``uncond + cfg * sum(weight_i * (cond_i - uncond))``. ``extra_networks`` are the
    ``<kind:name:...>`` tags that were cut out of the prompt, for the code that applies them.
    """
    prompt: str                           # the prompt as encoded, tags removed
    steps: int
    parts: list[ScheduledPart]
    extra_networks: list[ExtraNetwork]

    def at(self, step: int) -> list[tuple[float, Conditioning]]:
        return [(p.weight, p.at(step)) for p in self.parts]

    @property
    def length(self) -> int:
        """The longest sequence length among all parts and steps."""
        return max(c.length for p in self.parts for c in p.conds)


class PromptConditioner:
    """Encodes A1111-syntax prompts with a loaded model's text encoders.

    ``embeddings``: textual-inversion embeddings found by name in prompts. ``clip_skip``: see the
    module docstring (SD1-style models only; ``None`` keeps the model's default). ``emphasis``: one
    of :data:`EMPHASIS_MODES`. ``comma_backtrack``: how many tokens back from a full chunk's end a
    comma may be to move the rest to the next chunk (0 disables; A1111's default 20).
    ``clip_l_skip``: SDXL only, A1111's "Clip skip SDXL": ``clip_skip`` (None: 1) picks CLIP-L's layer.
    ``old_emphasis``: A1111's "use old emphasis implementation" (:func:`tokenize_prompt_old`).

    Not thread-safe across threads sharing one model: embeddings are inserted through a forward
    hook on the encoders' token embedding while a batch is encoded.
    """

    def __init__(self, model: StableDiffusion, tokenizer: CLIPTokenizer, device: torch.device | str,
                 embeddings: EmbeddingDatabase | None = None, clip_skip: int | None = None, *,
                 emphasis: str = "original", comma_backtrack: int = 20, clip_l_skip: bool = False,
                 old_emphasis: bool = False):
        if emphasis not in EMPHASIS_MODES:
            raise InvalidArgument(f"emphasis: {emphasis!r} is not one of {', '.join(EMPHASIS_MODES)}")
        if comma_backtrack < 0:
            raise InvalidArgument(f"comma_backtrack: must be 0 or more, got {comma_backtrack}")
        self.model = model
        self.config: ModelConfig = model.config
        self.encoders = list(model.text_encoders)
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.embeddings = embeddings
        self.emphasis = emphasis
        self.comma_backtrack = comma_backtrack
        self.clip_skip = clip_skip
        self.clip_l_skip = clip_l_skip
        self.old_emphasis = old_emphasis
        self._skips = self._resolve_skips(clip_skip)
        self._empty: Conditioning | None = None
        self._lock = threading.Lock()

    def _resolve_skips(self, clip_skip: int | None) -> list[int | None]:
        cfgs = self.config.text_encoders
        if isinstance(clip_skip, bool) or not isinstance(clip_skip, (int, type(None))):
            raise InvalidArgument(f"clip_skip: must be a whole number, got {clip_skip!r}")
        if self.clip_l_skip and self.config.family == "sdxl" and cfgs[0].naming == "hf":
            # A1111's "Clip skip SDXL": CLIP-L's hidden state counted from its last layer like SD1's
            # (1 = the last layer, not SDXL's penultimate), without the final LayerNorm as SDXL takes it
            skip = 1 if clip_skip is None else clip_skip
            if not 1 <= skip <= cfgs[0].layers:
                raise InvalidArgument(f"clip_skip: must be between 1 and {cfgs[0].layers} for this model, got {skip}")
            return [skip] + [None] * (len(cfgs) - 1)
        if clip_skip is None:
            return [None] * len(cfgs)
        sd1_style = (self.config.family not in SGM_FAMILIES and len(cfgs) == 1 and cfgs[0].naming == "hf")
        if not sd1_style:
            return [None] * len(cfgs)  # SD2 / SDXL: their own layer, as in A1111 (unless clip_l_skip)
        if not 1 <= clip_skip <= cfgs[0].layers:
            raise InvalidArgument(f"clip_skip: must be between 1 and {cfgs[0].layers} for this model, got {clip_skip}")
        return [clip_skip]

    # -- text -> chunks ---------------------------------------------------------------------

    def chunks(self, text: str) -> list[PromptChunk]:
        """Tokenize one prompt text (no AND, no editing left in it) into 77-token chunks."""
        if self.old_emphasis:
            return tokenize_prompt_old(text, self.tokenizer, self.embeddings)
        return tokenize_prompt(text, self.tokenizer, self.embeddings, self.emphasis, self.comma_backtrack)[0]

    # -- chunks -> tensors ------------------------------------------------------------------

    def encode(self, text: str) -> Conditioning:
        """One prompt text -> (1, 77 * chunks, D) context (+ pooled for SDXL). The text is taken
        literally apart from emphasis, BREAK and embeddings: no AND, editing or tag removal."""
        return self.encode_batch([text])[0]

    @torch.no_grad()
    def encode_batch(self, texts: Sequence[str]) -> list[Conditioning]:
        """Several texts encoded together, as A1111 encodes the texts of one prompt schedule: all
        get the same number of chunks (empty chunks appended) and share the emphasis rescale."""
        if not texts:
            return []
        distinct = list(dict.fromkeys(texts))
        counts = [texts.count(t) for t in distinct]
        per_text = [self.chunks(t) for t in distinct]
        n_chunks = max(len(c) for c in per_text)
        empty = PromptChunk([BOS] + [EOS] * (CHUNK_TOKENS + 1), [1.0] * (CHUNK_TOKENS + 2))
        hidden_chunks, pooled = [], None
        for i in range(n_chunks):
            rows = [c[i] if i < len(c) else empty for c in per_text]
            hidden, p = self.encode_rows(rows, counts, want_pooled=(i == 0))
            hidden_chunks.append(hidden)
            if i == 0:
                pooled = p
        context = torch.cat(hidden_chunks, dim=1)
        index = {t: k for k, t in enumerate(distinct)}
        return [Conditioning(context[index[t]:index[t] + 1],
                             None if pooled is None else pooled[index[t]:index[t] + 1]) for t in texts]

    def encode_rows(self, rows: list[PromptChunk], counts: list[int], want_pooled: bool):
        """Chunks (one per batch row) through every text encoder: (hidden states concatenated along
        the width, the pooled vector or None). `counts`: chunks per prompt, for emphasis."""
        n_enc = len(self.encoders)
        mults = torch.tensor([r.multipliers for r in rows], dtype=torch.float32)
        weighted = self.emphasis in ("original", "no_norm") and any(r.weighted for r in rows)
        hidden_parts, pooled = [], None
        for enc, cfg, skip in zip(self.encoders, self.config.text_encoders, self._skips):
            ids = torch.tensor([r.ids for r in rows], dtype=torch.long)
            if cfg.pad_token != EOS:  # open_clip: everything after the first EOS is pad_token
                for b, r in enumerate(rows):
                    first = r.ids.index(EOS)
                    ids[b, first + 1:] = cfg.pad_token
            fixes = [[(pos, emb.for_encoder(cfg.naming, cfg.width, n_enc)) for pos, emb in r.fixes] for r in rows]
            with self._lock, _inserted(token_embedding(enc, cfg.naming), fixes):
                out = enc(ids.to(self.device), skip)
            z = out.hidden
            if weighted:
                z = emphasize(z, mults.to(z.device), counts, self.emphasis == "original")
            hidden_parts.append(z)
            if want_pooled and cfg.pooled:
                pooled = out.pooled
        return torch.cat(hidden_parts, dim=-1), pooled

    @torch.no_grad()
    def last_layer_pooled(self, text: str) -> torch.Tensor:
        """The first text encoder's pooled output of `text`'s first chunk from its last layer, whatever
        the CLIP skip (ComfyUI's pooled output; unprojected for an encoder without a projection), (1, width)."""
        row = self.chunks(text)[0]
        enc, cfg = self.encoders[0], self.config.text_encoders[0]
        ids = torch.tensor([row.ids], dtype=torch.long)
        if cfg.pad_token != EOS:
            ids[0, row.ids.index(EOS) + 1:] = cfg.pad_token
        fixes = [[(pos, emb.for_encoder(cfg.naming, cfg.width, len(self.encoders))) for pos, emb in row.fixes]]
        with self._lock, _inserted(token_embedding(enc, cfg.naming), fixes):
            return enc(ids.to(self.device), 1).pooled

    def empty(self) -> Conditioning:
        """The encoded empty prompt (one chunk), the filler :meth:`pad` uses."""
        if self._empty is None:
            self._empty = self.encode("")
        return self._empty

    def pad(self, conds: Sequence[Conditioning]) -> list[Conditioning]:
        """Pad conditionings (cond, uncond, AND-parts) to one length with encoded empty prompts,
        so they can be batched together."""
        return pad_conditionings(conds, self.empty())

    # -- whole prompts ------------------------------------------------------------------------

    def schedule(self, prompt: str, steps: int, *, negative: bool = False,
                 hires_steps: int | None = None, old_scheduling: bool = False) -> CondSchedule:
        """Encode ``prompt`` for a run of ``steps`` sampling steps.

        Positive prompts: extra-network tags are cut out (returned in ``extra_networks``), the
        prompt is split at ``AND`` into weighted parts, and each part's prompt editing and
        alternation are resolved per step. ``negative=True`` follows A1111's negative prompt:
        no AND splitting and no tag removal, only editing/alternation. ``hires_steps`` and
        ``old_scheduling``: see :func:`opensd.text.prompt_parser.prompt_schedule`.
        """
        if negative:
            cleaned, nets, parts = prompt, [], [(prompt, 1.0)]
        else:
            cleaned, nets = extract_extra_networks(prompt)
            parts = split_and(cleaned)
        done: dict[str, tuple[list, list]] = {}
        out = []
        for text, weight in parts:
            if text not in done:
                entries = prompt_schedule(text, steps, hires_steps, old_scheduling)
                done[text] = (entries, self.encode_batch([t for _, t in entries]))
            entries, conds = done[text]
            out.append(ScheduledPart(weight, text, entries, conds))
        return CondSchedule(cleaned, steps, out, nets)


def token_embedding(encoder: torch.nn.Module, naming: str) -> torch.nn.Module:
    """A text encoder's token embedding table (where textual-inversion vectors go in)."""
    if naming == "hf":
        return encoder.transformer.text_model.embeddings.token_embedding
    return encoder.model.token_embedding


@contextmanager
def _inserted(module: torch.nn.Module, fixes: list[list[tuple[int, torch.Tensor]]]):
    """While active, ``module``'s output (B, T, W) has row b's positions ``pos..pos+N`` replaced by
    the given (N, W) vectors -- textual-inversion vectors at the text encoder's input."""
    if not any(fixes):
        yield
        return

    def hook(_module, _args, output):
        if output.shape[0] != len(fixes):
            raise RuntimeError(f"embedding hook got a batch of {output.shape[0]}, expected {len(fixes)}")
        output = output.clone()
        for b, row in enumerate(fixes):
            for pos, vec in row:  # cut at the end (A1111's old emphasis keeps part of a cut-off embedding)
                n = min(vec.shape[0], output.shape[1] - pos)
                output[b, pos:pos + n] = vec[:n].to(output.device, output.dtype)
        return output

    handle = module.register_forward_hook(hook, prepend=True)  # before anyone else's hooks
    try:
        yield
    finally:
        handle.remove()


def emphasize(z: torch.Tensor, mults: torch.Tensor, counts: list[int], keep_mean: bool) -> torch.Tensor:
    """A1111's "Original" emphasis over one batch chunk: hidden states times their token's weight,
    then (``keep_mean``) rescaled so the batch mean is unchanged. ``counts`` weights rows for the
    mean, as if each row appeared that many times in the batch."""
    x = z.float()
    weighted = x * mults[:, :, None]
    if keep_mean:
        w = torch.tensor(counts, dtype=torch.float32, device=x.device)
        before = (x.mean(dim=(1, 2)) * w).sum() / w.sum()
        after = (weighted.mean(dim=(1, 2)) * w).sum() / w.sum()
        if after != 0 and torch.isfinite(after):
            weighted = weighted * (before / after)
    return weighted.to(z.dtype)
