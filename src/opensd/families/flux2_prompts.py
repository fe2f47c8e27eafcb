"""Prompts -> FLUX.2's context: three hidden states of the chat-templated prompt side by side,
padded to 512 tokens, every row a token, as diffusers encodes them: [klein]'s Qwen3 layers 9, 18
and 27 (Flux2KleinPipeline), [dev]'s Mistral Small 3.1 layers 10, 20 and 30 with BFL's system
message (Flux2Pipeline).

The encodings themselves are text/klein_prompts.encode_klein and text/flux2_dev_prompts.encode_dev;
this conditioner applies A1111's prompt syntax as Z-Image's does (emphasis removed, BREAK dropped)
and hands each prompt's rows over whole."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import CheckpointError
from ..pipeline.conditioning import Conditioning
from ..text.flux2_dev_prompts import encode_dev
from ..text.klein_prompts import encode_klein
from .z_image_prompts import ENCODER, ZImageConditioner

MISTRAL = "mistral3_24b"


class Flux2Conditioner(ZImageConditioner):
    def _encode(self, texts: list[str]) -> torch.Tensor:
        if self.config.mistral is not None:  # [dev]
            encoder, tokenizer = self.model.encoder(MISTRAL), self.pipe.loaded.tokenizers.get("mistral")
            if encoder is None or tokenizer is None:
                raise CheckpointError(self.pipe.loaded.path, "this FLUX.2 [dev] model has no Mistral text encoder "
                                                             "or tokenizer")
            return encode_dev(encoder, tokenizer, texts, self.config.text_length, device=self.device)
        encoder = self.model.encoder(ENCODER)
        if encoder is None or self.qwen_tokenizer is None:
            raise CheckpointError(self.pipe.loaded.path, "this FLUX.2 model has no Qwen3 text encoder or tokenizer")
        return encode_klein(encoder, self.qwen_tokenizer, texts, self.config.text_length, device=self.device)

    @torch.no_grad()
    def encode_batch(self, texts: Sequence[str]) -> list[Conditioning]:
        if not texts:
            return []
        distinct = list(dict.fromkeys(texts))
        context = self._encode([self.plain(t) for t in distinct]).float()
        index = {t: k for k, t in enumerate(distinct)}
        empty = torch.zeros(1, 0, device=self.device)
        return [Conditioning(context[index[t]:index[t] + 1], empty) for t in texts]
