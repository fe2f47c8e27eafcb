"""--device auto / --precision auto: the choice is what the probes say, and it never changes seeds."""
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from opensd.library.synthetic import TINY, write_random_checkpoint
from opensd.models import config as C
from opensd.pipeline import precision as P
from opensd.pipeline.pipeline import load

CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda"), torch.device("mps")


@pytest.fixture
def probes(monkeypatch):
    """Set what the hardware probes answer."""
    def set_(native_bf16=False, cuda_bf16=False):
        monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: native_bf16)
        monkeypatch.setattr(P, "cuda_has_bf16", lambda: cuda_bf16)
        monkeypatch.setattr(P, "bf16_matmul_speedup", lambda: 9.0)
    return set_


@pytest.mark.parametrize("native", [True, False])
def test_cpu_auto_is_bf16_exactly_when_the_probe_finds_native_bf16_for_sd_size_models(probes, native):
    probes(native_bf16=native)
    sd15 = P.choose_precision("auto", CPU, C.sd1())
    want = torch.bfloat16 if native else torch.float32
    assert (sd15.dtype, sd15.vae_dtype) == (want, want)
    # The built-in-size model stays in fp32: bf16 measured slower for it even on a native-bf16 CPU.
    small = P.choose_precision("auto", CPU, TINY)
    assert (small.dtype, small.vae_dtype) == (torch.float32, torch.float32)
    assert ("9x faster" in sd15.why) == native


@pytest.mark.parametrize("cuda_bf16,sdxl_vae", [(True, torch.bfloat16), (False, torch.float32)])
def test_cuda_auto_is_fp16_with_sdxl_vae_kept_out_of_fp16(probes, cuda_bf16, sdxl_vae):
    probes(native_bf16=True, cuda_bf16=cuda_bf16)
    assert P.choose_precision("auto", CUDA, C.sd1()) == P.Precision(torch.float16, torch.float16,
                                                                    "auto: fp16 on CUDA")
    xl = P.choose_precision("auto", CUDA, C.sdxl())
    assert (xl.dtype, xl.vae_dtype) == (torch.float16, sdxl_vae)
    # Playground v2.5 runs SDXL's VAE under another latent scale (0.5, per-channel statistics)
    playground = replace(C.sdxl(), vae=replace(C.sdxl().vae, scaling_factor=0.5, latents_mean=(0.0,) * 4,
                                               latents_std=(1.0,) * 4))
    assert P.choose_precision("auto", CUDA, playground).vae_dtype == sdxl_vae


def test_mps_auto_and_explicit_names(probes):
    probes(native_bf16=True, cuda_bf16=True)
    assert P.choose_precision("auto", MPS, C.sd1()).dtype == torch.float32
    explicit = P.choose_precision("fp16", CPU, C.sd1())
    assert (explicit.dtype, explicit.vae_dtype) == (torch.float16, torch.float16)
    with pytest.raises(Exception, match="^precision: 'fp8' is not one of auto, fp32"):
        P.choose_precision("fp8", CPU, C.sd1())


@pytest.mark.parametrize("mkldnn_bf16,speedup,native", [(True, 9.0, True), (True, 0.7, False),
                                                         (False, 9.0, False)])
def test_native_bf16_needs_onednn_support_and_a_measured_speedup(monkeypatch, mkldnn_bf16, speedup, native):
    monkeypatch.setattr(P, "bf16_matmul_speedup", lambda: speedup)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: mkldnn_bf16)
    P.cpu_has_native_bf16.cache_clear()
    try:
        assert P.cpu_has_native_bf16() is native
    finally:
        P.cpu_has_native_bf16.cache_clear()


def test_the_real_probe_is_a_positive_ratio():
    assert P.bf16_matmul_speedup() > 0


def test_server_summary_names_both_model_sizes(probes):
    probes(native_bf16=True)
    line = P.summary("auto", CPU)
    assert line.startswith("running on cpu in bf16") and "small models: fp32" in line
    probes(native_bf16=False)
    assert P.summary("auto", CPU).startswith("running on cpu in fp32 (auto")
    assert P.summary("bf16", CPU) == "running on cpu in bf16"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("m") / "tiny.safetensors")


def _px(pipe, seed=3):
    return np.asarray(pipe.txt2img("a red apple", "blurry", steps=3, seed=seed)[0]).astype(np.int16)


def test_auto_precision_loads_the_chosen_dtypes_and_same_seed_gives_the_same_image(ckpt, probes, monkeypatch):
    monkeypatch.setattr(P, "BF16_MIN_PARAMS", 0)  # the tiny test model counts as SD-size here
    probes(native_bf16=True)
    auto = load(ckpt, device="auto", precision="auto")
    assert auto.device == CPU and auto.dtype == torch.bfloat16 and auto.precision.dtype == torch.bfloat16
    assert {p.dtype for p in auto.model.parameters()} == {torch.bfloat16}
    assert "in bf16 (auto: this CPU has native bf16" in auto.precision.line(auto.device)
    explicit = load(ckpt, precision="bf16")
    assert np.array_equal(_px(auto), _px(explicit))  # auto is exactly the explicit choice
    assert np.array_equal(_px(auto), _px(auto))      # and reproducible
    fp32 = load(ckpt, precision="fp32")
    # The noise is drawn on the CPU in fp32 whatever the dtype: the images differ by rounding only.
    assert torch.equal(auto.noise([3], 8, 8), fp32.noise([3], 8, 8))
    diff = np.abs(_px(auto) - _px(fp32))
    assert diff.mean() < 4 and np.percentile(diff, 99) < 24, (diff.mean(), diff.max())
    probes(native_bf16=False)
    assert load(ckpt).dtype == torch.float32


def test_cli_prints_the_choice_once(ckpt, tmp_path):
    r = subprocess.run([sys.executable, "-m", "opensd.cli", "generate", "x", "--model", str(ckpt), "--steps", "2",
                        "--seed", "1", "--batch", "2", "-o", str(tmp_path / "a.png")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if "running on" in line]
    assert len(lines) == 1 and lines[0].startswith("opensd: running on cpu in fp32 (auto:"), r.stderr
