"""Conv2d with a CPU inference fast path for small feature maps.

PyTorch runs CPU convolutions through oneDNN, which re-lays out the weights on every call. For
small outputs (batch × height × width ≤ 512: under CFG's batch of 2, maps up to 16×16, i.e. the
built-in model's whole UNet and SD's lowest levels) that overhead dominates, and the plain
im2col + GEMM kernel (`thnn_conv2d`) is faster (2–4× for 1×1 convs), while oneDNN stays faster
from 32×32 up. `bench/conv_backend.py` measures both per shape and end to end.

Training keeps oneDNN: its backward pass is much faster than the plain kernel's.

`circular_padding` is A1111's "Tiling" switch for any model built from these convolutions.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

# Largest output (batch × height × width) sent to the plain kernel.
SMALL_OUTPUT = 512


def use_plain_kernel(layer: nn.Conv2d, x: torch.Tensor) -> bool:
    """True where `layer(x)` should skip oneDNN: fp32 CPU inference on a small map, with the options
    the plain kernel supports (zero padding given as numbers, no dilation or groups)."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 4 or torch.is_grad_enabled():
        return False
    if torch.jit.is_tracing():  # a traced graph (OpenVINO's converter) knows only the standard convolution
        return False
    if layer.groups != 1 or layer.dilation != (1, 1) or layer.padding_mode != "zeros" \
            or isinstance(layer.padding, str) or layer.weight.dtype != torch.float32:
        return False
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel_size, layer.stride, layer.padding
    out_h = (x.shape[2] + 2 * ph - kh) // sh + 1
    out_w = (x.shape[3] + 2 * pw - kw) // sw + 1
    return x.shape[0] * out_h * out_w <= SMALL_OUTPUT


class Conv2d(nn.Conv2d):
    """`nn.Conv2d` (same parameters, same state-dict keys) that picks the faster CPU kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if use_plain_kernel(self, x):
            return torch.ops.aten.thnn_conv2d(x, self.weight, self.kernel_size, self.bias, self.stride,
                                              self.padding)
        return super().forward(x)


@contextmanager
def circular_padding(*modules: nn.Module, enabled: bool = True):
    """Within the block every padded Conv2d of `modules` pads circularly on both axes (A1111's
    "Tiling", which switches every Conv2d of the UNet and VAE): what leaves one edge enters at the
    opposite one, so the image tiles seamlessly. Each layer gets its own mode back on exit."""
    convs = [m for module in modules for m in module.modules()
             if enabled and isinstance(m, nn.Conv2d) and any(m.padding)]
    before = [c.padding_mode for c in convs]
    for c in convs:
        c.padding_mode = "circular"
    try:
        yield
    finally:
        for c, mode in zip(convs, before):
            c.padding_mode = mode
