"""Prompts -> Z-Image's caption features: Qwen3 hidden states of the prompt in its chat template.

As diffusers' ZImagePipeline (and ComfyUI's Z-Image text encoder) do it:

* each prompt is wrapped as one user turn of Qwen3's chat template, with the generation prompt
  and thinking enabled (Qwen3's template then adds no empty <think></think> block):
  "<|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n";
* the text is tokenized (special tokens written in the template are one id each), cut to
  `max_length` ids (512) from the end, and padded on the right;
* Qwen3 runs with the padding mask; the features are hidden state -2, the output of the
  next-to-last layer (without the final norm);
* each prompt keeps only its real tokens: a list of (tokens_i, hidden_size) tensors, the form
  ZImageTransformer2DModel takes as `cap_feats`.

diffusers pads every prompt to 512 tokens; here the batch is padded to its longest prompt only.
The real tokens come out the same: with a causal mask they never see what follows them.

Prompts are plain text handed to a language model: no A1111 prompt weighting. Emphasis, (word:1.2),
has no meaning for an LLM's hidden states (there is no per-token weight to apply; ComfyUI encodes
Z-Image prompts unweighted too), and there is no 75-token chunking or BREAK. Nothing is parsed
here; a caller that accepts A1111 syntax removes its brackets first.
"""
from __future__ import annotations

import torch

from ..errors import InvalidArgument
from .qwen_tokenizer import IM_END, IM_START, QwenTokenizer

MAX_LENGTH = 512
LAYER = -2


def chat_prompt(prompt: str, enable_thinking: bool = True) -> str:
    """The text Qwen3's chat template makes of one user message with the generation prompt; with
    thinking disabled the template also opens and closes an empty think block."""
    text = f"{IM_START}user\n{prompt}{IM_END}\n{IM_START}assistant\n"
    return text if enable_thinking else text + "<think>\n\n</think>\n\n"


@torch.no_grad()
def encode_padded(encoder, tokenizer: QwenTokenizer, prompts: list[str], max_length: int = MAX_LENGTH,
                  layer: int = LAYER, enable_thinking: bool = True,
                  device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden states (n, L, hidden_size) in the encoder's dtype, mask (n, L) bool) of `prompts`,
    templated here; L is the longest prompt's token count, its padding on the right (mask False).

    `encoder`: a Qwen3TextEncoder, or any module called as encoder(ids, mask, layer=...);
    `device`: where it runs (default: where its first parameter is)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts:
        raise InvalidArgument("no prompts to encode")
    ids, mask = tokenizer.batch([chat_prompt(p, enable_thinking) for p in prompts], max_length)
    device = device if device is not None else next(encoder.parameters()).device
    ids = torch.tensor(ids, dtype=torch.long, device=device)
    mask = torch.tensor(mask, dtype=torch.bool, device=device)
    return encoder(ids, mask, layer=layer), mask


def encode_prompts(encoder, tokenizer: QwenTokenizer, prompts: list[str], max_length: int = MAX_LENGTH,
                   layer: int = LAYER, enable_thinking: bool = True,
                   device: torch.device | None = None) -> list[torch.Tensor]:
    """One (tokens, hidden_size) tensor per prompt, its real tokens only: ZImagePipeline's
    prompt_embeds, the `cap_feats` list ZImageTransformer2DModel takes."""
    hidden, mask = encode_padded(encoder, tokenizer, prompts, max_length, layer, enable_thinking, device)
    return [h[m] for h, m in zip(hidden, mask)]
