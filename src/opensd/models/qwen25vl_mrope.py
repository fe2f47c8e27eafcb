"""Qwen2.5-VL's multimodal rotary positions, for a prompt that holds an image (Qwen-Image-Edit's).

Each token has three positions (time, row, column). Text tokens have the same number in all three,
counting up from 0 over the real tokens; an image's merged tokens (the run of <|image_pad|> ids)
all take time = p, and row = p + their row, column = p + their column in the merged grid, p being
the position the image starts at; the text after it goes on from p + max(rows, columns). This is
transformers' get_rope_index for still images. Padding tokens keep 0 (they are masked).

The rotary angles then take their positions by channel section: of the head_dim / 2 frequencies,
the first sections[0] turn with the time position, the next sections[1] with the row, the last
sections[2] with the column (Qwen2.5-VL-7B: 16, 24, 24), in "rotate half" layout as models.qwen3.
On text alone every section has the same position, which is qwen3's plain 1-D rotary embedding.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

MROPE_SECTION = (16, 24, 24)  # Qwen2.5-VL-7B's text config rope_scaling / rope_parameters


def mrope_positions(ids: torch.Tensor, mask: torch.Tensor, image_id: int, grids: Sequence[Sequence[int]],
                    merge: int = 2) -> torch.Tensor:
    """(3, B, L) long positions for ids (B, L) with padding mask (B, L); `grids`: the (t, h, w) in
    patches of the images in the order their pads come, row after row of the batch."""
    out = torch.zeros(3, *ids.shape, dtype=torch.long)
    grids = iter(grids)
    for row, (seq, keep) in enumerate(zip(ids.tolist(), mask.bool().tolist())):
        real = [i for i, k in zip(seq, keep) if k]
        pos, p, i = [], 0, 0
        while i < len(real):
            if real[i] != image_id:
                pos.append((p, p, p))
                p, i = p + 1, i + 1
                continue
            t, h, w = next(grids)
            h, w = h // merge, w // merge
            pos += [(p + ti, p + hi, p + wi) for ti in range(t) for hi in range(h) for wi in range(w)]
            i += t * h * w
            p += max(h, w)
        if len(pos) != len(real):
            raise ValueError("the image pads do not match the image grids")
        out[:, row, torch.tensor(keep)] = torch.tensor(pos, dtype=torch.long).T
    return out


def mrope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, sections: Sequence[int] = MROPE_SECTION,
                  dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (B, L, head_dim), for positions (3, B, L); angles in fp32, then cast."""
    if sum(sections) != head_dim // 2:
        raise ValueError(f"rotary sections {tuple(sections)} must add up to head_dim / 2 = {head_dim // 2}")
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim)
    freqs = positions[..., None].float() * inv  # (3, B, L, head_dim / 2)
    angles = torch.cat([part[i % 3] for i, part in enumerate(freqs.split(list(sections), dim=-1))], dim=-1)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)
