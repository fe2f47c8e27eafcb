"""T2I-Adapters: our adapter equals diffusers' T2IAdapter (full, full XL, light) on the same random
weights, read from a diffusers folder and from an original-layout file; its features drive our UNet
exactly as diffusers' UNet is driven by down_intrablock_additional_residuals (SD1 slots, and SDXL's
with the fourth feature on the middle block); full-size layouts on the meta device; pipeline use."""
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import T2IAdapter as RefAdapter
from diffusers import UNet2DConditionModel
from PIL import Image, ImageDraw

from opensd.adapters.controlnet import ControlApplier, ControlSpec, load_controlnet, scales
from opensd.checkpoints.keymap_unet import unet_from_diffusers
from opensd.checkpoints.t2i_adapter_files import (
    compatible_slots, detect_t2i_adapter, from_diffusers, save_t2i_adapter)
from opensd.errors import CheckpointError
from opensd.library.synthetic import TINY, write_random_checkpoint
from opensd.models import config as C
from opensd.models.t2i_adapter import T2IAdapter, T2IAdapterConfig, slots
from opensd.models.unet import Control, UNetModel
from opensd.pipeline.pipeline import load
from reference import assert_close_scaled, diffusers_unet_kwargs, randomize_

BASE = dict(model_channels=32, context_dim=48, num_heads=2, num_head_channels=-1)
CASES = {  # name: (our UNet config, diffusers T2IAdapter kwargs)
    "full": (C.UNetConfig(**BASE, channel_mult=(1, 2), num_res_blocks=1, transformer_depth=(1, 1)),
             dict(channels=[32, 64], num_res_blocks=2, downscale_factor=8, adapter_type="full_adapter")),
    "full_xl": (C.UNetConfig(**BASE, channel_mult=(1, 2, 4), num_res_blocks=2, transformer_depth=(0, 1, 1)),
                dict(channels=[32, 64, 128, 128], num_res_blocks=2, downscale_factor=16,
                     adapter_type="full_adapter_xl")),
    "light": (C.UNetConfig(**BASE, channel_mult=(1, 2, 2), num_res_blocks=1, transformer_depth=(1, 1, 0)),
              dict(channels=[32, 64], num_res_blocks=2, downscale_factor=8, adapter_type="light_adapter")),
}


def _base(unet_cfg):
    return C.ModelConfig(family="small", unet=unet_cfg, vae=C.VAEConfig(), text_encoders=())


def _ref(name, tmp_path, in_channels=3):
    ref = randomize_(RefAdapter(in_channels=in_channels, **CASES[name][1]), seed=4, std=0.1).eval()
    folder = tmp_path / f"{name}_diffusers"
    ref.save_pretrained(folder, safe_serialization=True)
    return ref, folder


@pytest.mark.parametrize("name", sorted(CASES))
def test_features_and_unet_output_match_diffusers_both_formats(name, tmp_path):
    unet_cfg, _ = CASES[name]
    ref, folder = _ref(name, tmp_path)
    # the original layout: our names, written by our writer from the diffusers weights
    sd = from_diffusers(ref.state_dict())
    _, cfg = detect_t2i_adapter({k: tuple(v.shape) for k, v in sd.items()},
                                levels=len(CASES[name][1]["channels"]) + (name == "light"))
    net = T2IAdapter(cfg)
    net.load_state_dict(sd, strict=True)
    single = tmp_path / f"{name}.safetensors"
    save_t2i_adapter(net, single, dtype=torch.float32)

    g = torch.Generator().manual_seed(1)
    hint = torch.rand(2, 3, 128, 128, generator=g)
    with torch.no_grad():
        want = ref(hint)
    base = _base(unet_cfg)
    for path in (folder, single):
        loaded = load_controlnet(path, base, device="cpu", dtype=torch.float32)
        assert loaded.is_adapter and loaded.slots == tuple(slots(unet_cfg, len(want)))
        with torch.no_grad():
            got = loaded.net(hint)
        assert len(got) == len(want)
        for a, b in zip(got, want):
            assert_close_scaled(a, b)

    # our UNet fed the features through Control = diffusers' UNet fed them as intrablock residuals
    dunet = randomize_(UNet2DConditionModel(**diffusers_unet_kwargs(unet_cfg)), seed=5).eval()
    ours = UNetModel(unet_cfg).eval()
    ours.load_state_dict(unet_from_diffusers(dunet.state_dict(), unet_cfg), strict=True)
    x = torch.randn(2, 4, 16, 16, generator=g)
    t, ctx = torch.tensor([999, 17]), torch.randn(2, 7, 48, generator=g)
    with torch.no_grad():
        control = loaded.residuals(x, hint, t, ctx, None, scales=[0.7] * len(want))
        mine = ours(x, t, ctx, control=control)
        theirs = dunet(x, t, ctx, down_intrablock_additional_residuals=[w * 0.7 for w in want]).sample
        plain = ours(x, t, ctx)
    assert_close_scaled(mine, theirs)
    assert (mine - plain).abs().max() > 1e-3  # the features did something


def test_sketch_style_one_channel_adapter_gets_grey(tmp_path):
    ref, folder = _ref("full", tmp_path, in_channels=1)
    loaded = load_controlnet(folder, _base(CASES["full"][0]), device="cpu", dtype=torch.float32)
    assert loaded.net.config.in_channels == 1
    rgb = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    x, t, ctx = torch.zeros(1, 4, 8, 8), torch.tensor([500]), torch.zeros(1, 7, 48)
    with torch.no_grad():
        got = loaded.residuals(x, rgb, t, ctx, None).inner
        want = ref(rgb.mean(1, keepdim=True))
    torch.testing.assert_close([g for g in got if g is not None], want)


