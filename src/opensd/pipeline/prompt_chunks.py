"""A1111-syntax prompt text -> 77-token chunks: the token ids, each position's emphasis weight and
the textual-inversion embeddings to insert (conditioning.py's PromptConditioner encodes them; its
module docstring says how A1111 chunks and weights a prompt)."""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field

from ..errors import InvalidArgument
from ..text.embeddings import Embedding, EmbeddingDatabase
from ..text.prompt_parser import Fragment, check_prompt_length, is_break, parse_prompt_attention
from ..text.tokenizer import BOS, EOS, CLIPTokenizer

CHUNK_TOKENS = 75          # prompt tokens per chunk; a chunk is BOS + 75 + EOS = 77 ids
# Chunks one prompt text may fill: past what the server's 20,000-character prompt can make of plain
# text (about 365 with commas moving tokens on), short of what BREAK or a long embedding repeated
# make of it (3,000 BREAKs: a 231,000-token context, over a minute per step on the tiny model).
MAX_CHUNKS = 400


@dataclass
class PromptChunk:
    """One 77-token chunk: ids (BOS, 75 prompt/padding ids, EOS; padding is EOS here and becomes
    each encoder's pad token when encoded), the weight of every position, and the embeddings to
    insert as ``(position, embedding)`` -- their slots hold placeholder id 0."""
    ids: list[int]
    multipliers: list[float]
    fixes: list[tuple[int, Embedding]] = field(default_factory=list)

    @property
    def weighted(self) -> bool:
        return any(m != 1.0 for m in self.multipliers)


def tokenize_prompt(text: str, tokenizer: CLIPTokenizer, embeddings: EmbeddingDatabase | None = None,
                    emphasis: str = "original", comma_backtrack: int = 20) -> tuple[list[PromptChunk], int]:
    """One prompt text (no AND, no editing left in it) as 77-token chunks, and A1111's token count
    for it (75 for every chunk but the last, which counts its own tokens), the number its UI shows."""
    check_prompt_length(text)
    comma = tokenizer.encoder[",</w>"]
    if emphasis == "none":
        fragments = [Fragment(text, 1.0)]
    else:
        fragments = parse_prompt_attention(text)
    out: list[PromptChunk] = []
    tokens: list[int] = []
    mults: list[float] = []
    fixes: list[tuple[int, Embedding]] = []
    last_comma = -1
    count = 0

    def close(last: bool = False) -> None:
        nonlocal tokens, mults, fixes, last_comma, count
        if len(out) == MAX_CHUNKS:
            raise InvalidArgument(f"prompt: more than {MAX_CHUNKS} chunks of {CHUNK_TOKENS} tokens (each BREAK "
                                  "starts one); make the prompt shorter")
        count += len(tokens) if last else CHUNK_TOKENS
        pad = CHUNK_TOKENS - len(tokens)
        out.append(PromptChunk([BOS, *tokens, *([EOS] * pad), EOS], [1.0, *mults, *([1.0] * pad), 1.0],
                               [(offset + 1, emb) for offset, emb in fixes]))
        tokens, mults, fixes, last_comma = [], [], [], -1

    for frag in fragments:
        if is_break(frag):
            close()
            continue
        ids = tokenizer.encode(frag.text)
        pos = 0
        while pos < len(ids):
            tok = ids[pos]
            if tok == comma:
                last_comma = len(tokens)
            elif (comma_backtrack and len(tokens) == CHUNK_TOKENS and last_comma != -1
                  and len(tokens) - last_comma <= comma_backtrack):
                cut = last_comma + 1
                moved = (tokens[cut:], mults[cut:], [(o - cut, e) for o, e in fixes if o >= cut])
                tokens, mults, fixes = tokens[:cut], mults[:cut], [(o, e) for o, e in fixes if o < cut]
                close()
                tokens, mults, fixes = (list(x) for x in moved)
            if len(tokens) == CHUNK_TOKENS:
                close()
            found = embeddings.find(tokenizer, ids, pos) if embeddings else None
            if found is None:
                tokens.append(tok)
                mults.append(frag.weight)
                pos += 1
                continue
            emb, covered = found
            if len(tokens) + emb.count > CHUNK_TOKENS:
                close()
            fixes.append((len(tokens), emb))
            tokens.extend([0] * emb.count)
            mults.extend([frag.weight] * emb.count)
            pos += covered
    if tokens or not out:
        close(last=True)
    return out, count


def tokenize_prompt_old(text: str, tokenizer: CLIPTokenizer,
                        embeddings: EmbeddingDatabase | None = None) -> list[PromptChunk]:
    """A1111's "use old emphasis implementation" (sd_hijack_clip_old): no ``(text:1.2)`` syntax and
    no BREAK; a vocabulary token holding brackets multiplies the weight of the tokens after it (each
    "(" by 1.1, "[" by 1/1.1, ")" and "]" back) and is dropped; one chunk, the prompt cut after 75
    tokens. The emphasis mode then applies the weights or not, as for new-style chunks. (Its switch
    for the bracket tokens, enable_emphasis, is gone from A1111's settings: taken as on.)"""
    check_prompt_length(text)
    bracket_weights = _bracket_weights(tokenizer)
    ids = tokenizer.encode(text)
    tokens: list[int] = []
    mults: list[float] = []
    fixes: list[tuple[int, Embedding]] = []
    weight, pos = 1.0, 0
    while pos < len(ids):
        change = bracket_weights.get(ids[pos])
        found = None if change is not None or not embeddings else embeddings.find(tokenizer, ids, pos)
        if change is not None:
            weight *= change
            pos += 1
        elif found is None:
            tokens.append(ids[pos])
            mults.append(weight)
            pos += 1
        else:
            emb, covered = found
            fixes.append((len(tokens), emb))
            tokens.extend([0] * emb.count)
            mults.extend([weight] * emb.count)
            pos += covered
    tokens, mults = tokens[:CHUNK_TOKENS], mults[:CHUNK_TOKENS]
    pad = CHUNK_TOKENS - len(tokens)
    return [PromptChunk([BOS, *tokens, *([EOS] * pad), EOS], [1.0, *mults, *([1.0] * pad), 1.0],
                        [(offset + 1, emb) for offset, emb in fixes if offset < CHUNK_TOKENS])]


_BRACKET_WEIGHTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # per tokenizer


def _bracket_weights(tokenizer: CLIPTokenizer) -> dict[int, float]:
    """Token id -> weight change, for the vocabulary's tokens whose brackets do not cancel out."""
    key = tokenizer
    if key not in _BRACKET_WEIGHTS:
        table = {}
        for piece, ident in tokenizer.encoder.items():
            change = 1.0
            for ch in piece:
                if ch in "(]":
                    change *= 1.1
                elif ch in ")[":
                    change /= 1.1
            if change != 1.0:
                table[ident] = change
        _BRACKET_WEIGHTS[key] = table
    return _BRACKET_WEIGHTS[key]
