"""On the CPU the pipeline keeps the UNet and the VAE in channels_last (oneDNN's faster layout for
convolutions: a 512x512 bf16 VAE decode took 0.4x the time, docs/benchmarks.md); decodes equal the
plain layout's within the precision's tolerance."""
import pytest
import torch

from opensd.library.synthetic import write_random_checkpoint
from opensd.pipeline.pipeline import load


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("m") / "tiny.safetensors")


def _conv_weights(module):
    return [m.weight for m in module.modules() if isinstance(m, torch.nn.Conv2d)]


def _decode_plain_and_channels_last(pipe, z):
    vae = pipe.model.vae
    fast = vae.decode(z.to(pipe.dtype)).float()
    vae.to(memory_format=torch.contiguous_format)
    try:
        plain = vae.decode(z.to(pipe.dtype)).float()
    finally:
        vae.to(memory_format=torch.channels_last)
    return fast, plain


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cpu_pipeline_holds_unet_and_vae_channels_last_and_decodes_as_the_plain_layout(ckpt, precision):
    pipe = load(ckpt, device="cpu", precision=precision)
    for part in (pipe.family.network(pipe.model), pipe.model.vae):
        weights = _conv_weights(part)
        assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    z = torch.randn(1, pipe.config.latent_channels, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        fast, plain = _decode_plain_and_channels_last(pipe, z)
        if precision == "fp32":
            torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)  # summation order only
        else:  # as close to fp32 as the plain bf16 layout is (other kernels, other rounding)
            pipe.model.vae.float()
            exact = pipe.model.vae.decode(z).float()
            assert (fast - exact).abs().max() <= 2 * (plain - exact).abs().max() + 1e-3
