"""Prompts -> FLUX.2 [dev]'s text features: three Mistral Small 3.1 hidden states per token, side by side.

As diffusers' Flux2Pipeline.encode_prompt does it:

* each prompt (any "[IMG]" in it removed) is the user turn of a conversation whose system turn is
  BFL's fixed system message; Mistral Small 3.1's chat template, without a generation prompt, makes
  "<s>[SYSTEM_PROMPT]{system}[/SYSTEM_PROMPT][INST]{prompt}[/INST]" of it;
* it is tokenized (special tokens one id each, none added), cut to `max_length` ids (512; the end
  dropped) and padded to exactly `max_length` with the tokenizer's pad token, on its padding side;
* Mistral runs with the padding mask, every row kept: the transformer gets all `max_length` rows,
  unmasked;
* the features are hidden states 10, 20 and 30 (transformers' numbering: the outputs of layers 10,
  20 and 30, no final norm), concatenated per token: (n, max_length, 3 * 5120), layer 10's first.

ComfyUI's FLUX.2 [dev] text encoder does not pad its prompts; this follows diffusers.
"""
from __future__ import annotations

import torch

from .klein_prompts import stacked_states
from .mistral_tokenizer import BOS, INST, INST_END, SYSTEM, SYSTEM_END, MistralTokenizer

MAX_LENGTH = 512
LAYERS = (10, 20, 30)
# BFL's system message for FLUX.2 [dev] (diffusers' flux2/system_messages.py SYSTEM_MESSAGE), line break included
SYSTEM_MESSAGE = ("You are an AI that reasons about image descriptions. You give structured responses focusing on "
                  "object relationships, object\nattribution and actions without speculation.")


def chat_prompt(prompt: str, system: str = SYSTEM_MESSAGE) -> str:
    """The text Mistral Small 3.1's chat template makes of the system message and one user message."""
    return f"{BOS}{SYSTEM}{system}{SYSTEM_END}{INST}{prompt.replace('[IMG]', '')}{INST_END}"


@torch.no_grad()
def encode_dev(encoder, tokenizer: MistralTokenizer, prompts: list[str], max_length: int = MAX_LENGTH,
               layers: tuple[int, ...] = LAYERS, device: torch.device | None = None) -> torch.Tensor:
    """(n, max_length, len(layers) * hidden_size) features of `prompts` (templated here) in the
    encoder's dtype: diffusers' Flux2Pipeline prompt_embeds.

    `encoder`: a Qwen3TextEncoder built as Mistral (keymap_mistral.mistral_config), or any module
    called as encoder(ids, mask, layer=(i, j, ...)); `device`: where it runs (default: its own)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    return stacked_states(encoder, tokenizer, [chat_prompt(p) for p in prompts], max_length, layers, device,
                          tokenizer.padding_side)
