"""Flux.1 ControlNets (diffusers' FluxControlNetModel layout): our network's residuals equal
diffusers' on tiny random weights (plain, Union with a mode, no single blocks as Union-Pro-2.0),
the Flux transformer with those residuals equals diffusers' FluxTransformer2DModel (the interval
rule with fewer ControlNet blocks than its own), other DiT ControlNet layouts are refused, and the
full-size key sets load on meta."""
from __future__ import annotations

import pytest
import torch
from diffusers import FluxControlNetModel

from dit_fixtures import FLUX_AXES, FLUX_HEAD, META_FLUX, flux_parts
from opensd.checkpoints.flux_controlnet_files import (compatible_flux_controlnet, flux_controlnet_config,
                                                     read_flux_controlnet)
from opensd.checkpoints.keymap_flux import flux_from_diffusers
from opensd.checkpoints import detect_dit as DD
from opensd.errors import CheckpointError
from opensd.models.flux import Flux, image_ids
from opensd.models.flux_controlnet import FluxControlNet
from reference import assert_close_scaled, randomize_


def tiny_controlnet(double=1, single=1, modes=None, guidance=True, seed=5) -> FluxControlNetModel:
    net = FluxControlNetModel(in_channels=64, num_layers=double, num_single_layers=single,
                              attention_head_dim=FLUX_HEAD, num_attention_heads=2, joint_attention_dim=128,
                              pooled_projection_dim=32, guidance_embeds=guidance, axes_dims_rope=FLUX_AXES,
                              num_mode=modes)
    return randomize_(net, seed=seed, std=0.1).eval()


def ours_of(ref: FluxControlNetModel) -> FluxControlNet:
    sd, cfg = read_flux_controlnet("<test>", dict(ref.state_dict()), dict(ref.config))
    net = FluxControlNet(cfg)
    net.load_state_dict(sd, strict=True)
    return net.eval()


