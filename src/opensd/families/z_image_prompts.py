"""Prompts -> Z-Image's context: Qwen3's second-to-last hidden states of the chat-templated prompt
(text/qwen_prompts.py encodes them as diffusers' ZImagePipeline and ComfyUI do).

The rows past each prompt's tokens are zeros up to `text_length` (512), so every conditioning has
one length and the network masks them (its caption is the prompt's tokens alone, as diffusers hands
it over).

A1111's prompt syntax: AND, prompt editing and alternation work as for every family; emphasis
brackets are removed and their weights not applied (an LLM's hidden states have no per-token
weights; ComfyUI also encodes Z-Image prompts unweighted); BREAK is dropped.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..errors import CheckpointError
from ..pipeline.conditioning import Conditioning, PromptConditioner
from ..text.prompt_parser import check_prompt_length, is_break, parse_prompt_attention
from ..text.qwen_prompts import encode_padded

ENCODER = "qwen3_4b"


class ZImageConditioner(PromptConditioner):
    def __init__(self, pipe, clip_skip: int | None = None, **text):
        super().__init__(pipe.model, pipe.tokenizer, pipe.device, None, clip_skip, **text)
        self.pipe = pipe
        self.qwen_tokenizer = pipe.loaded.tokenizers.get("qwen")

    def plain(self, text: str) -> str:
        """The prompt as the encoder reads it: emphasis brackets and BREAK removed (emphasis "none":
        as written)."""
        check_prompt_length(text)
        if self.emphasis == "none":
            return text
        return "".join(f.text for f in parse_prompt_attention(text) if not is_break(f))

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden states (n, L, width) float32, mask (n, L) bool) of `texts` as written (templated
        there), L the longest one's tokens."""
        encoder = self.model.encoder(ENCODER)
        if encoder is None or self.qwen_tokenizer is None:
            raise CheckpointError(self.pipe.loaded.path, "this Z-Image model has no Qwen3 text encoder or tokenizer")
        hidden, mask = encode_padded(encoder, self.qwen_tokenizer, texts, self.config.text_length, device=self.device)
        return hidden.float(), mask

    def context_length(self) -> int:
        """Rows of every conditioning (longer encodings are cut)."""
        return self.config.text_length

    @torch.no_grad()
    def encode_batch(self, texts: Sequence[str]) -> list[Conditioning]:
        if not texts:
            return []
        distinct = list(dict.fromkeys(texts))
        hidden, mask = self.encode_texts([self.plain(t) for t in distinct])
        context = F.pad(hidden * mask[..., None], (0, 0, 0, self.context_length() - hidden.shape[1]))
        index = {t: k for k, t in enumerate(distinct)}
        empty = torch.zeros(1, 0, device=self.device)
        return [Conditioning(context[index[t]:index[t] + 1], empty) for t in texts]
