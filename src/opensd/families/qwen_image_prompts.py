"""Prompts -> Qwen-Image's context: Qwen2.5-VL-7B's last hidden states of the prompt in Qwen-Image's
template, the template's first 34 tokens dropped (text/qwen_image_prompts.py encodes them as
QwenImagePipeline.encode_prompt does).

As Z-Image's (z_image_prompts.py): the rows past each prompt's tokens are zeros up to
`text_length` (512, the pipeline's max_sequence_length), which the network masks; emphasis
brackets are removed and their weights not applied; BREAK is dropped.
"""
from __future__ import annotations

import torch

from ..errors import CheckpointError
from ..text.qwen_image_prompts import encode_qwen_image_prompts
from .z_image_prompts import ZImageConditioner

ENCODER = "qwen25_7b"


class QwenImageConditioner(ZImageConditioner):
    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(last hidden states (n, L, 3584) float32, mask (n, L) bool) of `texts`, L the longest
        one's tokens after the template's."""
        encoder = self.model.encoder(ENCODER)
        if encoder is None or self.qwen_tokenizer is None:
            raise CheckpointError(self.pipe.loaded.path, "this Qwen-Image model has no Qwen2.5-VL text encoder or "
                                                         "tokenizer")
        hidden, mask = encode_qwen_image_prompts(encoder, self.qwen_tokenizer, texts, self.config.text_length,
                                                 device=self.device)
        return hidden.float(), mask.bool()
