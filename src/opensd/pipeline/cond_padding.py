"""How one evaluation's rows (the negative prompt, then the prompt's AND parts) are brought to a
common length and split into UNet calls, as A1111's CFG denoiser does when they have different
numbers of 75-token chunks (77 positions each):

* the AND parts are padded to the longest by repeating their last token vector (A1111's
  prompt_parser.stack_conds);
* the negative against the prompt, by A1111's settings:
  - neither (its default): when the lengths differ, the negative runs in a UNet call of its own;
  - pad_cond_uncond ("Pad conds"): the shorter side gets encoded empty prompts (one per missing
    chunk) appended, and all rows run in one call;
  - pad_cond_uncond_v0 ("Pad conds v0", wins over the other): the negative repeats its last token
    vector up to the prompt's length, or is cut to it (A1111's DDIM before 1.6).

A1111 records the key when the pass's last evaluation was padded. `EMPTY_PADDING` is opensd's own
rule (every row padded with empty prompts, one call): ComfyUI's nodes and the guidance-distilled
rows use it.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .conditioning import Conditioning, pad_conditionings

SEPARATE, PAD, PAD_V0, EMPTY_PADDING = "separate", "pad", "pad_v0", "empty"
INFOTEXT_KEYS = {PAD: "Pad conds", PAD_V0: "Pad conds v0"}

# (rows, how many lead rows are negative, whether those are skipped) -> (UNet calls' rows, padded)
Layout = Callable[[Sequence[Conditioning], int, bool], tuple[list[list[Conditioning]], bool]]


def mode_of(pad_cond_uncond: bool, pad_cond_uncond_v0: bool) -> str:
    return PAD_V0 if pad_cond_uncond_v0 else PAD if pad_cond_uncond else SEPARATE


def layout(mode: str, empty: Conditioning) -> Layout:
    """The layout for `mode`; `empty` is the encoded empty prompt (one chunk)."""
    def one_call(rows, n, skipped):
        return [pad_conditionings(list(rows[n:] if skipped else rows), empty)], False

    def a1111(rows, n, skipped):
        if n != 1:  # no negative row (CFG 1), or the guidance-distilled rows: not A1111's shapes
            return one_call(rows, n, skipped)
        negative, parts = rows[0], stack_parts(rows[1:])
        padded = negative.length != parts[0].length and mode != SEPARATE
        if padded and mode == PAD_V0:
            negative = to_length(negative, parts[0].length)
        elif padded:
            negative, *parts = pad_conditionings([negative, *parts], empty)
        if skipped:
            return [parts], padded
        if negative.length != parts[0].length:
            return [[negative], parts], padded
        return [[negative, *parts]], padded

    return one_call if mode == EMPTY_PADDING else a1111


def stack_parts(parts: Sequence[Conditioning]) -> list[Conditioning]:
    """AND parts at the longest one's length, the others repeating their last token vector."""
    longest = max(p.length for p in parts)
    return [to_length(p, longest) for p in parts]


def to_length(c: Conditioning, length: int) -> Conditioning:
    """`c` cut to `length` positions, or with its last token vector repeated up to it."""
    if c.length >= length:
        return c if c.length == length else Conditioning(c.context[:, :length], c.pooled)
    tail = c.context[:, -1:].expand(-1, length - c.length, -1)
    return Conditioning(torch.cat([c.context, tail], dim=1), c.pooled)
