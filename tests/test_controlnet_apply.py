"""ControlNet application in the pipeline: weight, start/end, guess mode, several ControlNets, all
modes (txt2img, img2img, inpainting, hires fix), and clear errors for bad input."""
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from opensd.adapters.controlnet import ControlApplier, ControlSpec, load_controlnet, scales
from opensd.checkpoints.controlnet_files import save_controlnet
from opensd.errors import CheckpointError, InvalidArgument
from opensd.library.synthetic import TINY, write_random_checkpoint
from opensd.models.controlnet import ControlNet, ControlNetConfig
from opensd.pipeline.params import Hires
from opensd.pipeline.pipeline import load
from reference import randomize_

FAST = dict(steps=3, seed=5, cfg=5.0)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return load(write_random_checkpoint(tmp_path_factory.mktemp("m") / "tiny.safetensors"))


def _write_cn(path, unet_cfg=TINY.unet, seed=1, downscale=8):
    net = randomize_(ControlNet(ControlNetConfig(unet_cfg, hint_downscale=downscale)), seed=seed, std=0.1)
    save_controlnet(net, path, "small", dtype=torch.float32)
    return path


@pytest.fixture(scope="module")
def cns(pipe, tmp_path_factory):
    d = tmp_path_factory.mktemp("cn")
    return [load_controlnet(_write_cn(d / f"cn{i}.safetensors", seed=i), pipe) for i in (1, 2)]


def _edges(w=64, h=64):
    im = Image.new("L", (w, h), 0)
    ImageDraw.Draw(im).rectangle((12, 12, 50, 44), outline=255, width=2)
    return im


def _px(images):
    return np.stack([np.asarray(i).astype(np.int16) for i in images])


def test_weight_zero_is_no_control_and_weight_changes_output(pipe, cns):
    plain = _px(pipe.txt2img("a box", **FAST))
    zero = _px(pipe.txt2img("a box", controls=[ControlSpec(cns[0], _edges(), weight=0.0)], **FAST))
    full = _px(pipe.txt2img("a box", controls=[ControlSpec(cns[0], _edges(), weight=1.0)], **FAST))
    assert np.array_equal(plain, zero)
    assert np.abs(plain - full).max() > 0


def test_start_end_window(pipe, cns):
    spec = lambda **kw: [ControlSpec(cns[0], _edges(), **kw)]  # noqa: E731
    plain = _px(pipe.txt2img("a box", **FAST))
    late = _px(pipe.txt2img("a box", controls=spec(start=0.5, end=1.0), **FAST))
    full = _px(pipe.txt2img("a box", controls=spec(), **FAST))
    never = _px(pipe.txt2img("a box", controls=spec(start=0.9, end=0.95), **FAST))  # no step at 0.9..0.95 of 3
    assert np.abs(plain - late).max() > 0 and np.abs(full - late).max() > 0
    assert np.array_equal(plain, never)


def test_applier_guess_mode_sum_and_scales(cns):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([500, 500, 500])
    ctx = torch.randn(3, 5, TINY.unet.context_dim, generator=g)
    a = ControlApplier([ControlSpec(cns[0], _edges(), weight=0.7)], 64, 64, "cpu", torch.float32)
    b = ControlApplier([ControlSpec(cns[1], _edges(), weight=0.4)], 64, 64, "cpu", torch.float32)
    both = ControlApplier([ControlSpec(cns[0], _edges(), weight=0.7), ControlSpec(cns[1], _edges(), weight=0.4)],
                          64, 64, "cpu", torch.float32)
    ra, rb, rab = (f(x, t, ctx, None, 0.0).outputs for f in (a, b, both))
    for p, q, s in zip(ra, rb, rab):
        torch.testing.assert_close(p + q, s)
    guess = ControlApplier([ControlSpec(cns[0], _edges(), weight=0.7, guess_mode=True)], 64, 64, "cpu",
                           torch.float32)(x, t, ctx, None, 0.0).outputs
    n = len(guess)
    for i, (gr, r) in enumerate(zip(guess, ra)):
        assert gr[:1].abs().max() == 0  # the unconditional row gets no control
        torch.testing.assert_close(gr[1:], r[1:] * 0.825 ** (n - 1 - i), rtol=1e-4, atol=3e-5)
        assert r[1:].abs().max() > 1e-2  # so the tolerance is small against the residuals
    assert scales(ControlSpec(cns[0], _edges(), weight=2.0, guess_mode=True), 13)[0] == pytest.approx(2 * 0.825 ** 12)
    for mid, first in zip(a(x, t, ctx, None, 0.5).outputs, ra):  # the default window [0, 1]: full strength mid-run
        torch.testing.assert_close(mid, first)
    assert ControlApplier([ControlSpec(cns[0], _edges(), end=0.4)], 64, 64, "cpu", torch.float32)(
        x, t, ctx, None, 0.5) is None


def test_img2img_inpaint_and_hires_with_control(pipe, cns):
    init = Image.new("RGB", (64, 64), (200, 40, 40))
    mask = _edges().point(lambda v: 255 - v)
    controls = [ControlSpec(cns[0], _edges(), weight=0.8, guess_mode=True),
                ControlSpec(cns[1], _edges(32, 48).convert("RGBA"), resize_mode="crop and resize")]
    out = pipe.img2img(init, "red", controls=controls, strength=0.6, **FAST)
    assert out[0].size == (64, 64)
    out = pipe.img2img(init, "red", mask=mask, controls=controls, strength=0.6, **FAST)
    assert out[0].size == (64, 64)
    hires = pipe.txt2img("red", controls=controls, hires=Hires(scale=1.5, steps=2, denoise=0.5), **FAST)
    assert hires[0].size == (96, 96)  # the control image was resized to the hires pass's size


@pytest.mark.parametrize("kw,match", [
    (dict(weight=float("nan")), "control weight"),
    (dict(weight=-0.1), "control weight"),
    (dict(weight=5.0), "control weight"),
    (dict(start=0.8, end=0.2), "control start"),
    (dict(end=1.5), "control end"),
    (dict(resize_mode="stretch"), "resize_mode"),
])
def test_bad_control_parameters(pipe, cns, kw, match):
    with pytest.raises(InvalidArgument, match=match):
        pipe.txt2img("x", controls=[ControlSpec(cns[0], _edges(), **kw)], **FAST)


def test_bad_control_image_and_list(pipe, cns):
    with pytest.raises(InvalidArgument, match="control image"):
        pipe.txt2img("x", controls=[ControlSpec(cns[0], "edges.png")], **FAST)
    with pytest.raises(InvalidArgument, match="controls"):
        pipe.txt2img("x", controls=["edges.png"], **FAST)
    # other image modes are converted
    for mode in ("L", "RGBA", "P", "1"):
        pipe.txt2img("x", controls=[ControlSpec(cns[0], _edges().convert(mode))], steps=1, seed=1)


def test_controlnet_for_another_family_is_refused(pipe, tmp_path):
    other = replace(TINY.unet, context_dim=48)
    path = _write_cn(tmp_path / "other.safetensors", unet_cfg=other)
    with pytest.raises(CheckpointError, match="ControlNet is for"):
        load_controlnet(path, pipe)
    with pytest.raises(CheckpointError, match="not a ControlNet"):
        load_controlnet(pipe.loaded.path, pipe)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_controlnet(tmp_path / "missing.safetensors", pipe)
