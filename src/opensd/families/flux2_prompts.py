"""Prompts -> FLUX.2 [klein]'s context: Qwen3's hidden states of layers 9, 18 and 27 of the
chat-templated prompt (thinking off), side by side, padded to 512 tokens, every row a token, as
diffusers' Flux2KleinPipeline encodes them.

The encoding itself is text/klein_prompts.encode_klein; this conditioner
applies A1111's prompt syntax as Z-Image's does (emphasis removed, BREAK dropped) and hands each
prompt's rows over whole."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import CheckpointError
from ..pipeline.conditioning import Conditioning
from ..text.klein_prompts import encode_klein
from .z_image_prompts import ENCODER, ZImageConditioner


class Flux2Conditioner(ZImageConditioner):
    @torch.no_grad()
    def encode_batch(self, texts: Sequence[str]) -> list[Conditioning]:
        if not texts:
            return []
        encoder = self.model.encoder(ENCODER)
        if encoder is None or self.qwen_tokenizer is None:
            raise CheckpointError(self.pipe.loaded.path, "this FLUX.2 model has no Qwen3 text encoder or tokenizer")
        distinct = list(dict.fromkeys(texts))
        context = encode_klein(encoder, self.qwen_tokenizer, [self.plain(t) for t in distinct],
                               self.config.text_length, device=self.device).float()
        index = {t: k for k, t in enumerate(distinct)}
        empty = torch.zeros(1, 0, device=self.device)
        return [Conditioning(context[index[t]:index[t] + 1], empty) for t in texts]
