"""ComfyUI's SkipLayerGuidanceDiT / SkipLayerGuidanceSD3 on tiny random SD3 and Flux networks: the
block skipping against blocks replaced by hand, and whole samplings against the same guidance
written as a sampler_cfg_function (an independent path through the guider)."""
from dataclasses import replace

import pytest
import torch
from dit_fixtures import flux_parts, load_tiny, sd3_parts
from workflow_fixtures import Loader, make_ctx, make_models

from opensd.errors import InvalidArgument
from opensd.workflows import ksampler as K
from opensd.workflows import nodes_guidance as G
from opensd.workflows.dit_patches import skip_blocks
from opensd.workflows.nodes_core import clip_text_encode
from opensd.workflows.types import ClipRef, ModelRef

KW = dict(seed=2, steps=3, cfg=4.0, sampler_name="euler", scheduler="normal")


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("slg")
    return {"sd3": load_tiny(tmp / "sd3", "sd3", sd3_parts()), "flux": load_tiny(tmp / "flux", "flux", flux_parts())}


def _conds(pipe):
    clip = ClipRef(pipe, "tiny")
    return clip_text_encode(None, "a red house", clip)[0], clip_text_encode(None, "fog", clip)[0]


class _Skipped:
    """Blocks whose forward is replaced by hand with one handing its inputs on."""

    def __init__(self, network, double, single):
        doubles = getattr(network, "joint_blocks", None) or network.double_blocks
        self.blocks = [(doubles[i], lambda a, b, *rest: (a, b)) for i in double] + \
                      [(network.single_blocks[i], lambda x, *rest: x) for i in single]

    def __enter__(self):
        for block, fn in self.blocks:
            block.forward = fn

    def __exit__(self, *exc):
        for block, _ in self.blocks:
            del block.forward


@pytest.mark.parametrize("family,double,single", [("sd3", [1], []), ("sd3", [0, 7], []), ("flux", [0], [1]),
                                                  ("flux", [], [0, 1])])
def test_skipped_blocks_hand_their_inputs_on(pipes, family, double, single):
    pipe = pipes[family]
    net = pipe.family.network(pipe.model)
    fn = pipe.family.net_fn(pipe.model, None)
    pos, _ = _conds(pipe)
    x = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(1))
    ctx, y = pos[0][0], pos[0][1]["pooled_output"]
    t = torch.tensor([500.0])
    with torch.no_grad():
        plain = fn(x, t, ctx, y)
        with skip_blocks(net, double, single):
            got = fn(x, t, ctx, y)
        assert torch.equal(fn(x, t, ctx, y), plain)  # nothing left behind
        with _Skipped(net, [i for i in double if i < 2], single):
            want = fn(x, t, ctx, y)
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, plain)


def _slg_by_hand(pipe, pos, double, single, scale, rescale, window):
    def fn(args):
        cfg = args.uncond_denoised + args.cond_scale * (args.cond_denoised - args.uncond_denoised)
        if window[1] <= float(args.sigma.reshape(-1)[0]) <= window[0]:
            with _Skipped(pipe.family.network(pipe.model), double, single):
                skipped = args.predict(pos)
            cfg = cfg + (args.cond_denoised - skipped) * scale
            if rescale:
                factor = args.cond_denoised.std() / cfg.std()
                cfg = cfg * (rescale * factor + 1 - rescale)
        return args.input - cfg
    return fn


