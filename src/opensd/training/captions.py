"""Caption augmentation as kohya sd-scripts does it: the whole caption dropped with
`dropout_rate` (the model also learns the unconditional case); otherwise its comma-separated tags
after the first `keep_tokens` are each dropped with `tag_dropout_rate` and, with `shuffle`, put in
a random order, so no tag owes its effect to its position. Random draws come from the batch's own
generator, so a resumed run sees the captions an uninterrupted one would."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CaptionOptions:
    shuffle: bool = False
    keep_tokens: int = 0
    dropout_rate: float = 0.0
    tag_dropout_rate: float = 0.0

    @property
    def active(self) -> bool:
        return self.shuffle or self.dropout_rate > 0 or self.tag_dropout_rate > 0


def process_caption(caption: str, opts: CaptionOptions, g: torch.Generator) -> str:
    if opts.dropout_rate > 0 and torch.rand(1, generator=g).item() < opts.dropout_rate:
        return ""
    if not (opts.shuffle or opts.tag_dropout_rate > 0):
        return caption
    tags = [t.strip() for t in caption.strip().split(",")]
    fixed, free = tags[:opts.keep_tokens], tags[opts.keep_tokens:]
    if opts.shuffle:
        free = [free[i] for i in torch.randperm(len(free), generator=g).tolist()]
    if opts.tag_dropout_rate > 0:
        keep = (torch.rand(len(free), generator=g) >= opts.tag_dropout_rate).tolist()
        free = [t for t, k in zip(free, keep) if k]
    return ", ".join(fixed + free)
