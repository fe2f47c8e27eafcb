"""Flux.1 Redux: an image prompt for Flux made of SigLIP patch tokens.

Two linears with a SiLU between map each SigLIP so400m token (1152 wide) up to three times the
text width and down to Flux's T5 context width (4096); the 729 tokens of a 384 x 384 image are then
appended to the prompt's T5 tokens. Names equal the released file's keys (``redux_up``,
``redux_down``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ReduxImageEncoder(nn.Module):
    def __init__(self, vision_width: int = 1152, text_width: int = 4096):
        super().__init__()
        self.vision_width, self.text_width = vision_width, text_width
        self.redux_up = nn.Linear(vision_width, 3 * text_width)
        self.redux_down = nn.Linear(3 * text_width, text_width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, vision_width) SigLIP last_hidden_state -> (B, N, text_width) context tokens."""
        return self.redux_down(F.silu(self.redux_up(tokens)))
