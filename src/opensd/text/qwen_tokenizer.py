"""Qwen's tokenizer (Qwen2/2.5/3, and so Z-Image's Qwen3-4B): byte-level BPE run by the `tokenizers` library.

The vocabulary is the user's: no Qwen vocabulary ships with opensd. Either file set of a Qwen
tokenizer folder works:

* `tokenizer.json`, the whole pipeline in one file (a diffusers folder's tokenizer/ has it);
* `vocab.json` + `merges.txt`, with `tokenizer_config.json` beside them naming the ids of the
  special tokens (`added_tokens_decoder`); without it the special tokens take the ids that follow
  the vocabulary, in Qwen's order (<|endoftext|>, <|im_start|>, <|im_end|>), as in Qwen's files.
  The pipeline built around them is Qwen2Tokenizer's: NFC, Qwen's pre-tokenizer pattern, bytes
  mapped to printable characters, BPE.

A llama.cpp GGUF file of a Qwen model carries the same vocabulary in its header (from_gguf).

Special tokens written in the text (`<|im_start|>`) become their one id, as transformers does.
Padding uses <|endoftext|>, Qwen's pad token.
"""
from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE

from ..checkpoints.gguf_files import read_gguf_fields
from ..errors import CheckpointError, InvalidArgument

PAD = "<|endoftext|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
_SPECIALS = (PAD, IM_START, IM_END)
GGUF_MODEL, GGUF_TOKENS = "tokenizer.ggml.model", "tokenizer.ggml.tokens"
GGUF_MERGES, GGUF_TYPES = "tokenizer.ggml.merges", "tokenizer.ggml.token_type"
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp's token types
TOKENIZER_JSON, VOCAB, MERGES, CONFIG = "tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"

# Released tokenizer.json files are tens of MB at most (Qwen2.5's 7, tekken's 17); the Rust parser holds
# several times the file, so a larger one is refused before reading.
MAX_TOKENIZER_JSON = 256 * 2**20


def read_tokenizer_json(path: Path) -> Tokenizer:
    """A tokenizer.json as the tokenizers library reads it, after checking it is a plain file of a
    tokenizer's size (a device or a fifo would be read without end, a huge file into memory)."""
    if not path.is_file():
        raise CheckpointError(path, "not a regular file")
    size = path.stat().st_size
    if size > MAX_TOKENIZER_JSON:
        raise CheckpointError(path, f"{size / 2**20:,.0f} MB, more than the {MAX_TOKENIZER_JSON // 2**20} MB "
                                    "a tokenizer.json may be")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # the Rust library's errors are plain Exceptions
        raise CheckpointError(path, f"not a readable tokenizer ({e})") from None


# Qwen2's pre-tokenizer: contractions, letter runs (with one leading non-letter), single digits,
# punctuation runs, newlines, other whitespace.
_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
            r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def is_tokenizer_folder(folder: Path) -> bool:
    """Whether `folder` holds a tokenizer.json or a vocab.json and merges.txt."""
    return (folder / TOKENIZER_JSON).is_file() or ((folder / VOCAB).is_file() and (folder / MERGES).is_file())


_BPE_OPTIONS = dict(continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False, byte_fallback=False)


def _bpe_pipeline(bpe: BPE) -> Tokenizer:
    """Qwen2Tokenizer's pipeline around a byte-level BPE model."""
    tok = Tokenizer(bpe)
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    return tok


def _added_tokens(config: Path, first_free: int) -> list[tuple[int, str]]:
    """(id, content) of the special tokens, from tokenizer_config.json or Qwen's layout."""
    if config.is_file():
        try:
            added = json.loads(config.read_text(encoding="utf-8")).get("added_tokens_decoder") or {}
            found = sorted((int(i), t["content"]) for i, t in added.items())
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise CheckpointError(config, f"not a tokenizer config ({e})") from None
        if found:
            return found
    return list(enumerate(_SPECIALS, start=first_free))


