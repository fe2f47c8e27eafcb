"""A run's peak memory: on the CPU the resident peak since the run began (reset at its start, so a
large earlier allocation does not count), on CUDA torch's allocated peak."""
import numpy as np
import pytest
import torch

from opensd.pipeline.peak_memory import PeakMemory


def test_the_cpu_peak_is_this_runs_own():
    with PeakMemory(torch.device("cpu")) as big:
        a = np.ones(64 * 2 ** 20 // 8)  # 64 MiB, touched
        del a
    with PeakMemory(torch.device("cpu")) as small:
        pass
    assert big.peak.bytes - small.peak.bytes > 48 * 2 ** 20
    assert big.peak.what == "RAM, resident" and big.peak.line().startswith("peak memory ")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_cuda_peak_is_allocated_memory():
    with PeakMemory(torch.device("cuda")) as m:
        x = torch.empty(2 ** 28, dtype=torch.uint8, device="cuda")
        del x
    assert m.peak.bytes >= 2 ** 28 and m.peak.what == "VRAM, allocated"
