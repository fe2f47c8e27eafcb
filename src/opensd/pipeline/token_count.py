"""A1111's prompt token counter (the "12/75" beside its prompt boxes): LoRA and other extra-network
tags removed, every AND part at every step of the prompt's schedule tokenized into 75-token chunks
exactly as generation does, and the largest count shown against the chunks it fills."""
from __future__ import annotations

from dataclasses import dataclass

from ..text.embeddings import EmbeddingDatabase
from ..text.prompt_parser import extract_extra_networks, prompt_schedule, split_and
from ..text.tokenizer import CLIPTokenizer
from .conditioning import CHUNK_TOKENS, tokenize_prompt


@dataclass(frozen=True)
class TokenCount:
    tokens: int       # A1111's count: 75 per full chunk plus the last chunk's tokens
    max_tokens: int   # the chunks' capacity: a multiple of 75
    chunks: int


def count_tokens(prompt: str, tokenizer: CLIPTokenizer, steps: int = 20,
                 embeddings: EmbeddingDatabase | None = None) -> TokenCount:
    text, _ = extract_extra_networks(prompt)
    best = (0, 1)
    for part, _weight in split_and(text):
        for _end, variant in prompt_schedule(part, steps):
            chunks, tokens = tokenize_prompt(variant, tokenizer, embeddings)
            best = max(best, (tokens, len(chunks)))
    tokens, chunks = best
    return TokenCount(tokens, max(1, -(-tokens // CHUNK_TOKENS)) * CHUNK_TOKENS, chunks)
