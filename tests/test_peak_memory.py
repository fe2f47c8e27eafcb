"""A run's peak memory: on the CPU the resident peak since the run began (reset at its start, so a
large earlier allocation does not count), on CUDA torch's allocated peak."""
import subprocess
import sys

import pytest
import torch

from opensd.pipeline.peak_memory import PeakMemory


_CPU_CHECK = """
import numpy as np, torch
from opensd.pipeline.peak_memory import PeakMemory
with PeakMemory(torch.device("cpu")) as big:
    a = np.ones(64 * 2 ** 20 // 8)  # 64 MiB, touched
    del a
with PeakMemory(torch.device("cpu")) as small:
    pass
print(big.peak.bytes - small.peak.bytes, big.peak.what, big.peak.line().split(" ")[:2])
"""


def test_the_cpu_peak_is_this_runs_own():
    # In a fresh process: a test worker that freed a lot earlier may serve the 64 MiB from memory
    # still resident, and then no run's peak moves (it failed once so in a full run).
    out = subprocess.run([sys.executable, "-c", _CPU_CHECK], capture_output=True, text=True, timeout=120,
                         check=True).stdout.split(" ", 1)
    assert int(out[0]) > 48 * 2 ** 20
    assert out[1].strip() == "RAM, resident ['peak', 'memory']"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_cuda_peak_is_allocated_memory():
    with PeakMemory(torch.device("cuda")) as m:
        x = torch.empty(2 ** 28, dtype=torch.uint8, device="cuda")
        del x
    assert m.peak.bytes >= 2 ** 28 and m.peak.what == "VRAM, allocated"
