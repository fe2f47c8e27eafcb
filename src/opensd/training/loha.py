"""A LoHa adapter (LyCORIS): the weight update is the element-wise product of two low-rank
products, dW = (w1_a @ w1_b) * (w2_a @ w2_b) * alpha / rank, which reaches a higher rank than a
LoRA of the same size. Saved under LyCORIS' key names (`hada_w1_a`, `hada_w1_b`, `hada_w2_a`,
`hada_w2_b`, `alpha`), a conv's `w1_b`/`w2_b` flattened to (rank, in * kh * kw) as LyCORIS stores
them without Tucker cores; our LoRA loader (adapters/lora_files.py) reads that layout.

Initialised as LyCORIS does: the b factors normal (std 1), w1_a small, w2_a zero, so the update
starts at exactly zero and training starts from the base model.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LohaLayer(nn.Module):
    def __init__(self, target: nn.Module, rank: int, alpha: float):
        super().__init__()
        if not isinstance(target, (nn.Linear, nn.Conv2d)):
            raise TypeError(f"cannot put a LoHa on {type(target).__name__}")
        out_dim, fan_in = target.weight.shape[0], target.weight[0].numel()
        dev = target.weight.device
        self.hada_w1_a = nn.Parameter(torch.randn(out_dim, rank, device=dev) * 0.1)
        self.hada_w1_b = nn.Parameter(torch.randn(rank, fan_in, device=dev))
        self.hada_w2_a = nn.Parameter(torch.zeros(out_dim, rank, device=dev))
        self.hada_w2_b = nn.Parameter(torch.randn(rank, fan_in, device=dev))
        self.register_buffer("alpha", torch.tensor(float(alpha), device=dev))
        self.rank = rank
        self.__dict__["target"] = target  # not registered: the base weights are not the adapter's

    def delta(self) -> torch.Tensor:
        dw = (self.hada_w1_a @ self.hada_w1_b) * (self.hada_w2_a @ self.hada_w2_b) * (float(self.alpha) / self.rank)
        return dw.reshape(self.target.weight.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dw = self.delta()
        x = x.to(dw.dtype)
        t = self.target
        if isinstance(t, nn.Linear):
            return F.linear(x, dw)
        return F.conv2d(x, dw, None, t.stride, t.padding, t.dilation, t.groups)

    def saved(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        names = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha")
        return {n: getattr(self, n).detach().to("cpu", dtype).contiguous() for n in names}
