"""Run a benchmark as if on an older CPU: PyTorch, oneDNN and MKL limited to one instruction set.

An AVX-512/AMX machine stands in for an AVX2-only one when all three kernel libraries are held to
AVX2: ATen's own vectorised kernels (ATEN_CPU_CAPABILITY), oneDNN's convolutions and bf16/linear
kernels (ONEDNN_MAX_CPU_ISA) and MKL's fp32 GEMMs behind matmul and linear (MKL_ENABLE_INSTRUCTIONS).
Each library reads its variable once, when it loads, so the limit is applied by re-running the
script under them (`limit`), and `report` asks each library what it actually used.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

ISAS = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}}

# A convolution and an fp32 matmul: one kernel from oneDNN and one from MKL, each printing its ISA.
_PROBE = ("import torch; torch.nn.functional.conv2d(torch.randn(1, 64, 32, 32), torch.randn(64, 64, 3, 3)); "
          "a = torch.randn(64, 64); a @ a; print('capability', torch.backends.cpu.get_cpu_capability())")


def limit(isa: str | None) -> None:
    """Re-run this process under `isa`'s limits unless they are already set (None: no limit)."""
    if isa is None:
        return
    env = ISAS[isa]
    if all(os.environ.get(k) == v for k, v in env.items()):
        return
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **env})


def report() -> str:
    """What ATen, oneDNN and MKL run here under this process's environment, from their own words."""
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True,
                         env={**os.environ, "ONEDNN_VERBOSE": "1", "MKL_VERBOSE": "1"})
    text = out.stdout + out.stderr
    aten = re.search(r"^capability (\S+)", text, re.M)
    onednn = re.search(r"onednn_verbose,.*?,cpu,isa:([^\n]+)", text)
    mkl = re.search(r"MKL_VERBOSE oneMKL.*?architecture (.+?)(?: enabled processors)?, Lnx", text)
    return (f"ATen {aten.group(1) if aten else 'unknown'}, oneDNN {onednn.group(1).strip() if onednn else 'unknown'}, "
            f"MKL {mkl.group(1) if mkl else 'unknown'}")


def env_line(isa: str | None) -> str:
    """The environment a reader sets to reproduce `isa`'s limit by hand."""
    return " ".join(f"{k}={v}" for k, v in ISAS[isa].items()) if isa else ""
