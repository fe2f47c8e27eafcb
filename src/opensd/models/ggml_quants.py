"""GGML's quantised block formats (GGUF files: city96's ComfyUI-GGUF, stable-diffusion.cpp) turned
back into floats with torch ops, so a layer is unpacked on its own device just before it runs.

A row of a quantised tensor is a run of blocks; each block holds `block_size` weights as small
integers and one or two fp16 scales (the K-quants: 256 weights in sub-blocks with 6-bit scales
and minimums). The torch kernels below cover the types GGUF image models are shared in (Q8_0,
Q4_0/1, Q5_0/1, Q4_K, Q5_K, Q6_K); any other type gguf knows is unpacked by gguf's own numpy
code on the CPU (correct, slower). The bit layouts are ggml's (ggml-quants.c).
"""
from __future__ import annotations

from collections.abc import Callable

import gguf
import numpy as np
import torch

Q = gguf.GGMLQuantizationType
QK_K = 256


def _f16(b: torch.Tensor) -> torch.Tensor:
    """(n, 2k) little-endian fp16 bytes -> (n, k) float32."""
    return b.contiguous().view(torch.float16).float()


def _nibbles(qs: torch.Tensor, groups: int) -> torch.Tensor:
    """(n, groups * m) bytes -> (n, groups * 2m) 4-bit values: per group of m bytes, the m low
    nibbles, then the m high ones."""
    n = qs.shape[0]
    q = qs.reshape(n, groups, 1, -1) >> torch.tensor([0, 4], dtype=torch.uint8, device=qs.device).reshape(1, 1, 2, 1)
    return (q & 0x0F).reshape(n, -1)


def _bits(b: torch.Tensor, shifts: range) -> torch.Tensor:
    """(n, m) bytes -> (n, len(shifts), m): bit `s` of every byte, for each s."""
    s = torch.tensor(list(shifts), dtype=torch.uint8, device=b.device).reshape(1, -1, 1)
    return (b[:, None, :] >> s) & 1


def _q8_0(b):
    return b[:, 2:].contiguous().view(torch.int8).float() * _f16(b[:, :2])


def _q4_0(b):
    return (_nibbles(b[:, 2:], 1).float() - 8) * _f16(b[:, :2])


def _q4_1(b):
    return _nibbles(b[:, 4:], 1).float() * _f16(b[:, :2]) + _f16(b[:, 2:4])


def _five_bit(qh: torch.Tensor, qs: torch.Tensor) -> torch.Tensor:
    """Q5_0/Q5_1: 4 bytes of high bits (bit i of the little-endian word for weight i), 16 of nibbles."""
    high = _bits(qh, range(8)).transpose(1, 2).reshape(len(qh), 32)  # byte-major: weight = 8 * byte + bit
    return _nibbles(qs, 1) | (high << 4)


def _q5_0(b):
    return (_five_bit(b[:, 2:6], b[:, 6:]).float() - 16) * _f16(b[:, :2])


def _q5_1(b):
    return _five_bit(b[:, 4:8], b[:, 8:]).float() * _f16(b[:, :2]) + _f16(b[:, 2:4])


def _k_scales(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K: 12 bytes -> eight 6-bit scales and eight 6-bit minimums."""
    d, m, both = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    scales = torch.cat([d & 0x3F, (both & 0x0F) | ((d >> 2) & 0x30)], dim=1)
    mins = torch.cat([m & 0x3F, (both >> 4) | ((m >> 2) & 0x30)], dim=1)
    return scales.float(), mins.float()


def _q4_k(b):
    n = len(b)
    sc, mn = _k_scales(b[:, 4:16])
    q = _nibbles(b[:, 16:], 4).reshape(n, 8, 32).float()
    return ((_f16(b[:, :2]) * sc)[..., None] * q - (_f16(b[:, 2:4]) * mn)[..., None]).reshape(n, QK_K)


def _q5_k(b):
    n = len(b)
    sc, mn = _k_scales(b[:, 4:16])
    high = _bits(b[:, 16:48], range(8))  # (n, 8 sub-blocks, 32)
    q = (_nibbles(b[:, 48:], 4).reshape(n, 8, 32) | (high << 4)).float()
    return ((_f16(b[:, :2]) * sc)[..., None] * q - (_f16(b[:, 2:4]) * mn)[..., None]).reshape(n, QK_K)


def _q6_k(b):
    n = len(b)
    low = _nibbles(b[:, :128], 2).reshape(n, 8, 32)
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=b.device).reshape(1, 1, 4, 1)
    high = ((b[:, 128:192].reshape(n, 2, 1, 32) >> shifts) & 3).reshape(n, 8, 32)
    q = ((low | (high << 4)).to(torch.int16) - 32).reshape(n, 16, 16).float()
    scales = b[:, 192:208].contiguous().view(torch.int8).float()
    return ((_f16(b[:, 208:210]) * scales)[..., None] * q).reshape(n, QK_K)


KERNELS: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {
    Q.Q8_0: _q8_0, Q.Q4_0: _q4_0, Q.Q4_1: _q4_1, Q.Q5_0: _q5_0, Q.Q5_1: _q5_1,
    Q.Q4_K: _q4_k, Q.Q5_K: _q5_k, Q.Q6_K: _q6_k,
}


def type_name(qtype: int) -> str:
    return Q(qtype).name


def dequantize(data: torch.Tensor, qtype: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """`data` (uint8 rows of blocks, as GGUF stores them) -> a `dtype` tensor of `shape`, on data's device."""
    block, size = gguf.GGML_QUANT_SIZES[Q(qtype)]
    kernel = KERNELS.get(qtype)
    if kernel is None:
        raw = np.ascontiguousarray(data.cpu().numpy())
        floats = torch.from_numpy(gguf.quants.dequantize(raw, Q(qtype)).astype(np.float32, copy=False))
        return floats.reshape(shape).to(data.device, dtype)
    return kernel(data.reshape(-1, size)).reshape(shape).to(dtype)
