"""--backend openvino: our UNet converted by OpenVINO equals the PyTorch path within tolerance, is
cached on disk by the weights' content (a LoRA-like in-place change converts anew, the same weights
again do not), falls back to PyTorch where the converted graph cannot follow, keeps OpenVINO's
telemetry off, and reaches the CLI and the server."""
import importlib.util
import subprocess
import sys

import numpy as np
import pytest
import torch

from opensd.library.synthetic import write_random_checkpoint
from opensd.models.config import UNetConfig
from opensd.models.unet import UNetModel
from opensd.pipeline import openvino_unet as O
from reference import randomize_

pytestmark = pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                reason='openvino is not installed (pip install "opensd[openvino]")')

SMALL = UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, transformer_depth=(1, 1),
                   transformer_depth_middle=1, context_dim=64, num_head_channels=16)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setattr(O, "CACHE", tmp_path / "ov")
    return tmp_path / "ov"


def _unet(dtype=torch.float32):
    return randomize_(UNetModel(SMALL), seed=2).eval().to(dtype)


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 4, 16, 16, generator=g), torch.tensor([900, 10]), torch.randn(2, 7, 64, generator=g)


@torch.no_grad()
def test_fp32_equals_pytorch_and_is_cached_by_the_weights(cache):
    unet = _unet()
    x, t, ctx = _inputs()
    runner = O.OpenVINOUNet(unet, bf16=False)
    torch.testing.assert_close(runner(x, t, ctx), unet(x, t, ctx), rtol=1e-4, atol=1e-5)
    assert runner.conversions == 1 and len(list(cache.iterdir())) == 1
    again = O.OpenVINOUNet(_unet(), bf16=False)  # the same weights (another process, say): read from disk
    torch.testing.assert_close(again(x, t, ctx), unet(x, t, ctx), rtol=1e-4, atol=1e-5)
    assert again.conversions == 0
    unet.out[2].weight.mul_(1.5)  # a LoRA-like patch in place: the next call converts the new weights
    torch.testing.assert_close(runner(x, t, ctx), unet(x, t, ctx), rtol=1e-4, atol=1e-5)
    assert runner.conversions == 2 and len(list(cache.iterdir())) == 2
    small = [a[:1, :, :8, :8] if a.dim() == 4 else a[:1] for a in (x, t, ctx)]  # another shape: compiled too
    torch.testing.assert_close(runner(*small), unet(*small), rtol=1e-4, atol=1e-5)
    assert runner.conversions == 2


@torch.no_grad()
def test_bf16_is_as_close_to_fp32_as_pytorchs_bf16():
    x, t, ctx = _inputs()
    want = _unet()(x, t, ctx)
    unet = _unet(torch.bfloat16)
    ours = O.OpenVINOUNet(unet, bf16=True)(x, t, ctx)
    assert ours.dtype == torch.bfloat16
    torch_err = (unet(x.bfloat16(), t, ctx.bfloat16()).float() - want).abs().max()
    ov_err = (ours.float() - want).abs().max()
    assert ov_err <= 3 * torch_err + 1e-3, (ov_err, torch_err, want.abs().max())


@torch.no_grad()
def test_calls_the_graph_cannot_follow_run_on_pytorch(cache):
    from opensd.models.conv import circular_padding

    unet = _unet()
    x, t, ctx = _inputs()
    runner = O.OpenVINOUNet(unet, bf16=False)
    with circular_padding(unet):
        assert torch.equal(runner(x, t, ctx), unet._call_impl(x, t, ctx))
    handle = unet.output_blocks[0].register_forward_pre_hook(lambda m, args: (args[0] * 0.5, *args[1:]))
    try:
        assert torch.equal(runner(x, t, ctx), unet._call_impl(x, t, ctx))
    finally:
        handle.remove()
    with torch.enable_grad():
        assert runner(x, t, ctx).requires_grad
    assert runner.conversions == 0 and not cache.exists()


def test_telemetry_stays_off():
    code = ("import sys; from opensd.pipeline.openvino_unet import _openvino; _openvino(); "
            "import openvino.tools.ovc.telemetry_utils as t; print(t.tm.__name__)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "openvino.tools.ovc.telemetry_stub", r.stderr


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("m") / "tiny.safetensors")


def test_pipeline_and_cli_backend_openvino(ckpt, tmp_path, monkeypatch, cache):
    from PIL import Image

    from opensd.pipeline.pipeline import load

    pipe = load(ckpt, precision="fp32")
    want = np.asarray(pipe.txt2img("a red apple", steps=3, seed=4)[0]).astype(int)
    O.use_openvino(pipe)
    got = np.asarray(pipe.txt2img("a red apple", steps=3, seed=4)[0]).astype(int)
    assert np.abs(got - want).max() <= 2

    env = {"OPENSD_OPENVINO_CACHE": str(cache)}

    def run(*extra):
        import os
        return subprocess.run([sys.executable, "-m", "opensd.cli", "generate", "a red apple", "-m", str(ckpt),
                               "--steps", "3", "--seed", "4", "--precision", "fp32", *extra],
                              capture_output=True, text=True, timeout=300, env={**os.environ, **env})

    out = tmp_path / "o.png"
    r = run("--backend", "openvino", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert np.abs(np.asarray(Image.open(out)).astype(int) - want).max() <= 2
    r = run("--backend", "openvino", "--compile")
    assert r.returncode == 2 and r.stderr.strip() == "opensd: error: backend: openvino cannot be combined with --compile"


def test_server_backend_openvino(ckpt, tmp_path):
    from opensd import cli
    from opensd.cli.serve import settings_from
    from opensd.server.app import ServerState

    args = cli.build_parser().parse_args(["serve", "--outputs-dir", str(tmp_path), "--backend", "openvino"])
    settings = settings_from(args)
    settings.start_worker = False
    pipe = ServerState(settings).cache.get(ckpt)
    assert isinstance(pipe.family.network(pipe.model)._compiled_call_impl, O.OpenVINOUNet)
