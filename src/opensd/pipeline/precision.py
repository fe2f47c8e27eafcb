"""`--precision auto`: the compute dtype for this device and model, chosen by probes, not CPU names.

- CUDA: fp16. The VAE of SDXL-latent models overflows in fp16 (its activations pass 65504), so it
  runs in bf16 where the GPU has it and fp32 otherwise, as A1111 and ComfyUI keep it.
- CPU: bf16 where oneDNN reports bf16 support and a bf16 matrix product measurably beats fp32
  (AVX512-BF16 or AMX), for SD-size models only: the built-in 6 M-parameter model ran 1.8x slower
  in bf16 than in fp32 on an AMX CPU (per-op overhead, docs/benchmarks.md), SD 1.5's UNet 3x faster.
- Elsewhere (MPS, other CPUs): fp32.

Nothing here touches seeds: noise is drawn on the CPU in fp32 whatever the compute dtype.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import torch

from ..families import family_of
from ..models.config import ModelConfig
from .device import PRECISIONS, resolve_dtype

# A bf16 product must run at least this many times faster than fp32 to count as native bf16.
# Emulated bf16 (AVX2) is slower than fp32; AVX512-BF16 about 2x faster, AMX 10x or more.
NATIVE_SPEEDUP = 1.5
# UNet parameters from which bf16 pays on a native-bf16 CPU (SD 1.5: 860 M; built-in model: 6 M).
BF16_MIN_PARAMS = 100_000_000
SDXL_LATENT_SCALE = 0.13025


@functools.cache
def bf16_matmul_speedup() -> float:
    """fp32 time / bf16 time of a 512x512x512 matrix product on this CPU (best of 5 each)."""
    def best(a: torch.Tensor) -> float:
        a @ a  # warm-up: oneDNN builds its kernel on the first call
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            a @ a
            times.append(time.perf_counter() - t0)
        return min(times)

    a = torch.randn(512, 512, generator=torch.Generator().manual_seed(0))
    return best(a) / best(a.bfloat16())


@functools.cache
def cpu_has_native_bf16() -> bool:
    """oneDNN can run bf16 here and it is actually faster than fp32 (measured, not looked up)."""
    if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return False
    return bf16_matmul_speedup() >= NATIVE_SPEEDUP


def cuda_has_bf16() -> bool:
    return torch.cuda.is_bf16_supported()


@functools.cache
def network_params(cfg: ModelConfig) -> int:
    """Parameters of the model's denoising network (its family builds it on the meta device)."""
    return family_of(cfg).parameter_count(cfg)


@dataclass(frozen=True)
class Precision:
    """The dtypes one model runs in, and why (the line the faces print once)."""
    dtype: torch.dtype      # UNet and text encoders
    vae_dtype: torch.dtype
    why: str
    kept: str | None = None  # "bf16": the file's 16-bit Linear weights kept so, upcast per call

    def line(self, device: torch.device) -> str:
        name = {v: k for k, v in PRECISIONS.items()}
        vae = "" if self.vae_dtype == self.dtype else f", VAE {name[self.vae_dtype]}"
        kept = "" if self.kept is None else (f"; Linear weights kept in {self.kept} as the file stores them "
                                             f"(half the memory), upcast to {name[self.dtype]} per call")
        return f"running on {device} in {name[self.dtype]}{vae} ({self.why}{kept})"


def choose_precision(precision: str, device: torch.device, cfg: ModelConfig) -> Precision:
    """The dtypes for `precision` ("auto" or a name of PRECISIONS) on `device` for a model of `cfg`."""
    if precision != "auto":
        dtype = resolve_dtype(precision)
        return Precision(dtype, dtype, "--precision")
    sdxl_vae = cfg.vae.scaling_factor == SDXL_LATENT_SCALE or bool(cfg.vae.latents_mean)  # Playground's is SDXL's
    return _auto(device, sdxl_vae, network_params(cfg) >= BF16_MIN_PARAMS)


def summary(precision: str, device: torch.device) -> str:
    """One line for a server, which will load models of any family and size."""
    if precision != "auto":
        return f"running on {device} in {precision}"
    large, small = _auto(device, True, True), _auto(device, False, False)
    if large == small:
        return large.line(device)
    return f"{large.line(device)}; small models: {small.line(device).split(' in ', 1)[1]}"


def _auto(device: torch.device, sdxl_vae: bool, large: bool) -> Precision:
    if device.type == "cuda":
        if sdxl_vae:
            vae = torch.bfloat16 if cuda_has_bf16() else torch.float32
            return Precision(torch.float16, vae, "auto: fp16 on CUDA; SDXL's VAE overflows in fp16")
        return Precision(torch.float16, torch.float16, "auto: fp16 on CUDA")
    if device.type == "cpu" and cpu_has_native_bf16():
        if large:
            return Precision(torch.bfloat16, torch.bfloat16,
                             f"auto: this CPU has native bf16, a bf16 product ran "
                             f"{bf16_matmul_speedup():.0f}x faster than fp32")
        return Precision(torch.float32, torch.float32, "auto: small model, faster in fp32 even with native bf16")
    return Precision(torch.float32, torch.float32, f"auto: no faster half precision found on {device.type}")
