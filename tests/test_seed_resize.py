"""A1111's "Resize seed from width/height": the seed's noise drawn at another size, its centre pasted
into the image's noise (noise.py), through the pipeline, infotext, the CLI and the A1111 API."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from opensd.errors import InvalidArgument
from opensd.library.synthetic import write_random_checkpoint
from opensd.pipeline.infotext import parse_infotext
from opensd.pipeline.infotext_params import image_infotext, recorded
from opensd.pipeline.noise import ImageNoise, paste_centred, slerp
from opensd.pipeline.pipeline import load
from opensd.server.infotext_request import request_from_infotext

SHAPE = (1, 4, 8, 8)


def _randn(seed, shape):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_paste_centred_follows_a1111s_offsets():
    target = torch.zeros(1, 1, 4, 6)
    small = torch.arange(1, 1 + 2 * 3, dtype=torch.float32).reshape(1, 1, 2, 3)
    out = paste_centred(small, target)  # dx = (6-3)//2 = 1, dy = (4-2)//2 = 1
    assert torch.equal(out[..., 1:3, 1:4], small) and out.sum() == small.sum()
    big = torch.arange(5 * 9, dtype=torch.float32).reshape(1, 1, 5, 9)
    out = paste_centred(big, torch.full((1, 1, 4, 6), -1.0))
    # dy = (4-5)//2 = -1: 3 rows from row 1; dx = (6-9)//2 = -2: 5 columns from column 2; the last
    # row and column of the target keep their own values (A1111's odd-difference edge).
    assert torch.equal(out[..., 0:3, 0:5], big[..., 1:4, 2:7])
    assert (out[..., 3, :] == -1).all() and (out[..., :, 5] == -1).all()


def test_resized_noise_is_the_from_size_noise_centred():
    noise = ImageNoise(7, SHAPE, torch.device("cpu"), seed_shape=(1, 4, 6, 10))
    small, plain = _randn(7, (1, 4, 6, 10)), _randn(7, SHAPE)
    # dy = 1 (6 rows at 1..7), dx = -1 (8 columns from column 1)
    assert torch.equal(noise.initial[..., 1:7, :], small[..., :, 1:9])
    assert torch.equal(noise.initial[..., 0, :], plain[..., 0, :]) and torch.equal(noise.initial[..., 7, :], plain[..., 7, :])
    # the per-step draws continue after one draw at the image's size, as without the resize
    assert torch.equal(noise(), ImageNoise(7, SHAPE, torch.device("cpu"))())


def test_variation_seed_is_mixed_at_the_from_size():
    noise = ImageNoise(7, SHAPE, torch.device("cpu"), 9, 0.3, seed_shape=(1, 4, 4, 4))
    mixed = slerp(0.3, _randn(7, (1, 4, 4, 4)), _randn(9, (1, 4, 4, 4)))
    assert torch.allclose(noise.initial[..., 2:6, 2:6], mixed)
    assert torch.equal(noise.initial[..., 0, :], _randn(7, SHAPE)[..., 0, :])  # outside: the seed's own, unmixed


def test_the_image_size_or_none_is_todays_noise():
    today = ImageNoise(7, SHAPE, torch.device("cpu"), 9, 0.5)
    for seed_shape in (None, SHAPE):
        same = ImageNoise(7, SHAPE, torch.device("cpu"), 9, 0.5, seed_shape=seed_shape)
        assert torch.equal(same.initial, today.initial)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return load(write_random_checkpoint(tmp_path_factory.mktemp("m") / "tiny.safetensors"))


def _px(image):
    return np.asarray(image).astype(np.int16)


def test_pipeline_seed_resize_and_its_infotext(pipe):
    plain = pipe.txt2img("x", steps=2, seed=3, width=64, height=64)[0]
    same = pipe.txt2img("x", steps=2, seed=3, width=64, height=64, seed_resize_from_w=64, seed_resize_from_h=64)[0]
    assert np.array_equal(_px(plain), _px(same))  # at the image's own size nothing changes
    off = pipe.txt2img("x", steps=2, seed=3, width=64, height=64, seed_resize_from_w=96, seed_resize_from_h=0)[0]
    assert np.array_equal(_px(plain), _px(off))  # A1111: both must be above 0
    resized = pipe.txt2img("x", steps=2, seed=3, width=64, height=64, seed_resize_from_w=96, seed_resize_from_h=48)[0]
    assert not np.array_equal(_px(plain), _px(resized))
    text = image_infotext(pipe, resized)
    assert "Seed resize from: 96x48" in text and "Seed resize from" not in image_infotext(pipe, plain)
    prompt, negative, params = parse_infotext(text)
    rec = recorded(prompt, negative, params)
    assert (rec.settings["seed_resize_from_w"], rec.settings["seed_resize_from_h"]) == (96, 48)
    again = pipe.txt2img(prompt, negative, **rec.settings)[0]
    assert np.array_equal(_px(again), _px(resized))
    request, _ = request_from_infotext(text, [])
    assert (request["seed_resize_from_w"], request["seed_resize_from_h"]) == (96, 48)


def test_pipeline_refuses_a_bad_seed_resize(pipe):
    with pytest.raises(InvalidArgument, match="seed_resize_from_w"):
        pipe.txt2img("x", steps=1, seed_resize_from_w=-7, seed_resize_from_h=64)
    with pytest.raises(InvalidArgument, match="seed_resize_from_h"):
        pipe.txt2img("x", steps=1, seed_resize_from_w=64, seed_resize_from_h=10**6)


def test_cli_seed_resize_flag_and_from(tmp_path):
    from opensd.cli import main
    from opensd.pipeline.infotext import read_infotext

    ckpt = write_random_checkpoint(tmp_path / "m.safetensors")
    first, again, plain = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    fast = ["-m", str(ckpt), "--steps", "2", "--seed", "4", "--width", "64", "--height", "64"]
    assert main(["generate", "x", *fast, "--seed-resize-from", "96x48", "-o", str(first)]) == 0
    assert parse_infotext(read_infotext(first))[2]["Seed resize from"] == "96x48"
    assert main(["generate", "--from", str(first), "-m", str(ckpt), "-o", str(again)]) == 0
    assert parse_infotext(read_infotext(again))[2]["Seed resize from"] == "96x48"
    assert np.array_equal(_px(_open(first)), _px(_open(again)))
    assert main(["generate", "x", *fast, "-o", str(plain)]) == 0
    assert not np.array_equal(_px(_open(first)), _px(_open(plain)))
    with pytest.raises(SystemExit):
        main(["generate", "x", *fast, "--seed-resize-from", "96", "-o", str(plain)])


def _open(path):
    from PIL import Image
    return Image.open(path).convert("RGB")


def test_variation_slerp_is_a1111s_per_column_form():
    low, high = _randn(1, (1, 2, 3, 4)), _randn(2, (1, 2, 3, 4))
    out = slerp(0.3, low, high)
    for c in range(2):
        for w in range(4):  # each column along the height on its own great circle (A1111 normalises dim 1 of C,H,W)
            a, b = low[0, c, :, w], high[0, c, :, w]
            omega = torch.acos(torch.dot(a / a.norm(), b / b.norm()))
            want = (torch.sin(0.7 * omega) * a + torch.sin(0.3 * omega) * b) / torch.sin(omega)
            assert torch.allclose(out[0, c, :, w], want, atol=1e-6)
    assert torch.allclose(slerp(0.3, low, low), low)  # parallel: plain interpolation (no NaN)