def _inputs(n_img=16, n_txt=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    img, cond = torch.randn(1, n_img, 64, generator=g), torch.randn(1, n_img, 64, generator=g)
    txt, y = torch.randn(1, n_txt, 128, generator=g), torch.randn(1, 32, generator=g)
    return img, cond, txt, y, image_ids(4, n_img // 4), torch.zeros(n_txt, 3)


@pytest.mark.parametrize("double,single,modes", [(1, 1, None), (2, 0, None), (1, 2, 4)])
def test_residuals_equal_diffusers(double, single, modes):
    ref = tiny_controlnet(double, single, modes)
    ours = ours_of(ref)
    img, cond, txt, y, ids, txt_ids = _inputs()
    t, g = torch.tensor([0.7]), torch.tensor([3.5])
    with torch.no_grad():
        want = ref(img, cond, controlnet_mode=None if modes is None else torch.tensor([[2]]),
                   encoder_hidden_states=txt, pooled_projections=y, timestep=t, img_ids=ids, txt_ids=txt_ids,
                   guidance=g, return_dict=False)
        got = ours.forward_tokens(img, ids, txt, txt_ids, t, y, g, cond, 2 if modes else None)
    for mine, theirs in zip(got, want):
        assert len(mine) == len(theirs or ())
        for a, b in zip(mine, theirs or ()):
            assert_close_scaled(a, b, rel=1e-5)
    assert got[0][0].abs().max() > 0.01


def test_transformer_with_residuals_equals_diffusers():
    """Two double and two single transformer blocks, one ControlNet block of each: each residual serves
    two blocks in a row."""
    transformer = flux_parts("dev")["transformer"]
    cfg = DD.flux_config_diffusers({k: tuple(v.shape) for k, v in transformer.state_dict().items()}, "",
                                   META_FLUX)
    flux = Flux(cfg)
    flux.load_state_dict(flux_from_diffusers(dict(transformer.state_dict()), cfg), strict=True)
    img, cond, txt, y, ids, txt_ids = _inputs()
    t, g = torch.tensor([0.4]), torch.tensor([3.5])
    ref_cn = tiny_controlnet(1, 1)
    with torch.no_grad():
        double, single = ref_cn(img, cond, encoder_hidden_states=txt, pooled_projections=y, timestep=t, img_ids=ids,
                                txt_ids=txt_ids, guidance=g, return_dict=False)
        want = transformer(img, txt, y, t, ids, txt_ids, g, controlnet_block_samples=double,
                           controlnet_single_block_samples=single, return_dict=False)[0]
        plain = transformer(img, txt, y, t, ids, txt_ids, g, return_dict=False)[0]
        got = flux.eval().forward_tokens(img, ids, txt, txt_ids, t, y, g, control=[(list(double), list(single))])
    assert_close_scaled(got, want, rel=1e-5)
    assert (want - plain).abs().max() > 0.01 * plain.abs().max()


def test_config_and_base_fit():
    ref = tiny_controlnet(1, 2, modes=7)
    cfg = flux_controlnet_config({k: tuple(v.shape) for k, v in ref.state_dict().items()})
    assert (cfg.flux.depth, cfg.flux.depth_single_blocks, cfg.union_modes, cfg.flux.hidden_size) == (1, 2, 7, 32)
    assert cfg.flux.guidance_embed and cfg.flux.head_dim == FLUX_HEAD


XLABS = {"double_blocks.0.img_attn.qkv.weight": torch.zeros(3, 1), "controlnet_blocks.0.weight": torch.zeros(1, 1),
         "input_hint_block.0.weight": torch.zeros(1, 1, 3, 3)}


def test_other_layouts_refused_and_listed(tmp_path):
    from opensd.library.model_catalog import _controlnet
    with pytest.raises(CheckpointError, match="XLabs' layout without its hint block or embedder"):
        read_flux_controlnet("x", XLABS)
    shapes = {k: {"shape": list(v.shape)} for k, v in XLABS.items()}
    assert _controlnet(shapes, {}, tmp_path / "x.safetensors") == (
        "flux", "A Flux ControlNet in XLabs' layout without its hint block or embedder (not supported)")


# --- the pipeline: txt2img with a ControlNet equals diffusers' FluxControlNetPipeline ------------

PROMPT, STEPS, SEED, SIZE = "a photo of a cat sitting on a red chair", 4, 7, 64


@pytest.fixture(scope="module")
def flux_dev(tmp_path_factory):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
    from dit_fixtures import flux_pair
    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                            base_image_seq_len=256, max_image_seq_len=4096, shift=3.0)
    ours, ref = flux_pair(tmp_path_factory.mktemp("fluxcn"), "dev", FluxPipeline, sched)
    return ours, ref


def _control_image():
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))


def euler_steps(monkeypatch) -> list:
    """The latents after each step of the next euler runs, filled in as they run."""
    from opensd.sampling import samplers as S
    seen = []
    euler = S.SAMPLERS["euler"]

    def spy(denoise, x, sigmas, callback=None, **kwargs):
        def step(i, xi, denoised):
            seen.append(xi.clone())
            callback(i, xi, denoised)
        return euler(denoise, x, sigmas, step, **kwargs)

    monkeypatch.setitem(S.SAMPLERS, "euler", spy)
    return seen


def _ours(pipe, cn_path, monkeypatch, weight, mode=None, more=()):
    from opensd.adapters.controlnet import ControlSpec, load_controlnet
    seen = euler_steps(monkeypatch)
    specs = [ControlSpec(load_controlnet(path, pipe), _control_image(), weight=weight, control_type=mode)
             for path in (cn_path, *more)]
    pipe.txt2img(PROMPT, steps=STEPS, seed=SEED, width=SIZE, height=SIZE, controls=specs)
    return seen


