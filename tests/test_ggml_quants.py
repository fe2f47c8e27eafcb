"""Our torch kernels for GGML's block formats unpack exactly what gguf's own (numpy) code does, on
blocks gguf quantises (Q8_0, Q4_0/1, Q5_0/1) and on random blocks of the K-quants (which gguf
reads but cannot write); a type without a torch kernel goes through gguf's code."""
import gguf
import numpy as np
import pytest
import torch

from opensd.models.ggml_quants import KERNELS, dequantize

Q = gguf.GGMLQuantizationType


def random_blocks(qtype, rows: int, cols: int, seed: int = 0, scale=(0.001, 0.01)) -> np.ndarray:
    """Random bytes in `qtype`'s layout, with every fp16 scale drawn from `scale`."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(rows * cols // block, size), dtype=np.uint8)
    scales = {Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,), Q.Q2_K: (80, 82), Q.Q3_K: (108,)}[qtype]
    for at in scales:
        raw[:, at:at + 2] = rng.uniform(*scale, size=(len(raw), 1)).astype(np.float16).view(np.uint8)
    return raw.reshape(rows, -1)


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1])
def test_kernels_unpack_what_gguf_quantised(qtype):
    w = np.random.default_rng(1).standard_normal((8, 512)).astype(np.float32)
    data = gguf.quants.quantize(w, qtype)
    want = gguf.quants.dequantize(data, qtype)
    got = dequantize(torch.from_numpy(data), qtype, (8, 512), torch.float32)
    assert np.array_equal(got.numpy(), want)
    assert np.abs(want - w).max() < {Q.Q8_0: 0.03}.get(qtype, 0.5)  # it is the weights, quantised


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q5_K, Q.Q6_K])
def test_k_quant_kernels_unpack_as_gguf_does(qtype):
    data = random_blocks(qtype, 4, 512)
    got = dequantize(torch.from_numpy(data), qtype, (4, 512), torch.float32)
    assert np.array_equal(got.numpy(), gguf.quants.dequantize(data, qtype))
    assert got.abs().max() > 0


def test_other_types_go_through_gguf():
    assert Q.Q3_K not in KERNELS
    data = random_blocks(Q.Q3_K, 2, 256)
    got = dequantize(torch.from_numpy(data), Q.Q3_K, (2, 256), torch.bfloat16)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, torch.from_numpy(gguf.quants.dequantize(data, Q.Q3_K)).bfloat16())
