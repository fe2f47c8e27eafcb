"""DeepCache: full calls are the plain UNet exactly, cached calls run only the shallow blocks on the
kept deep features (exactly the full result when those features are current), and a new sampling
run never reuses the last one's features."""
import pytest
import torch

from opensd.library.synthetic import TINY
from opensd.models.deep_cache import DeepCache, enable_deep_cache
from opensd.models.unet import UNetModel
from reference import randomize_


def _unet():
    return randomize_(UNetModel(TINY.unet), seed=4).eval()


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 7, 64, generator=g)


@torch.no_grad()
def test_full_calls_equal_the_plain_unet_and_cached_calls_are_shallow():
    plain, cached = _unet(), _unet()
    cache = enable_deep_cache(cached, interval=3)
    x, ctx = _inputs()
    outs = []
    for i, t in enumerate([900, 800, 700, 600, 500]):
        ts = torch.tensor([t, t])
        outs.append((cached(x * (1 - i / 10), ts, ctx), plain(x * (1 - i / 10), ts, ctx)))
    full = [0, 3]  # every third call runs the whole UNet
    for i, (a, b) in enumerate(outs):
        assert torch.equal(a, b) == (i in full), i
    assert all((a - b).abs().max() < b.abs().max() for a, b in outs)  # cached calls stay close
    # a new run (the timestep rises again): a full call, even within the interval
    again = cached(x, torch.tensor([900, 900]), ctx)
    assert torch.equal(again, plain(x, torch.tensor([900, 900]), ctx)) and cache.calls == 0


@torch.no_grad()
def test_shallow_path_is_exact_on_current_deep_features():
    unet = _unet()
    cache = DeepCache(unet, interval=2, depth=2)
    x, ctx = _inputs()
    t = torch.tensor([500, 500])
    full = cache.forward(x, t, ctx)  # records the deep features of exactly these inputs
    torch.testing.assert_close(cache._shallow(x, t, ctx, None), full, rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_controlnet_residuals_and_bad_settings():
    unet = _unet()
    cache = DeepCache(unet, interval=10)
    x, ctx = _inputs()
    cache.forward(x, torch.tensor([900, 900]), ctx)
    residuals = [torch.zeros(1)] * (len(unet.input_blocks) + 1)
    cache.forward(x, torch.tensor([800, 800]), ctx, control=residuals)
    assert cache.calls == 0  # residuals change the deep features: a full call
    with pytest.raises(ValueError, match="deep cache"):
        DeepCache(unet, interval=0)


def test_cli_deep_cache(tmp_path, capsys):
    # in this process: `python -m opensd.cli`'s own exit statuses are tested elsewhere (test_cli_errors),
    # and a new process costs a torch import (seconds on a busy 2-core machine) for each run
    from opensd.cli import main
    from opensd.library.synthetic import write_random_checkpoint

    ckpt = write_random_checkpoint(tmp_path / "tiny.safetensors")

    def run(*extra):
        code = main(["generate", "x", "--model", str(ckpt), "--steps", "4", "-o", str(tmp_path / "a.png"), *extra])
        return code, capsys.readouterr().err

    code, err = run("--deep-cache", "3")
    assert code == 0 and (tmp_path / "a.png").is_file(), err
    code, err = run("--deep-cache", "1")
    assert code == 2 and err.strip() == "opensd: error: deep-cache: 1 must be 2 or more"
    code, err = run("--deep-cache", "3", "--compile")
    assert code == 2 and "deep-cache: cannot be combined with --compile" in err
