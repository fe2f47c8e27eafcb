"""Prompts -> context and pooled vector for the T5-conditioned DiTs (SD3/SD3.5, Flux, Chroma).

The A1111 prompt syntax works as for the UNets (PromptConditioner.schedule: AND, prompt editing,
alternation, emphasis), with these encoders:

* CLIP (SD3: CLIP-L and CLIP-G; Flux: CLIP-L) sees the prompt's first 75 tokens as one chunk, as
  diffusers and SD3's reference code cut it. SD3's context starts with both encoders' penultimate
  hidden states side by side, zero-padded to T5's width; its pooled vector is both projected
  pooled outputs side by side. Flux uses CLIP-L's pooled output only, unprojected.
* T5-XXL sees the prompt (emphasis syntax removed) as SentencePiece pieces, end of text, padding
  to `t5_length` tokens (SD3: 256; Flux: 512 dev, 256 schnell); its hidden states follow CLIP's in
  SD3's context and are Flux's whole context.
* Emphasis weights both encoders' hidden states with A1111's "Original" rule (weight, then keep the
  mean); T5 tokenizes each weighted fragment on its own so every piece has one weight.
* Chroma masks T5's padding but for its first token (`t5_padding_kept`): T5 attends to the prompt's
  tokens and end of text only, and the context rows past the kept padding are zeros (the network
  masks all-zero rows). It has no CLIP: its pooled vector is empty.
* `t5_padding` (ComfyUI's T5TokenizerOptions: min_padding, min_length) lays T5's tokens out as
  ComfyUI's tokenizer does instead: the pieces uncut, end of text, min_padding padding tokens, then
  padding up to min_length; every row reaches the network (Chroma's T5 still attends to the prompt
  and end of text only). Prompts of one batch then differ in length and are encoded one by one.
* A missing encoder (SD3 allows any subset) contributes zeros of its shape: a T5-less SD3 run has
  `t5_length` zero tokens after CLIP's, as diffusers does.

Textual-inversion embeddings are not applied to these encoders.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..pipeline.conditioning import CHUNK_TOKENS, Conditioning, PromptChunk, PromptConditioner, emphasize
from ..text.prompt_parser import Fragment, check_prompt_length, is_break, parse_prompt_attention
from ..text.t5_tokenizer import EOS_ID, PAD_ID
from ..text.tokenizer import EOS

_CLIP_WIDTHS = {"clip_l": 768, "clip_g": 1280}  # the released widths, for zeros in a missing one's place


class DiTConditioner(PromptConditioner):
    """`clip_names`: the CLIP encoders of the family in context order; `clip_context`: whether their
    hidden states start the context (SD3) or only their pooled vector is used (Flux)."""

    def __init__(self, pipe, clip_names: tuple[str, ...], clip_context: bool, clip_skip: int | None = None,
                 t5_padding_kept: int | None = None, t5_padding: tuple[int, int] | None = None, **text):
        super().__init__(pipe.model, pipe.tokenizer, pipe.device, None, clip_skip, **text)
        self.pipe = pipe
        self.t5_padding_kept = t5_padding_kept
        self.t5_padding = t5_padding
        self.clip_names, self.clip_context = clip_names, clip_context
        self.t5_tokenizer = pipe.loaded.tokenizers.get("t5")

    @torch.no_grad()
    def encode_batch(self, texts: Sequence[str]) -> list[Conditioning]:
        if not texts:
            return []
        distinct = list(dict.fromkeys(texts))
        if self.t5_padding is not None and len(distinct) > 1:  # each prompt its own length: one by one
            each = {t: self.encode_batch([t])[0] for t in distinct}
            return [each[t] for t in texts]
        counts = [texts.count(t) for t in distinct]
        rows = [self.chunks(t)[0] for t in distinct]
        hidden, pooled = [], []
        for name in self.clip_names:
            h, p = self._clip(name, rows, counts)
            hidden.append(h)
            pooled.append(p)
        t5 = self._t5(distinct, counts)
        context = t5
        if self.clip_context:
            clip = torch.cat(hidden, dim=-1)
            clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
            context = torch.cat([clip, t5], dim=1)
        y = _pooled(pooled, len(distinct), self.device)
        index = {t: k for k, t in enumerate(distinct)}
        return [Conditioning(context[index[t]:index[t] + 1], y[index[t]:index[t] + 1]) for t in texts]

    @torch.no_grad()
    def encode_parts(self, texts: dict[str, str | None]) -> Conditioning:
        """One prompt per encoder ("clip_l", "clip_g", "t5xxl"), as ComfyUI's CLIPTextEncodeSD3 and
        CLIPTextEncodeFlux give them; None: that encoder sees no tokens at all (a CLIP's part is
        then zeros, and SD3's context has no T5 tokens), ComfyUI's empty_padding "none"."""
        hidden, pooled = [], []
        for name in self.clip_names:
            if texts.get(name) is None:
                width = self._width(name)
                hidden.append(torch.zeros(1, CHUNK_TOKENS + 2, width, device=self.device))
                pooled.append(torch.zeros(1, self._pooled_width(name), device=self.device))
            else:
                h, p = self._clip(name, [self.chunks(texts[name])[0]], [1])
                hidden.append(h)
                pooled.append(p)
        t5 = (torch.zeros(1, 0, self._t5_width(), device=self.device) if texts.get("t5xxl") is None
              else self._t5([texts["t5xxl"]], [1]))
        context = t5
        if self.clip_context:
            clip = torch.cat(hidden, dim=-1)
            clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
            context = torch.cat([clip, t5], dim=1)
        return Conditioning(context, _pooled(pooled, 1, self.device))

    def _t5_width(self) -> int:
        """T5's width, or the network's context width where there is no T5 (SD3: zeros in its place)."""
        t5 = self.config.t5
        return self.pipe.family.context_width(self.config) if t5 is None else t5.d_model

    def _width(self, name: str) -> int:
        cfg = getattr(self.config, name)
        return self._missing_width(name) if cfg is None else cfg.width

    def _pooled_width(self, name: str) -> int:
        cfg = getattr(self.config, name)
        return self._missing_width(name) if cfg is None else (cfg.projection_dim or cfg.width)

    def _clip(self, name: str, rows: list[PromptChunk], counts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        encoder = self.model.encoder(name)
        cfg = getattr(self.config, name)
        n = len(rows)
        if encoder is None:
            width = self._missing_width(name)
            return (torch.zeros(n, CHUNK_TOKENS + 2, width, device=self.device),
                    torch.zeros(n, width, device=self.device))
        ids = torch.tensor([r.ids for r in rows], dtype=torch.long)
        if cfg.pad_token != EOS:  # CLIP-G pads with 0 after the first end of text
            for b, r in enumerate(rows):
                ids[b, r.ids.index(EOS) + 1:] = cfg.pad_token
        out = encoder(ids.to(self.device))
        z = out.hidden
        if self.emphasis in ("original", "no_norm") and any(r.weighted for r in rows):
            mults = torch.tensor([r.multipliers for r in rows], dtype=torch.float32, device=z.device)
            z = emphasize(z, mults, counts, self.emphasis == "original")
        return z.float(), out.pooled.float()

    def _missing_width(self, name: str) -> int:
        """The width a missing CLIP would have had: the pooled vector's other part decides."""
        present = sum(getattr(self.config, n).projection_dim or getattr(self.config, n).width
                      for n in self.clip_names if getattr(self.config, n) is not None)
        total = self.pipe.family.pooled_width(self.config)
        others = [n for n in self.clip_names if getattr(self.config, n) is None]
        if len(others) == 1:
            return total - present
        return _CLIP_WIDTHS[name] * total // sum(_CLIP_WIDTHS[n] for n in others)

    def _t5(self, texts: list[str], counts: list[int]) -> torch.Tensor:
        length = self.config.t5_length
        encoder = self.model.encoder("t5xxl")
        if encoder is None or self.t5_tokenizer is None:
            return torch.zeros(len(texts), length, self._t5_width(), device=self.device)
        ids, mults = zip(*(self._t5_tokens(t, length) for t in texts))
        ids = torch.tensor(ids, dtype=torch.long, device=self.device)
        if self.t5_padding_kept is None:
            z = encoder(ids).float()
        else:  # T5 sees up to the end of text; the network that much and the kept padding (or all laid out)
            ends = (ids == EOS_ID).int().argmax(dim=1, keepdim=True)
            positions = torch.arange(ids.shape[1], device=self.device)[None]
            z = encoder(ids, (positions <= ends).long()).float()
            if self.t5_padding is None:
                z = z * (positions <= ends + self.t5_padding_kept)[..., None]
        if self.emphasis in ("original", "no_norm") and any(w != 1.0 for m in mults for w in m):
            z = emphasize(z, torch.tensor(mults, dtype=torch.float32, device=z.device), counts,
                          self.emphasis == "original")
        return z

    def _t5_tokens(self, text: str, length: int) -> tuple[list[int], list[float]]:
        """T5 ids (pieces, end of text, padding) and each position's emphasis weight."""
        check_prompt_length(text)
        fragments = [Fragment(text, 1.0)] if self.emphasis == "none" else parse_prompt_attention(text)
        pieces: list[int] = []
        weights: list[float] = []
        for frag in fragments:
            if is_break(frag):
                continue
            ids = self.t5_tokenizer.encode(frag.text)
            pieces += ids
            weights += [frag.weight] * len(ids)
        if self.t5_padding is not None:  # ComfyUI's layout: uncut, end, min_padding, up to min_length
            min_padding, min_length = self.t5_padding
            ids = pieces + [EOS_ID] + [PAD_ID] * min_padding
            ids += [PAD_ID] * (min_length - len(ids))
            return ids, weights + [1.0] * (len(ids) - len(weights))
        pieces, weights = pieces[:length - 1], weights[:length - 1]  # as T5Tokenizer cuts a plain prompt
        ids = pieces + [EOS_ID] + [PAD_ID] * (length - 1 - len(pieces))
        return ids, weights + [1.0] * (length - len(weights))


def _pooled(parts: list[torch.Tensor], n: int, device) -> torch.Tensor:
    """The CLIP encoders' pooled vectors side by side; (n, 0) for a family without CLIP (Chroma)."""
    return torch.cat(parts, dim=-1) if parts else torch.zeros(n, 0, device=device)
