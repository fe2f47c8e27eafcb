"""CLIP byte-level BPE tokenizer, written from the published algorithm.

It reproduces the ids of transformers' *slow* ``CLIPTokenizer`` with ftfy installed, the tokenizer
diffusers and A1111 used (transformers < 5) for SD 1.x / 2.x / SDXL prompts. (open_clip's tokenizer,
used to train SD 2.x's encoder, also HTML-unescapes text containing '<' and does not cut out specials
first; both only matter for unusual prompts.)

1. ``ftfy.fix_text`` (mojibake, curly quotes -> straight, full-width -> ASCII, HTML entities unless
   the text contains ``<``, NFC), then runs of whitespace -> one space, strip, ``str.lower()``.
2. Split into words with CLIP's regex (special tokens, English contractions, letter runs, single
   digits, runs of other non-space characters).
3. Map each word's UTF-8 bytes to printable unicode characters (GPT-2's byte-to-unicode table), mark
   the last symbol with ``</w>`` and apply BPE merges in rank order.

transformers >= 5 ships only the Rust-backed ("fast") CLIPTokenizer, whose normaliser is just
NFC + whitespace + per-character lowercase. It therefore differs from us (and from the slow tokenizer
and open_clip) on text that ftfy changes, e.g. ``don’t`` (curly apostrophe), ``&amp;``, full-width
letters, ligatures, and on a word-final capital sigma (Python lowercases ``Σ`` to ``ς`` at the end of
a word; the fast tokenizer always gives ``σ``). Also, ``<|ENDOFTEXT|>`` typed in upper case becomes the
special token for us (lowercased first, as the slow tokenizer does) but ordinary text for the fast one.
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources
import os
from collections.abc import Iterable, Sequence

import ftfy
import regex
import torch

from opensd.errors import InvalidArgument

BOS = 49406  # <|startoftext|>
EOS = 49407  # <|endoftext|>, also the pad token in transformers' CLIP configs

_SOT_TEXT = "<|startoftext|>"
_EOT_TEXT = "<|endoftext|>"
_VOCAB_RESOURCE = "bpe_simple_vocab_16e6.txt.gz"
# The vocab file holds ~262k merges; CLIP uses only the first 49152 - 256 bytes - 2 specials of them.
_NUM_MERGES = 49152 - 256 - 2
_END_OF_WORD = "</w>"
_WORD_CACHE_LIMIT = 100_000  # words; bounded so a long-running server cannot grow without limit

# Same pattern and flags as CLIP / transformers' slow tokenizer. IGNORECASE is a no-op for almost all
# lowercased text but is kept because it changes matching for rare case-folding characters.
_WORD_RE = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
_SPECIAL_SPLIT_RE = regex.compile(r"(<\|startoftext\|>|<\|endoftext\|>)")  # case-sensitive, exact
# `regex` (not `re`) on purpose: its \s is the one the reference whitespace_clean used.
_WHITESPACE_RE = regex.compile(r"\s+")


@functools.cache
def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table.

    Printable Latin-1 bytes map to themselves; the 68 others (controls, space, NBSP, soft hyphen)
    are moved to U+0100 onwards in byte order, so every token is a whitespace-free string.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    shifted = [b for b in range(256) if b not in table]
    for offset, b in enumerate(shifted):
        table[b] = chr(256 + offset)
    # Order matters: the vocab's first 256 ids follow this insertion order (printable bytes first).
    return table


def normalize(text: str) -> str:
    """The text clean-up applied before splitting into words (see module docstring)."""
    text = ftfy.fix_text(text)
    text = _WHITESPACE_RE.sub(" ", text).strip()
    return text.lower()


def _read_merges(vocab_path: str | os.PathLike | None) -> list[str]:
    """The merge rules as 'left right' strings, in rank order."""
    if vocab_path is None:
        data = importlib.resources.files("opensd.text").joinpath(_VOCAB_RESOURCE).read_bytes()
    else:
        with open(vocab_path, "rb") as fh:
            data = fh.read()
    if data[:2] == b"\x1f\x8b":  # gzip magic; also accept an already-unpacked file
        data = gzip.decompress(data)
    # Line 0 is a '#version' header; take exactly the merges CLIP was trained with. maxsplit keeps the
    # unused ~210k lines as one untouched chunk. Lines stay plain strings (no per-merge tuples): with
    # torch's large heap loaded, 49k tracked tuples would trigger costly full GC passes.
    head = data.split(b"\n", _NUM_MERGES + 1)
    lines = b"\n".join(head[1 : _NUM_MERGES + 1]).decode("utf-8").split("\n")
    halves = " ".join(lines).split(" ")
    if len(lines) != _NUM_MERGES or len(halves) != 2 * _NUM_MERGES or "" in halves:
        raise InvalidArgument(f"{vocab_path or _VOCAB_RESOURCE}: not a CLIP BPE merges file")
    return lines


class CLIPTokenizer:
    """Text -> CLIP token ids, with a per-word BPE cache so repeated prompts cost little."""

    def __init__(self, vocab_path: str | os.PathLike | None = None) -> None:
        byte_table = _byte_to_unicode()
        self._byte_encoder = byte_table
        self._byte_decoder = {c: b for b, c in byte_table.items()}

        merges = _read_merges(vocab_path)
        # Vocab order is fixed by CLIP: bytes, bytes + </w>, one token per merge, then the 2 specials.
        symbols = list(byte_table.values())
        tokens = symbols + [s + _END_OF_WORD for s in symbols]
        tokens += [m.replace(" ", "") for m in merges]  # byte-mapped symbols never contain a space
        tokens += [_SOT_TEXT, _EOT_TEXT]
        self.encoder: dict[str, int] = {tok: i for i, tok in enumerate(tokens)}
        self.decoder: dict[int, str] = dict(enumerate(tokens))
        self.vocab_size: int = len(tokens)
        if len(self.encoder) != self.vocab_size or self.encoder[_EOT_TEXT] != EOS:
            raise InvalidArgument(f"{vocab_path or _VOCAB_RESOURCE}: unexpected CLIP vocab layout")

        # Keyed by 'left right', the merges-file line itself.
        self._ranks: dict[str, int] = dict(zip(merges, range(len(merges))))
        # Specials typed in the prompt survive as single tokens, as in CLIP's own tokenizer.
        self._seed_cache = {_SOT_TEXT: [BOS], _EOT_TEXT: [EOS]}
        self._cache: dict[str, list[int]] = dict(self._seed_cache)

    # -- BPE ---------------------------------------------------------------------------------

    def _bpe(self, word: str) -> list[str]:
        """Merge the byte-symbols of one word, always taking the lowest-ranked adjacent pair first."""
        parts = list(word)
        parts[-1] += _END_OF_WORD
        ranks = self._ranks
        while len(parts) > 1:
            best_rank, best_i = None, -1
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + " " + parts[i + 1])
                if r is not None and (best_rank is None or r < best_rank):
                    best_rank, best_i = r, i
            if best_rank is None:
                break
            first, second = parts[best_i], parts[best_i + 1]
            merged: list[str] = []
            i, n = 0, len(parts)
            # Merge every non-overlapping occurrence, scanning left to right.
            while i < n:
                if i < n - 1 and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return parts

    def _word_ids(self, word: str) -> list[int]:
        ids = self._cache.get(word)
        if ids is None:
            ids = [self.encoder[p] for p in self._bpe(word)]
            if len(self._cache) >= _WORD_CACHE_LIMIT:
                self._cache = dict(self._seed_cache)
            self._cache[word] = ids
        return ids

    # -- public API --------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """BPE ids for ``text``: no BOS/EOS, no truncation."""
        enc = self._byte_encoder
        out: list[int] = []
        # Like transformers, cut out exact special-token strings *before* normalising: the pieces
        # between them are cleaned separately, which matters (ftfy skips HTML unescaping when the
        # text contains '<'; punctuation next to a special is not glued into one word).
        for i, chunk in enumerate(_SPECIAL_SPLIT_RE.split(text)):
            if i % 2:  # odd pieces are the captured specials
                out.append(self.encoder[chunk])
                continue
            for word in _WORD_RE.findall(normalize(chunk)):
                # Byte-map before the cache lookup so specials that only appear after lowercasing
                # (e.g. '<|ENDOFTEXT|>', pure ASCII) hit their seeded cache entries.
                out.extend(self._word_ids("".join(enc[b] for b in word.encode("utf-8"))))
        return out

    def decode(self, ids: Iterable[int] | torch.Tensor, skip_special: bool = True) -> str:
        """Best-effort text for ids (lowercased, normalised). For debugging and tests."""
        if isinstance(ids, torch.Tensor):
            ids = ids.flatten().tolist()
        tokens = [self.decoder[int(i)] for i in ids if not (skip_special and int(i) in (BOS, EOS))]
        raw = bytes(self._byte_decoder[c] for c in "".join(tokens))
        # '</w>' is plain ASCII, so it survives byte decoding and marks word ends.
        return raw.decode("utf-8", errors="replace").replace(_END_OF_WORD, " ").strip()

    def __call__(self, texts: str | Sequence[str], max_length: int = 77, pad_token: int = EOS) -> torch.LongTensor:
        """(B, max_length) ids: BOS, ids cut to max_length - 2, EOS, then ``pad_token``.

        EOS is always kept so the SD text encoders' pooled output (taken at the first EOS/argmax id) is
        defined; transformers pads with EOS, open_clip (SD 2.x) with 0.
        """
        if max_length < 2:
            raise InvalidArgument(f"max_length must be at least 2 (BOS + EOS), got {max_length}")
        if isinstance(texts, str):
            texts = [texts]
        out = torch.full((len(texts), max_length), pad_token, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [BOS, *self.encode(text)[: max_length - 2], EOS]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out  # type: ignore[return-value]


@functools.cache
def default_tokenizer() -> CLIPTokenizer:
    """Shared tokenizer on the vendored vocab, parsed once per process."""
    return CLIPTokenizer()
