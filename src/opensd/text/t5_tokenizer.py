"""T5's tokenizer: a SentencePiece unigram model (`spiece.model`) run by the sentencepiece library.

The vocabulary is the user's file: diffusers folders carry it (SD3: `tokenizer_3/spiece.model`,
Flux: `tokenizer_2/spiece.model`). Ids follow T5's layout: 0 is padding, 1 is end of text.
Like transformers' T5 tokenizers, a prompt becomes its pieces, then end of text, then padding.
"""
from __future__ import annotations

from pathlib import Path

import sentencepiece

from ..errors import CheckpointError

PAD_ID = 0
EOS_ID = 1


class T5Tokenizer:
    def __init__(self, model: bytes, source: str = "T5 tokenizer"):
        """`model`: the bytes of a SentencePiece model file; `source` names it in errors."""
        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_proto=model)
        except RuntimeError as e:
            raise CheckpointError(source, f"not a SentencePiece model ({e})") from None
        if self._sp.get_piece_size() <= EOS_ID or self._sp.id_to_piece(PAD_ID) != "<pad>" \
                or self._sp.id_to_piece(EOS_ID) != "</s>":
            raise CheckpointError(source, "not a T5 vocabulary (id 0 must be <pad> and id 1 </s>)")

    @classmethod
    def from_file(cls, path: str | Path) -> T5Tokenizer:
        return cls(Path(path).read_bytes(), str(path))

    def encode(self, text: str) -> list[int]:
        """The pieces of `text`, without end of text."""
        return self._sp.encode(text)

    def __call__(self, text: str, max_length: int = 256, pad: bool = True) -> list[int]:
        """Pieces cut to leave room for end of text, end of text, then (with `pad`) padding up to
        `max_length`. SD3 pipelines use 256 tokens by default, Flux-dev 512 and Flux-schnell 256."""
        ids = self.encode(text)[:max_length - 1] + [EOS_ID]
        return ids + [PAD_ID] * (max_length - len(ids)) if pad else ids
