"""Prompts -> FLUX.2 [klein]'s text features: three Qwen3 hidden states per token, side by side.

As diffusers' Flux2KleinPipeline.encode_prompt does it:

* each prompt is one user turn of Qwen3's chat template with the generation prompt and thinking
  disabled, so the text ends in an empty think block:
  "<|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n";
* it is tokenized, cut to `max_length` ids (512) from the end, and padded on the right with
  <|endoftext|> to exactly `max_length` (every prompt, not only to the longest);
* Qwen3 (Qwen3-4B for klein 4B, Qwen3-8B for klein 9B) runs with the padding mask: no token
  attends to a padding token, but the padding rows are computed like any other (each sees the
  real tokens before it) and are kept: the transformer gets all `max_length` rows, unmasked;
* the features are hidden states 9, 18 and 27 (transformers' numbering: the outputs of layers
  9, 18 and 27, no final norm), concatenated per token: (n, max_length, 3 * hidden_size), layer 9's
  channels first. Layers after 27 do not run.

The text's position ids for the transformer's rotary embedding are (t, h, w, l) = (0, 0, 0, index).

ComfyUI's klein tokenizer pads to at least 512 tokens but does not cut longer prompts; this follows
diffusers (cut at 512). Prompts are plain text: no A1111 weighting (ComfyUI disables it for klein).
"""
from __future__ import annotations

import torch

from ..errors import InvalidArgument
from .qwen_prompts import chat_prompt
from .qwen_tokenizer import QwenTokenizer

MAX_LENGTH = 512
LAYERS = (9, 18, 27)


@torch.no_grad()
def encode_klein(encoder, tokenizer: QwenTokenizer, prompts: list[str], max_length: int = MAX_LENGTH,
                 layers: tuple[int, ...] = LAYERS, device: torch.device | None = None) -> torch.Tensor:
    """(n, max_length, len(layers) * hidden_size) features of `prompts` (templated here) in the
    encoder's dtype: diffusers' Flux2KleinPipeline prompt_embeds.

    `encoder`: a Qwen3TextEncoder, or any module called as encoder(ids, mask, layer=(i, j, ...))
    returning those hidden states; `device`: where it runs (default: where its first parameter is)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    return stacked_states(encoder, tokenizer, [chat_prompt(p, enable_thinking=False) for p in prompts], max_length,
                          layers, device)


@torch.no_grad()
def stacked_states(encoder, tokenizer: QwenTokenizer, texts: list[str], max_length: int, layers: tuple[int, ...],
                   device: torch.device | None = None, padding_side: str = "right") -> torch.Tensor:
    """(n, max_length, len(layers) * hidden_size): the hidden states `layers` of `texts` (templated
    already), each cut and padded to exactly `max_length` tokens on `padding_side`, side by side per
    token (the first layer's channels first); every row kept (FLUX.2's text features)."""
    if not texts:
        raise InvalidArgument("no prompts to encode")
    ids, mask = tokenizer.batch(texts, max_length, padding_side, pad_to=max_length)
    device = device if device is not None else next(encoder.parameters()).device
    ids = torch.tensor(ids, dtype=torch.long, device=device)
    mask = torch.tensor(mask, dtype=torch.bool, device=device)
    states = encoder(ids, mask, layer=tuple(layers))
    return torch.stack(states, dim=2).flatten(2)


def text_ids(length: int, batch: int = 1, device: torch.device | None = None) -> torch.Tensor:
    """(batch, length, 4) rotary position ids of the text tokens: (0, 0, 0, index), as
    Flux2KleinPipeline's _prepare_text_ids makes them."""
    ids = torch.zeros(length, 4, dtype=torch.long, device=device)
    ids[:, 3] = torch.arange(length, device=device)
    return ids.expand(batch, length, 4)
