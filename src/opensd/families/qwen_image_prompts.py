"""Prompts -> Qwen-Image's context: Qwen2.5-VL-7B's last hidden states of the prompt in Qwen-Image's
template, the template's first 34 tokens dropped (text/qwen_image_prompts.py encodes them as
QwenImagePipeline.encode_prompt does).

With a reference image (Qwen-Image-Edit) the prompts are encoded with it (text/qwen_edit_prompts):
the image's tokens come first in the context, so the rows go up to `text_length` plus those. An
Edit-2509/2511 model's prompts see every reference (each at ~384x384, labelled "Picture N: "),
whose labels and tokens the rows take too.

As Z-Image's (z_image_prompts.py): the rows past each prompt's tokens are zeros up to
`text_length` (512, the pipeline's max_sequence_length), which the network masks; emphasis
brackets are removed and their weights not applied; BREAK is dropped.
"""
from __future__ import annotations

import torch

from ..errors import CheckpointError
from ..text.qwen_edit_prompts import encode_qwen_edit_prompts, image_text
from ..text.qwen_image_prompts import encode_qwen_image_prompts
from ..text.qwen_vl_image import PATCH, smart_resize
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
        images = getattr(self.pipe, "_reference_images", None) or []
        if not images:
            self._image_tokens = 0
            hidden, mask = encode_qwen_image_prompts(encoder, self.qwen_tokenizer, texts, self.config.text_length,
                                                     device=self.device)
            return hidden.float(), mask.bool()
        visual = getattr(encoder, "visual", None)
        if visual is None:
            raise CheckpointError(self.pipe.loaded.path, "Qwen-Image-Edit's reference image needs Qwen2.5-VL's vision "
                                                         "tower, which this text encoder file lacks (ComfyUI's "
                                                         "text_encoders/qwen_2.5_vl_7b*.safetensors have it)")
        plus = self.config.qwen_image.edit_plus
        pictures = list(range(1, len(images) + 1)) if plus else None
        grids = [_grid(image) for image in images[:None if plus else 1]]
        self._image_tokens = sum(len(self.qwen_tokenizer.encode(image_text(g, n)))
                                 for g, n in zip(grids, pictures or [None]))
        hidden, mask = encode_qwen_edit_prompts(encoder.transformer, visual, self.qwen_tokenizer, texts,
                                                images if plus else images[0], device=self.device, pictures=pictures)
        return hidden.float(), mask.bool()

    def context_length(self) -> int:
        """With reference images: the prompt's rows after the images' (labels, vision start, pads, end)."""
        return self.config.text_length + getattr(self, "_image_tokens", 0)


def _grid(image) -> tuple[int, int, int]:
    """The vision encoder's patch grid of a (fitted) image (the processor's smart_resize)."""
    height, width = smart_resize(image.height, image.width)
    return 1, height // PATCH, width // PATCH
