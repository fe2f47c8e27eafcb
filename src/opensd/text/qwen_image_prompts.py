"""Prompts -> Qwen-Image's text features: Qwen2.5-VL-7B's last hidden state of the prompt in Qwen-Image's
system-prompt template, as diffusers' QwenImagePipeline.encode_prompt makes them.

* each prompt is put into TEMPLATE (a system turn asking for an image description, the prompt as the
  user turn, the assistant turn opened);
* the texts are tokenized (special tokens one id each), cut to MAX_LENGTH + DROP ids (the end
  dropped) and padded to the longest (on the right, the tokenizer's side; left gives the same
  features, as transformers runs it: positions count pads in both);
* the language model runs with the padding mask; the features are its last hidden state (after the
  final norm);
* each prompt keeps its real tokens minus the first DROP (34: the system turn and "user\\n" as the
  released tokenizer cuts the template), then all are zero-padded to the longest; the mask is 1 on
  a prompt's own tokens;
* both are cut to `max_sequence_length` (1024, the pipeline's default).

diffusers hands back mask None when no prompt has padding; this always gives the mask. Prompts are
plain text for a language model: no A1111 weighting or chunking (as in qwen_prompts).
"""
from __future__ import annotations

import torch

from ..errors import InvalidArgument
from .qwen_tokenizer import QwenTokenizer

TEMPLATE = ("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, "
            "spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n"
            "<|im_start|>assistant\n")
DROP = 34  # QwenImagePipeline.prompt_template_encode_start_idx
MAX_LENGTH = 1024  # QwenImagePipeline.tokenizer_max_length and encode_prompt's max_sequence_length


@torch.no_grad()
def encode_qwen_image_prompts(encoder, tokenizer: QwenTokenizer, prompts: list[str] | str,
                              max_sequence_length: int = MAX_LENGTH, padding_side: str = "right",
                              device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (n, L, hidden_size) in the encoder's dtype, mask (n, L) long), L the longest
    prompt's token count after the template's first DROP tokens (at most max_sequence_length),
    shorter prompts zero-padded on the right.

    `encoder`: a Qwen3TextEncoder built as Qwen2 (models.qwen3.QWEN25_VL_7B), or any module called
    as encoder(ids, mask, layer=-1); `device`: where it runs (default: where its first parameter is)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts:
        raise InvalidArgument("no prompts to encode")
    if max_sequence_length < 1:
        raise InvalidArgument(f"max_sequence_length must be at least 1 (got {max_sequence_length})")
    ids, mask = tokenizer.batch([TEMPLATE.format(p) for p in prompts], MAX_LENGTH + DROP, padding_side)
    device = device if device is not None else next(encoder.parameters()).device
    ids = torch.tensor(ids, dtype=torch.long, device=device)
    mask = torch.tensor(mask, dtype=torch.bool, device=device)
    hidden = encoder(ids, mask, layer=-1)
    out, out_mask = trim_features(hidden, mask, DROP)
    return out[:, :max_sequence_length], out_mask[:, :max_sequence_length]


def trim_features(hidden: torch.Tensor, mask: torch.Tensor, drop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's real tokens (mask true) minus the first `drop`, zero-padded on the right to the
    longest: (features (n, L, C), mask (n, L) long)."""
    kept = [h[m.bool()][drop:] for h, m in zip(hidden, mask)]
    width = max(len(k) for k in kept)
    out = hidden.new_zeros(len(kept), width, hidden.shape[-1])
    out_mask = torch.zeros(len(kept), width, dtype=torch.long, device=hidden.device)
    for i, k in enumerate(kept):
        out[i, :len(k)] = k
        out_mask[i, :len(k)] = 1
    return out, out_mask
