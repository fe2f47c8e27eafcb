"""Tiled VAE: the tiles cover the image, the blend is seamless, and the result equals the untiled
VAE within tolerance on small images; the pipeline tiles above a size or when asked."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from opensd.library.synthetic import write_random_checkpoint
from opensd.models.config import VAEConfig
from opensd.models.vae import AutoencoderKL
from opensd.models.vae_tiled import tile_starts, tiled
from opensd.pipeline import vae_codec
from opensd.pipeline.pipeline import load
from reference import randomize_


@pytest.mark.parametrize("size,tile,overlap", [(40, 24, 8), (48, 24, 8), (100, 64, 16), (64, 64, 16),
                                               (20, 64, 16), (65, 32, 8)])
def test_tiles_cover_the_axis_with_at_least_the_overlap(size, tile, overlap):
    starts = tile_starts(size, tile, overlap)
    assert starts[0] == 0 and starts[-1] + min(tile, size) == size
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


@pytest.mark.parametrize("scale,align", [(8, 1), (1 / 8, 8)])
def test_blend_is_seamless_for_a_function_without_context(scale, align):
    """For a per-pixel function (no context, no statistics) the tiled result is the untiled one."""
    x = torch.randn(2, 3, 48, 40) if scale > 1 else torch.randn(2, 3, 384, 320)

    def fn(t):
        t = torch.tanh(t * 2) + t.square()
        return F.interpolate(t, scale_factor=scale, mode="nearest" if scale > 1 else "area")

    tile, overlap = (24, 8) if scale > 1 else (192, 64)
    torch.testing.assert_close(tiled(fn, x, tile=tile, overlap=overlap, scale=scale, align=align), fn(x),
                               rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def vae():
    cfg = VAEConfig(ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=1)
    return randomize_(AutoencoderKL(cfg), seed=1, std=0.05).eval()


@torch.no_grad()
def test_tiled_decode_equals_untiled_within_tolerance(vae):
    z = torch.randn(1, 4, 48, 56, generator=torch.Generator().manual_seed(0))
    full = vae.decode(z)
    tiles = tiled(vae.decode, z, tile=40, overlap=16, scale=8)
    err = (tiles - full).abs()
    # Differences come from per-tile GroupNorm statistics and tile-local attention, not from seams;
    # in 8-bit pixels (range 2 -> 255) about 2.6 levels on average on this random VAE.
    assert err.mean() < 0.03, (err.mean(), full.abs().mean())
    assert err.max() < 0.5, err.max()


@torch.no_grad()
def test_tiled_encode_equals_untiled_within_tolerance(vae):
    g = torch.Generator().manual_seed(1)
    x = F.interpolate(torch.rand(1, 3, 24, 28, generator=g) * 2 - 1, size=(384, 448), mode="bilinear")
    full = vae.encode(x)[0]
    tiles = tiled(lambda t: vae.encode(t)[0], x, tile=320, overlap=128, scale=1 / 8, align=8)
    assert tiles.shape == full.shape
    err = (tiles - full).abs()
    # Per-tile GroupNorm statistics: about 8 % of the latent's mean magnitude on this random VAE.
    assert err.mean() < 0.1 * full.abs().mean(), (err.mean(), full.abs().mean())


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return load(write_random_checkpoint(tmp_path_factory.mktemp("m") / "tiny.safetensors"), precision="fp32")


def _calls(vae, monkeypatch):
    calls = []
    original = vae.decode
    monkeypatch.setattr(vae, "decode", lambda z: calls.append(tuple(z.shape[-2:])) or original(z))
    return calls


def test_pipeline_tiles_when_asked_and_above_the_size_threshold(pipe, monkeypatch):
    monkeypatch.setattr(vae_codec, "DECODE_TILE", 10)
    monkeypatch.setattr(vae_codec, "DECODE_OVERLAP", 6)
    calls = _calls(pipe.model.vae, monkeypatch)
    (plain,) = pipe.txt2img("a red apple", steps=2, seed=4, width=128, height=96)
    assert calls == [(12, 16)]
    pipe.vae_tiling = True
    try:
        calls.clear()
        (forced,) = pipe.txt2img("a red apple", steps=2, seed=4, width=128, height=96)
        assert len(calls) == 6 and set(calls) == {(10, 10)}
        diff = np.abs(np.asarray(forced).astype(int) - np.asarray(plain).astype(int))
        assert diff.mean() < 10, diff.mean()  # tiny tiles (10 latent px): closeness is tested above
        pipe.vae_tiling = None
        monkeypatch.setattr(vae_codec, "TILE_ABOVE", 128 * 96 - 1)  # automatic: just above the threshold
        calls.clear()
        (auto,) = pipe.txt2img("a red apple", steps=2, seed=4, width=128, height=96)
        assert len(calls) == 6 and np.array_equal(np.asarray(auto), np.asarray(forced))
    finally:
        pipe.vae_tiling = None


def test_img2img_encodes_in_tiles_when_asked(pipe, monkeypatch):
    monkeypatch.setattr(vae_codec, "ENCODE_TILE", 80)
    monkeypatch.setattr(vae_codec, "ENCODE_OVERLAP", 48)
    from PIL import Image
    init = Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8))
    plain = pipe.encode(init)
    pipe.vae_tiling = True
    try:
        tiles = pipe.encode(init)
    finally:
        pipe.vae_tiling = None
    assert tiles.shape == plain.shape and not torch.equal(tiles, plain)
    assert (tiles - plain).abs().mean() < 0.2 * plain.abs().mean()  # tiny tiles, random-noise image


def test_cli_vae_tiling_flag(tmp_path, capsys):
    # in this process: a new one per run costs a torch import (seconds on a busy 2-core machine)
    from PIL import Image

    from opensd.cli import main

    ckpt = write_random_checkpoint(tmp_path / "tiny.safetensors")

    def run(*extra):
        out = tmp_path / f"o{len(extra)}.png"
        code = main(["generate", "x", "--model", str(ckpt), "--steps", "1", "--seed", "2", "--width", "576",
                     "--height", "64", "-o", str(out), *extra])
        assert code == 0, capsys.readouterr().err
        return np.asarray(Image.open(out)).astype(int)

    plain, tiles = run(), run("--vae-tiling")  # 72 latent pixels wide: two 64-pixel tiles
    assert not np.array_equal(plain, tiles) and np.abs(plain - tiles).mean() < 10


def _image(x):  # a VAE output as ComfyUI's IMAGE
    return ((x.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)


def test_comfy_vae_decode_tiled_node_uses_its_tile_size_and_overlap(pipe, monkeypatch):
    from opensd.workflows.nodes_core import vae_decode, vae_decode_tiled
    from opensd.workflows.types import VaeRef

    z = torch.randn(1, 4, 16, 24, generator=torch.Generator().manual_seed(3))
    vae = VaeRef(pipe, "tiny")
    calls = _calls(pipe.model.vae, monkeypatch)
    with torch.no_grad():
        want = _image(tiled(pipe.model.vae.decode, z, tile=8, overlap=2, scale=8))
    calls.clear()
    # 64 pixels = 8 latent pixels; ComfyUI caps the overlap at a quarter of the tile: 16 px = 2 latent
    (image,) = vae_decode_tiled(None, {"samples": z}, vae, tile_size=64, overlap=64)
    assert set(calls) == {(8, 8)} and len(calls) == 12
    torch.testing.assert_close(image, want)
    calls.clear()
    (plain,) = vae_decode(None, {"samples": z}, vae)
    assert calls == [(16, 24)] and not torch.equal(plain, image)


def test_comfy_vae_decode_tiles_above_the_pipelines_threshold(pipe, monkeypatch):
    from opensd.workflows.nodes_core import vae_decode
    from opensd.workflows.types import VaeRef

    monkeypatch.setattr(vae_codec, "DECODE_TILE", 10)
    monkeypatch.setattr(vae_codec, "DECODE_OVERLAP", 6)
    monkeypatch.setattr(vae_codec, "TILE_ABOVE", 12 * 16 * 64 - 1)
    calls = _calls(pipe.model.vae, monkeypatch)
    (image,) = vae_decode(None, {"samples": torch.randn(1, 4, 12, 16)}, VaeRef(pipe, "tiny"))
    assert image.shape == (1, 96, 128, 3) and len(calls) == 6 and set(calls) == {(10, 10)}


def test_comfy_vae_encode_tiled_node_and_auto_tiling(pipe, monkeypatch):
    from opensd.workflows.nodes_core import vae_encode, vae_encode_tiled
    from opensd.workflows.types import VaeRef

    vae = VaeRef(pipe, "tiny")
    pixels = torch.rand(1, 128, 192, 3, generator=torch.Generator().manual_seed(4))
    calls = []
    original = pipe.model.vae.encode
    monkeypatch.setattr(pipe.model.vae, "encode", lambda x: calls.append(tuple(x.shape[-2:])) or original(x))
    with torch.no_grad():
        want = tiled(lambda t: original(t)[0], pixels.permute(0, 3, 1, 2) * 2 - 1, tile=64, overlap=16,
                     scale=1 / 8, align=8)
    (tiles,) = vae_encode_tiled(None, pixels, vae, tile_size=64, overlap=16)
    assert set(calls) == {(64, 64)} and len(calls) == 12
    torch.testing.assert_close(tiles["samples"], want, rtol=1e-5, atol=1e-5)
    calls.clear()
    (plain,) = vae_encode(None, pixels, vae)
    assert calls == [(128, 192)]
    monkeypatch.setattr(vae_codec, "TILE_ABOVE", 128 * 192 - 1)
    monkeypatch.setattr(vae_codec, "ENCODE_TILE", 64)
    monkeypatch.setattr(vae_codec, "ENCODE_OVERLAP", 16)
    calls.clear()
    (auto,) = vae_encode(None, pixels, vae)
    assert len(calls) == 12 and torch.equal(auto["samples"], tiles["samples"])


def test_comfy_vae_encode_returns_the_vaes_own_latent_with_a_shift_factor(pipe, monkeypatch):
    """ComfyUI's LATENT holds what the VAE encodes (SD3/Flux shift their latents only for the network)."""
    from dataclasses import replace

    from opensd.workflows.nodes_core import vae_encode
    from opensd.workflows.types import VaeRef

    monkeypatch.setattr(pipe, "config", replace(pipe.config, vae=replace(pipe.config.vae, shift_factor=0.3)))
    pixels = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(5))
    (out,) = vae_encode(None, pixels, VaeRef(pipe, "tiny"))
    with torch.no_grad():
        want = pipe.model.vae.encode(pixels.permute(0, 3, 1, 2) * 2 - 1)[0]
    torch.testing.assert_close(out["samples"], want, rtol=1e-5, atol=1e-5)