def _plain_run(pipes, family):
    """(pipe, MODEL, positive, negative, latent, the plain sampling's result) of a family's tiny network."""
    pipe = pipes[family]
    model, (pos, neg) = ModelRef(pipe, family), _conds(pipe)
    latent = {"samples": torch.zeros(1, 16, 8, 8)}
    return pipe, model, pos, neg, latent, K.sample(model, pos, neg, latent, **KW)["samples"]


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_skip_layer_guidance_dit_guides_the_steps_in_its_window(pipes, family):
    pipe, model, pos, neg, latent, plain = _plain_run(pipes, family)
    single = "1" if family == "flux" else ""
    (slg,) = G.skip_layer_guidance_dit(None, model, "layer 0;", single, 2.0, 0.0, 0.6, 0.5)
    got = K.sample(slg, pos, neg, latent, **KW)["samples"]
    window = (1.0, K.sampling_of(model).percent_to_sigma(0.6))
    hand = _slg_by_hand(pipe, pos, [0], [1] if single else [], 2.0, 0.5, window)
    want = K.sample(replace(model, cfg_function=hand), pos, neg, latent, **KW)["samples"]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, plain, atol=1e-4)
    # a window between the steps' sigmas, no layers, or scale 0: plain sampling
    sigmas = K.comfy_sigmas(K.sampling_of(model).schedule, "euler", "normal", 3, 1.0)
    between = [p for p in (0.3, 0.4, 0.5, 0.6, 0.7)
               if not any(K.sampling_of(model).percent_to_sigma(p + 0.05) <= float(s)
                          <= K.sampling_of(model).percent_to_sigma(p) for s in sigmas[:-1])][0]
    (idle,) = G.skip_layer_guidance_dit(None, model, "0", "0", 2.0, between, between + 0.05, 0.0)
    assert torch.equal(K.sample(idle, pos, neg, latent, **KW)["samples"], plain)
    assert G.skip_layer_guidance_dit(None, model, "", "none", 2.0, 0.0, 1.0)[0] is model
    (zero,) = G.skip_layer_guidance_sd3(None, model, "0, 1", 0.0, 0.0, 1.0)
    assert torch.equal(K.sample(zero, pos, neg, latent, **KW)["samples"], plain)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_the_simple_variant_predicts_the_negative_with_blocks_skipped(pipes, family):
    pipe, model, pos, neg, latent, plain = _plain_run(pipes, family)
    single = [1] if family == "flux" else []
    (simple,) = G.skip_layer_guidance_dit_simple(None, model, "0", ",".join(map(str, single)), 0.0, 0.6)
    got = K.sample(simple, pos, neg, latent, **KW)["samples"]
    end = K.sampling_of(model).percent_to_sigma(0.6)
    net = pipe.family.network(pipe.model)

    def hand(args):  # plain CFG on the negative predicted again with the blocks skipped, in the window
        uncond = args.uncond_denoised
        if end <= float(args.sigma.reshape(-1)[0]):
            with skip_blocks(net, [0], single):
                uncond = args.predict(neg)
        return args.input - (uncond + (args.cond_denoised - uncond) * args.cond_scale)
    want = K.sample(replace(model, cfg_function=hand), pos, neg, latent, **KW)["samples"]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, plain, atol=1e-4)
    assert G.skip_layer_guidance_dit_simple(None, model, "", "", 0.0, 1.0)[0] is model
    one = dict(KW, cfg=1.0)  # no negative evaluated: nothing to skip
    assert torch.equal(K.sample(simple, pos, neg, latent, **one)["samples"], K.sample(model, pos, neg, latent,
                                                                                      **one)["samples"])


def test_skip_layer_guidance_sd3_skips_double_blocks_only(pipes):
    pipe = pipes["sd3"]
    model, (pos, neg) = ModelRef(pipe, "sd3"), _conds(pipe)
    latent = {"samples": torch.zeros(1, 16, 8, 8)}
    (a,) = G.skip_layer_guidance_sd3(None, model, "1", 3.0, 0.0, 1.0)
    (b,) = G.skip_layer_guidance_dit(None, model, "1", "", 3.0, 0.0, 1.0, 0.0)
    assert torch.equal(K.sample(a, pos, neg, latent, **KW)["samples"], K.sample(b, pos, neg, latent, **KW)["samples"])


def test_skip_layer_guidance_is_refused_for_unet_models(tmp_path):
    folders = make_models(tmp_path / "models")
    pipe = make_ctx(folders, Loader(folders), tmp_path).load_pipeline("tiny.safetensors")
    with pytest.raises(InvalidArgument, match="^model: SkipLayerGuidance .* not available for Stable Diffusion"):
        G.skip_layer_guidance_sd3(None, ModelRef(pipe, "tiny"), "7, 8, 9", 3.0, 0.01, 0.15)


def test_cfg_zero_star_guides_a_dit_model_too(pipes):
    pipe = pipes["sd3"]
    model, (pos, neg) = ModelRef(pipe, "sd3"), _conds(pipe)
    latent = {"samples": torch.zeros(1, 16, 8, 8)}
    (patched,) = G.cfg_zero_star(None, model)

    def zero_star(args):
        b, c = (args.input - args.uncond_denoised).flatten(), (args.input - args.cond_denoised).flatten()
        alpha = (c @ b) / (b @ b + 1e-8)
        return args.input - (alpha * args.uncond_denoised + args.cond_scale * (args.cond_denoised
                                                                             - alpha * args.uncond_denoised))
    got = K.sample(patched, pos, neg, latent, **KW)["samples"]
    want = K.sample(replace(model, cfg_function=zero_star), pos, neg, latent, **KW)["samples"]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, K.sample(model, pos, neg, latent, **KW)["samples"], atol=1e-4)