def _ref(ref, pipe, cn, monkeypatch, weight, mode=None):
    import diffusers.pipelines.flux.pipeline_flux_controlnet as M
    from diffusers import FluxControlNetPipeline
    # the posterior mean, as ours (diffusers samples the control image's latent)
    monkeypatch.setattr(M, "retrieve_latents", lambda out, generator=None: out.latent_dist.mode())
    p = FluxControlNetPipeline(**ref.components, controlnet=cn)
    p.set_progress_bar_config(disable=True)
    packed = FluxControlNetPipeline._pack_latents(pipe.noise([SEED], SIZE // 8, SIZE // 8), 1, 16, SIZE // 8, SIZE // 8)
    steps = []

    def on_step_end(_, i, t, kwargs):
        steps.append(FluxControlNetPipeline._unpack_latents(kwargs["latents"].clone(), SIZE, SIZE, p.vae_scale_factor))
        return {}

    with torch.no_grad():
        p(PROMPT, control_image=_control_image(), control_mode=mode, controlnet_conditioning_scale=weight,
          height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=3.5, latents=packed, output_type="latent",
          callback_on_step_end=on_step_end, max_sequence_length=pipe.config.t5_length)
    return steps


@pytest.mark.parametrize("modes,mode", [(None, None), (4, 2)])
def test_txt2img_with_controlnet_equals_diffusers_step_by_step(flux_dev, tmp_path, monkeypatch, modes, mode):
    from opensd.checkpoints.files import save_safetensors
    ours, ref = flux_dev
    cn = tiny_controlnet(1, 1, modes)
    path = tmp_path / "cn.safetensors"
    save_safetensors({k: v.contiguous() for k, v in cn.state_dict().items()}, path)
    got = _ours(ours, path, monkeypatch, 0.8, mode)
    want = _ref(ref, ours, cn, monkeypatch, 0.8, mode)
    assert len(got) == len(want) == STEPS
    for a, b in zip(got, want):
        assert_close_scaled(a, b, rel=1e-4)
    last = got[-1]
    plain = _ours(ours, path, monkeypatch, 0.0, mode)[-1]
    assert (plain - last).abs().max() > 0.01 * last.abs().max()


# --- full size, on meta -------------------------------------------------------------------------

@pytest.mark.parametrize("double,single,modes", [(5, 10, None), (5, 10, 10), (6, 0, None)])
def test_released_key_sets_load_on_meta(double, single, modes):
    """InstantX's Canny (5 + 10 blocks), Union-Pro (10 modes), Union-Pro-2.0 (6 double blocks only)."""
    with torch.device("meta"):
        ref = FluxControlNetModel(num_layers=double, num_single_layers=single, guidance_embeds=True, num_mode=modes)
    sd = dict(ref.state_dict())
    sd_ours, cfg = read_flux_controlnet("<meta>", sd)
    assert (cfg.flux.hidden_size, cfg.flux.num_heads, cfg.flux.axes_dim, cfg.union_modes) == (3072, 24, (16, 56, 56),
                                                                                              modes or 0)
    from opensd.models.config_dit import FLUX_DEV
    cfg = compatible_flux_controlnet(cfg, FLUX_DEV)
    with torch.device("meta"):
        ours = FluxControlNet(cfg)
    ours.load_state_dict(sd_ours, strict=True, assign=True)
    assert sum(t.numel() for t in sd.values()) == sum(p.numel() for p in ours.parameters())


def test_listed_as_a_flux_controlnet(tmp_path):
    from opensd.library.model_catalog import _controlnet
    shapes = {k: {"shape": list(v.shape)} for k, v in tiny_controlnet(1, 2, modes=7).state_dict().items()}
    family, detail = _controlnet(shapes, {}, tmp_path / "cn.safetensors")
    assert family == "flux" and detail == "Flux.1 ControlNet (Union, 7 modes; 1 double, 2 single blocks)"


def test_wrong_model_or_mode_refused(flux_dev, tmp_path):
    from opensd.adapters.controlnet import ControlSpec, load_controlnet
    from opensd.checkpoints.files import save_safetensors
    from opensd.errors import InvalidArgument
    ours, _ = flux_dev
    path = tmp_path / "cn.safetensors"
    save_safetensors({k: v.contiguous() for k, v in tiny_controlnet(1, 1, modes=4).state_dict().items()}, path)
    cn = load_controlnet(path, ours)
    assert ControlSpec(cn, _control_image(), control_type="depth").control_type == "depth"
    spec = ControlSpec(cn, _control_image(), control_type="depth")
    spec.validate(ours.config)
    assert spec.control_type == 2
    with pytest.raises(InvalidArgument, match="not a mode"):
        ControlSpec(cn, _control_image(), control_type="gray").validate(ours.config)
    bad = dict(tiny_controlnet(1, 1).state_dict())
    bad["context_embedder.weight"] = torch.zeros(32, 64)
    save_safetensors({k: v.contiguous() for k, v in bad.items()}, tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match="text width 64"):
        load_controlnet(tmp_path / "bad.safetensors", ours)


def test_two_controlnets_equal_diffusers_multi_controlnet(flux_dev, tmp_path, monkeypatch):
    """Two ControlNets at once (here one saved as a diffusers folder): diffusers' FluxMultiControlNetModel."""
    from diffusers.models import FluxMultiControlNetModel
    from opensd.checkpoints.files import save_safetensors
    ours, ref = flux_dev
    a, b = tiny_controlnet(1, 1, seed=5), tiny_controlnet(1, 1, seed=6)
    save_safetensors({k: v.contiguous() for k, v in a.state_dict().items()}, tmp_path / "a.safetensors")
    b.save_pretrained(tmp_path / "b")
    got = _ours(ours, tmp_path / "a.safetensors", monkeypatch, 0.8, more=[tmp_path / "b"])
    import diffusers.pipelines.flux.pipeline_flux_controlnet as M
    from diffusers import FluxControlNetPipeline
    monkeypatch.setattr(M, "retrieve_latents", lambda out, generator=None: out.latent_dist.mode())
    p = FluxControlNetPipeline(**ref.components, controlnet=FluxMultiControlNetModel([a, b]))
    p.set_progress_bar_config(disable=True)
    packed = FluxControlNetPipeline._pack_latents(ours.noise([SEED], SIZE // 8, SIZE // 8), 1, 16, SIZE // 8, SIZE // 8)
    with torch.no_grad():
        out = p(PROMPT, control_image=[_control_image(), _control_image()], controlnet_conditioning_scale=[0.8, 0.8],
                height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=3.5, latents=packed,
                output_type="latent", max_sequence_length=ours.config.t5_length).images
    want = FluxControlNetPipeline._unpack_latents(out, SIZE, SIZE, p.vae_scale_factor)
    assert_close_scaled(got[-1], want, rel=1e-4)


def test_load_controlnet_refuses_broken_xlabs_and_sd_controlnets_on_flux(flux_dev, tmp_path):
    from opensd.adapters.controlnet import load_controlnet
    from opensd.checkpoints.controlnet_files import save_controlnet
    from opensd.checkpoints.files import save_safetensors
    from opensd.library.synthetic import TINY
    from opensd.models.controlnet import ControlNet, ControlNetConfig
    ours, _ = flux_dev
    save_safetensors(XLABS, tmp_path / "xlabs.safetensors")
    with pytest.raises(CheckpointError, match="XLabs' layout without its hint block or embedder: not supported"):
        load_controlnet(tmp_path / "xlabs.safetensors", ours)
    save_controlnet(ControlNet(ControlNetConfig(TINY.unet)), tmp_path / "sd.safetensors", "small")
    with pytest.raises(CheckpointError, match="not a Flux.1 ControlNet"):
        load_controlnet(tmp_path / "sd.safetensors", ours)