class QwenTokenizer:
    def __init__(self, tokenizer: Tokenizer, source: str = "Qwen tokenizer"):
        """`tokenizer`: the whole pipeline; `source` names it in errors."""
        self._tok = tokenizer
        tokenizer.no_truncation()  # a tokenizer.json may carry presets; batch() does both itself
        tokenizer.no_padding()
        missing = [t for t in _SPECIALS if tokenizer.token_to_id(t) is None]
        if missing:
            raise CheckpointError(source, "not a Qwen tokenizer: no " + ", ".join(missing))
        self.pad_id = tokenizer.token_to_id(PAD)

    @classmethod
    def from_folder(cls, folder: str | Path) -> QwenTokenizer:
        """From a tokenizer folder's tokenizer.json, else its vocab.json and merges.txt."""
        folder = Path(folder)
        if (folder / TOKENIZER_JSON).is_file():
            return cls(read_tokenizer_json(folder / TOKENIZER_JSON), str(folder / TOKENIZER_JSON))
        try:
            tok = _bpe_pipeline(BPE.from_file(str(folder / VOCAB), str(folder / MERGES), **_BPE_OPTIONS))
        except Exception as e:  # the Rust library's errors are plain Exceptions
            raise CheckpointError(folder, f"not a readable tokenizer ({e})") from None
        for wanted, content in _added_tokens(folder / CONFIG, tok.get_vocab_size()):
            if tok.token_to_id(content) is None:
                tok.add_special_tokens([AddedToken(content, special=True, normalized=False)])
            if tok.token_to_id(content) != wanted:
                raise CheckpointError(folder / CONFIG, f"special token {content} should have id {wanted}, "
                                      f"but the vocabulary gives it {tok.token_to_id(content)}")
        return cls(tok, str(folder))

    @classmethod
    def from_gguf(cls, path: str | Path) -> QwenTokenizer:
        """The tokenizer a llama.cpp GGUF file of a Qwen model carries (tokenizer.ggml.*: the tokens
        by id, the merges, and which tokens are control or user-defined, kept whole in the text)."""
        fields = read_gguf_fields(path, (GGUF_MODEL, GGUF_TOKENS, GGUF_MERGES, GGUF_TYPES))
        if fields.get(GGUF_MODEL) != "gpt2" or GGUF_TOKENS not in fields or GGUF_MERGES not in fields:
            raise CheckpointError(path, "carries no byte-level BPE tokenizer (tokenizer.ggml.model gpt2, with tokens "
                                        "and merges)")
        tokens = fields[GGUF_TOKENS]
        merges = [tuple(m.split(" ", 1)) for m in fields[GGUF_MERGES]]
        try:
            tok = _bpe_pipeline(BPE({t: i for i, t in enumerate(tokens)}, merges, **_BPE_OPTIONS))
        except Exception as e:  # the Rust library's errors are plain Exceptions
            raise CheckpointError(path, f"its tokenizer cannot be built ({e})") from None
        kinds = fields.get(GGUF_TYPES) or []
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, kind in zip(tokens, kinds) if kind == _CONTROL])
        tok.add_tokens([AddedToken(t, special=False, normalized=False)
                        for t, kind in zip(tokens, kinds) if kind == _USER_DEFINED])
        return cls(tok, str(path))

    def encode(self, text: str) -> list[int]:
        """The ids of `text`; special tokens written in it are one id each."""
        return self._tok.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)

    def batch(self, texts: list[str], max_length: int = 512, padding_side: str = "right",
              pad_to: int = 0) -> tuple[list[list[int]], list[list[int]]]:
        """(ids, mask) of `texts`, each cut to `max_length` ids (the end dropped) and padded with
        <|endoftext|> to the longest, or to `pad_to` ids if longer (transformers' "max_length"
        padding): mask 1 for a text's own ids, 0 for padding."""
        if max_length < 1:
            raise InvalidArgument(f"max_length must be at least 1 (got {max_length})")
        if padding_side not in ("right", "left"):
            raise InvalidArgument(f"padding_side must be 'right' or 'left' (got {padding_side!r})")
        rows = [self.encode(t)[:max_length] for t in texts]
        width = max(max((len(r) for r in rows), default=0), pad_to)
        ids, mask = [], []
        for r in rows:
            pad = width - len(r)
            if padding_side == "right":
                ids.append(r + [self.pad_id] * pad)
                mask.append([1] * len(r) + [0] * pad)
            else:
                ids.append([self.pad_id] * pad + r)
                mask.append([0] * pad + [1] * len(r))
        return ids, mask
