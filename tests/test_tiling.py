"""Tiling (A1111's `tiling`): circular padding in every padded convolution of the UNet and VAE,
so an image wraps around seamlessly; switched on per call and off again after it."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from opensd.cli import main
from opensd.errors import InvalidArgument
from opensd.library.synthetic import write_random_checkpoint
from opensd.models.conv import circular_padding
from opensd.pipeline.infotext import parse_infotext, read_infotext
from opensd.pipeline.params import Hires
from opensd.pipeline.pipeline import load


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return load(write_random_checkpoint(tmp_path_factory.mktemp("tiling") / "tiny.safetensors"))


def _px(image):
    return np.asarray(image if not isinstance(image, Path) else Image.open(image)).astype(np.int16)


def _padded_convs(pipe):
    return [m for part in (pipe.model.unet, pipe.model.vae) for m in part.modules()
            if isinstance(m, nn.Conv2d) and any(m.padding)]


@torch.no_grad()
def test_circular_padding_makes_unet_and_vae_decoder_shift_equivariant(pipe):
    """With wrap-around padding, shifting the input shifts the output: no edge is special, so the
    image's left and right (top and bottom) edges continue each other. Zero padding breaks this."""
    unet, vae = pipe.model.unet, pipe.model.vae
    g = torch.Generator().manual_seed(0)
    x, z = torch.randn(1, 4, 8, 12, generator=g), torch.randn(1, 4, 6, 8, generator=g)
    t, context = torch.tensor([500.0]), torch.randn(1, 77, pipe.config.unet.context_dim, generator=g)

    def unet_shift_error():  # a shift by 2 latent pixels: the UNet downsamples once
        return (unet(x.roll((2, 4), (2, 3)), t, context) - unet(x, t, context).roll((2, 4), (2, 3))).abs().max()

    def vae_shift_error():  # the decoder upsamples 8x: a latent shift of 1 is 8 pixels
        return (vae.decode(z.roll((1, 3), (2, 3))) - vae.decode(z).roll((8, 24), (2, 3))).abs().max()

    before = (unet(x, t, context), vae.decode(z))
    assert unet_shift_error() > 1e-3 and vae_shift_error() > 1e-3
    with circular_padding(unet, vae):
        assert unet_shift_error() < 1e-5 and vae_shift_error() < 1e-5
    assert all(m.padding_mode == "zeros" for m in _padded_convs(pipe))
    torch.testing.assert_close((unet(x, t, context), vae.decode(z)), before, rtol=0, atol=0)


def test_txt2img_tiling_wraps_the_image_and_the_next_call_is_untouched(pipe):
    modes = []
    hooks = [m.register_forward_pre_hook(lambda m, args: modes.append(m.padding_mode)) for m in _padded_convs(pipe)]
    final = []
    pipe.on_latents = final.append  # Euler's last estimate is the final latent
    try:
        before = _px(pipe.txt2img("a red apple", steps=3, seed=7)[0])
        assert set(modes) == {"zeros"}
        modes.clear()
        tiled = pipe.txt2img("a red apple", steps=3, seed=7, tiling=True)[0]
        assert set(modes) == {"circular"} and len(modes) > len(hooks)  # every UNet step and the decode
        z = final[-1]
        modes.clear()
        after = _px(pipe.txt2img("a red apple", steps=3, seed=7)[0])
        assert set(modes) == {"zeros"}
    finally:
        pipe.on_latents = None
        for h in hooks:
            h.remove()
    assert np.array_equal(before, after)
    assert np.abs(_px(tiled) - before).mean() > 1
    # Seamless: the image moved by half its width (its seam now in the middle) is exactly what the
    # model paints from the latent moved by as much; without wrap-around the edges would differ.
    with circular_padding(pipe.model.vae):
        moved = _px(pipe.decode(z.roll(4, 3))[0])
    assert np.abs(moved - np.roll(_px(tiled), 32, axis=1)).max() <= 1
    assert np.abs(_px(pipe.decode(z.roll(4, 3))[0]) - np.roll(_px(tiled), 32, axis=1)).max() > 8


def test_tiling_holds_in_img2img_and_both_hires_passes(pipe):
    (init,) = pipe.txt2img("a red apple", steps=1, seed=1)
    modes = []
    hooks = [m.register_forward_pre_hook(lambda m, args: modes.append(m.padding_mode)) for m in _padded_convs(pipe)]
    try:
        pipe.img2img(init, "a red apple", steps=2, seed=2, strength=0.5, tiling=True)
        pipe.txt2img("a red apple", steps=2, seed=2, tiling=True, hires=Hires(scale=1.5, upscaler="lanczos"))
    finally:
        for h in hooks:
            h.remove()
    assert set(modes) == {"circular"}
    assert all(m.padding_mode == "zeros" for m in _padded_convs(pipe))


def test_tiling_is_restored_when_generation_fails(pipe):
    pipe.on_latents = lambda d: (_ for _ in ()).throw(RuntimeError("stop"))
    try:
        with pytest.raises(RuntimeError, match="stop"):
            pipe.txt2img("x", steps=2, seed=1, tiling=True)
    finally:
        pipe.on_latents = None
    assert all(m.padding_mode == "zeros" for m in _padded_convs(pipe))


def test_tiling_must_be_a_boolean(pipe):
    with pytest.raises(InvalidArgument, match="^tiling:"):
        pipe.txt2img("x", steps=1, tiling="yes")


def test_cli_tiling_is_written_as_a1111_does_and_from_reproduces_it(tmp_path, capsys):
    ckpt = write_random_checkpoint(tmp_path / "m.safetensors", dtype=torch.float32)
    tiled, again, plain = tmp_path / "t.png", tmp_path / "again.png", tmp_path / "p.png"
    fast = ["a red apple", "-m", str(ckpt), "--steps", "2", "--seed", "3"]
    assert main(["generate", *fast, "--tiling", "-o", str(tiled)]) == 0
    assert main(["generate", *fast, "-o", str(plain)]) == 0
    params = parse_infotext(read_infotext(tiled))[2]
    assert params["Tiling"] == "True"
    assert "Tiling" not in parse_infotext(read_infotext(plain))[2]  # A1111 leaves it out when off
    assert main(["generate", "--from", str(tiled), "-m", str(ckpt), "-o", str(again)]) == 0
    assert np.array_equal(_px(again), _px(tiled)) and not np.array_equal(_px(plain), _px(tiled))
    assert "differs" not in capsys.readouterr().err
