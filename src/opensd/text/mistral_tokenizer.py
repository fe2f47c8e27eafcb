"""Mistral's tekken tokenizer (Mistral Small 3.1, FLUX.2 [dev]'s text encoder) as the `tokenizers`
library runs a transformers tokenizer.json.

The vocabulary is the user's: none ships with opensd. A tokenizer folder holds tokenizer.json (a
FLUX.2 [dev] diffusers folder's tokenizer/), with tokenizer_config.json beside it naming the pad
token and the padding side as transformers reads them (pad `<pad>` and the right side where it
says nothing). Special tokens written in the text ([INST], [SYSTEM_PROMPT], <s>) become their one
id; nothing is added around the text (the chat template writes <s> itself, and transformers then
tokenizes without special tokens). Cutting and padding are QwenTokenizer.batch's.
"""
from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer

from ..errors import CheckpointError
from .qwen_tokenizer import CONFIG, TOKENIZER_JSON, QwenTokenizer, read_tokenizer_json

BOS, PAD = "<s>", "<pad>"
INST, INST_END = "[INST]", "[/INST]"
SYSTEM, SYSTEM_END = "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"
_REQUIRED = (BOS, INST, INST_END, SYSTEM, SYSTEM_END)


def is_mistral_tokenizer_folder(folder: Path) -> bool:
    return (folder / TOKENIZER_JSON).is_file()


def _settings(config: Path) -> tuple[str, str]:
    """(pad token, padding side) from tokenizer_config.json, transformers' defaults without one."""
    if not config.is_file():
        return PAD, "right"
    try:
        j = json.loads(config.read_text(encoding="utf-8"))
        pad = j.get("pad_token") or PAD
        pad = pad["content"] if isinstance(pad, dict) else str(pad)
        side = j.get("padding_side") or "right"
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise CheckpointError(config, f"not a tokenizer config ({e})") from None
    if side not in ("left", "right"):
        raise CheckpointError(config, f"padding_side {side!r}: 'left' or 'right'")
    return pad, side


class MistralTokenizer(QwenTokenizer):
    def __init__(self, tokenizer: Tokenizer, source: str = "Mistral tokenizer", pad: str = PAD,
                 padding_side: str = "right"):
        self._tok = tokenizer
        tokenizer.no_truncation()
        tokenizer.no_padding()
        missing = [t for t in (*_REQUIRED, pad) if tokenizer.token_to_id(t) is None]
        if missing:
            raise CheckpointError(source, "not a Mistral (tekken) tokenizer: no " + ", ".join(missing))
        self.pad_id = tokenizer.token_to_id(pad)
        self.padding_side = padding_side

    @classmethod
    def from_folder(cls, folder: str | Path) -> MistralTokenizer:
        folder = Path(folder)
        tok = read_tokenizer_json(folder / TOKENIZER_JSON)
        pad, side = _settings(folder / CONFIG)
        return cls(tok, str(folder / TOKENIZER_JSON), pad, side)

    def encode(self, text: str) -> list[int]:
        """The ids of `text` as written: special tokens in it one id each, none added."""
        return self._tok.encode(text, add_special_tokens=False).ids
