"""ControlNet Union (xinsir's ControlNet++): one ControlNet for several kinds of control image,
told which kind by a control type index.

Two additions to a plain ControlNet, with the attribute names of xinsir's files:
- `control_add_embedding` (linear_1, linear_2): the control type as a one-hot vector, each entry
  embedded like a timestep (cosines first), concatenated and passed through an MLP; the result is
  added to the time embedding. With no type chosen the vector is all zeros (ComfyUI's "auto").
- with a type chosen, the encoded control image is shifted per channel: its spatial mean plus the
  type's `task_embedding` row is a token, passed through `transformer_layes` (CLIP-style residual
  attention blocks) and `spatial_ch_projs` (a linear layer) to a per-channel offset. Without a type
  the encoded image is used as it is.

One control image per call. The tokens attend within each sample (xinsir's reference code runs its
attention over the batch axis by accident; for one sample the two agree).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .clip import PackedQKVAttention
from .unet import timestep_embedding


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class TaskBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = PackedQKVAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(width, 4 * width), gelu=QuickGELU(),
                                             c_proj=nn.Linear(4 * width, width)))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class ControlTypeEmbedding(nn.Module):
    def __init__(self, types: int, type_dim: int, emb_dim: int):
        super().__init__()
        self.types, self.type_dim = types, type_dim
        self.linear_1 = nn.Linear(types * type_dim, emb_dim)
        self.linear_2 = nn.Linear(emb_dim, emb_dim)

    def forward(self, control_type: int | None, batch: int, dtype: torch.dtype) -> torch.Tensor:
        onehot = torch.zeros(self.types, device=self.linear_1.weight.device)
        if control_type is not None:
            onehot[control_type] = 1.0
        flat = timestep_embedding(onehot, self.type_dim).reshape(1, -1).to(dtype)
        return self.linear_2(F.silu(self.linear_1(flat))).expand(batch, -1)


def add_union(model: nn.Module, types: int, width: int, heads: int, layers: int, type_dim: int,
              channels: int, emb_dim: int) -> None:
    """Give `model` the union modules (xinsir's names); `channels`: the encoded image's channels."""
    model.task_embedding = nn.Parameter(torch.randn(types, width) * width ** 0.5)
    model.transformer_layes = nn.Sequential(*[TaskBlock(width, heads) for _ in range(layers)])
    model.spatial_ch_projs = nn.Linear(width, channels)
    nn.init.zeros_(model.spatial_ch_projs.weight)  # a fresh one starts as a no-op, as the paper's zero convs
    nn.init.zeros_(model.spatial_ch_projs.bias)
    model.control_add_embedding = ControlTypeEmbedding(types, type_dim, emb_dim)


def fuse(model: nn.Module, guided: torch.Tensor, control_type: int) -> torch.Tensor:
    """The encoded control image shifted per channel by its type's token."""
    token = guided.mean(dim=(2, 3)) + model.task_embedding[control_type].to(guided.dtype)
    token = model.transformer_layes(token[:, None])[:, 0]
    return guided + model.spatial_ch_projs(token)[:, :, None, None]