FULL = {  # name: (how diffusers builds it, the base it fits, slots)
    "sd15": (dict(channels=[320, 640, 1280, 1280], num_res_blocks=2, downscale_factor=8), "sd1",
             [2, 5, 8, 11]),
    "sdxl": (dict(channels=[320, 640, 1280, 1280], num_res_blocks=2, downscale_factor=16,
                  adapter_type="full_adapter_xl"), "sdxl", [3, 5, 8, 9]),
    "sd14_light": (dict(channels=[320, 640, 1280], num_res_blocks=4, downscale_factor=8,
                        adapter_type="light_adapter"), "sd1", [2, 5, 8, 11]),
}


@pytest.mark.parametrize("name", sorted(FULL))
@pytest.mark.parametrize("in_channels", [1, 3])
def test_full_size_layouts_on_meta(name, in_channels):
    kw, family, want_slots = FULL[name]
    with torch.device("meta"):
        ref = RefAdapter(in_channels=in_channels, **kw)
    shapes = {k: tuple(v.shape) for k, v in from_diffusers(ref.state_dict()).items()}
    got_family, cfg = detect_t2i_adapter(shapes)
    assert got_family == family and cfg.in_channels == in_channels
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in T2IAdapter(cfg).state_dict().items()}
    assert ours == shapes
    assert list(compatible_slots(cfg, C.sd1() if family == "sd1" else C.sdxl())) == want_slots
    with pytest.raises(CheckpointError, match="do not fit"):
        compatible_slots(cfg, C.sdxl() if family == "sd1" else C.sd1())


def test_wrong_family_and_style_adapter_are_refused(tmp_path):
    _, folder = _ref("full_xl", tmp_path)
    with pytest.raises(CheckpointError, match="T2I-Adapter is for SDXL|do not fit"):
        load_controlnet(folder, _base(CASES["full"][0]), device="cpu", dtype=torch.float32)
    with pytest.raises(CheckpointError, match="style adapter"):
        detect_t2i_adapter({"style_embedding": (1, 8, 1024), "ln_post.weight": (1024,)})


# --- in the pipeline -----------------------------------------------------------------------------

def _edges():
    im = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(im).rectangle((12, 12, 50, 44), outline=255, width=2)
    return im


@pytest.fixture(scope="module")
def pipe_and_adapter(tmp_path_factory):
    d = tmp_path_factory.mktemp("t2i")
    pipe = load(write_random_checkpoint(d / "tiny.safetensors"))
    cfg = T2IAdapterConfig(channels=(32, 64), num_res_blocks=2, unshuffle=8, downsamples=(False, True))
    save_t2i_adapter(randomize_(T2IAdapter(cfg), seed=3, std=0.2), d / "t2i.safetensors", dtype=torch.float32)
    return pipe, load_controlnet(d / "t2i.safetensors", pipe)


def test_pipeline_weight_window_and_soft_scales(pipe_and_adapter):
    pipe, ad = pipe_and_adapter
    fast = dict(steps=3, seed=5, cfg=5.0)
    px = lambda imgs: np.stack([np.asarray(i).astype(np.int16) for i in imgs])  # noqa: E731
    plain = px(pipe.txt2img("a box", **fast))
    zero = px(pipe.txt2img("a box", controls=[ControlSpec(ad, _edges(), weight=0.0)], **fast))
    full = px(pipe.txt2img("a box", controls=[ControlSpec(ad, _edges())], **fast))
    never = px(pipe.txt2img("a box", controls=[ControlSpec(ad, _edges(), start=0.9, end=0.95)], **fast))
    assert np.array_equal(plain, zero) and np.array_equal(plain, never)
    assert np.abs(plain - full).max() > 0
    assert scales(ControlSpec(ad, _edges(), weight=2.0, soft_injection=True), 2) == [2 * 0.825, 2.0]
    # 60x52 px is no multiple of the unshuffle: the hint is fitted to 64x56 and the features to the latent
    assert ad.hint_size(60, 52) == (64, 56)
    out = pipe.txt2img("a box", controls=[ControlSpec(ad, _edges())], width=56, height=48, **fast)
    assert out[0].size == (56, 48)


def test_applier_guess_mode_and_sum_with_a_controlnet_shape(pipe_and_adapter):
    pipe, ad = pipe_and_adapter
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(3, 4, 8, 8, generator=g), torch.tensor([500, 500, 500])
    ctx = torch.randn(3, 5, TINY.unet.context_dim, generator=g)
    a = ControlApplier([ControlSpec(ad, _edges(), weight=0.5)], 64, 64, "cpu", torch.float32)(x, t, ctx, None, 0.0)
    guess = ControlApplier([ControlSpec(ad, _edges(), weight=0.5, guess_mode=True)], 64, 64, "cpu",
                           torch.float32)(x, t, ctx, None, 0.0)
    assert isinstance(a, Control) and a.outputs is None
    assert [i for i, f in enumerate(a.inner) if f is not None] == list(ad.slots)
    for s, soft in zip(ad.slots, (0.825, 1.0)):
        assert guess.inner[s][:1].abs().max() == 0
        torch.testing.assert_close(guess.inner[s][1:], a.inner[s][1:] * soft)
    both = a + a
    torch.testing.assert_close(both.inner[ad.slots[0]], 2 * a.inner[ad.slots[0]])
    assert replace(a, inner=None).map(lambda v: v) == Control()
