"""ComfyUI's post-CFG guidance patches, CFGZeroStar and PerturbedAttentionGuidance: their formulas
against hand computations, the perturbed middle-block self-attention against a hand-written
replacement, and whole samplings on a tiny model against the same guidance written as a
sampler_cfg_function (an independent path through the guider)."""
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from workflow_fixtures import sampling_env

from opensd.errors import InvalidArgument
from opensd.families import FLUX
from opensd.workflows import ksampler as K
from opensd.workflows import nodes_guidance as G
from opensd.workflows.guiders import PostCfgArgs
from opensd.workflows.types import ModelRef
from opensd.workflows.unet_patches import middle_self_attention_as_values

KW = dict(seed=3, steps=3, cfg=5.0, sampler_name="euler", scheduler="normal")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return sampling_env(tmp_path_factory.mktemp("guidance"))[1:]  # (model, positive, negative)


def test_cfg_zero_star_scales_the_negative_per_image_by_its_projection():
    g = torch.Generator().manual_seed(0)
    x, c, u = (torch.randn(2, 4, 3, 3, generator=g) for _ in range(3))
    s = 6.0
    cfg = u + s * (c - u)
    out = G.cfg_zero_star_function(PostCfgArgs(cfg, c, u, s, x, torch.tensor(1.0), [], None, None))
    for i in range(2):
        a, b = (x[i] - c[i]).flatten().double(), (x[i] - u[i]).flatten().double()
        alpha = float(a @ b / (b @ b + 1e-8))
        torch.testing.assert_close(out[i], alpha * u[i] + s * (c[i] - alpha * u[i]), rtol=1e-5, atol=1e-5)
    assert (optimal := G.optimized_scale(torch.tensor([[2.0, 4.0]]), torch.tensor([[1.0, 2.0]]))).shape == (1, 1)
    assert optimal.item() == pytest.approx(2.0)


def _as_cfg_function(post):
    """A sampler_cfg_function doing plain CFG, then `post(cfg, args)`; returns x - denoised."""
    def fn(args):
        cfg = args.uncond_denoised + args.cond_scale * (args.cond_denoised - args.uncond_denoised)
        return args.input - post(cfg, args)
    return fn


def test_cfg_zero_star_node_guides_a_whole_sampling(env):
    model, pos, neg = env
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    (patched,) = G.cfg_zero_star(None, model)
    got = K.sample(patched, pos, neg, latent, **KW)["samples"]

    def zero_star(cfg, a):
        b, c = (a.input - a.uncond_denoised).flatten(), (a.input - a.cond_denoised).flatten()
        alpha = (c @ b) / (b @ b + 1e-8)
        return alpha * a.uncond_denoised + a.cond_scale * (a.cond_denoised - alpha * a.uncond_denoised)
    want = K.sample(replace(model, cfg_function=_as_cfg_function(zero_star)), pos, neg, latent, **KW)["samples"]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, K.sample(model, pos, neg, latent, **KW)["samples"], atol=1e-3)


def _identity_attention(unet):
    """The middle block's self-attentions replaced by hand: each returns to_out(to_v(x))."""
    blocks = [m for m in unet.middle_block.modules() if hasattr(m, "attn1")]
    saved = [b.attn1.forward for b in blocks]
    for b in blocks:
        b.attn1.forward = lambda x, context=None, a=b.attn1: a.to_out(a.to_v(x))
    return blocks, saved


def test_middle_self_attention_as_values_only_inside_the_block(env):
    model, pos, _ = env
    unet = model.pipe.model.unet
    x, t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2)), torch.tensor([400.0])
    with torch.no_grad():
        plain = unet(x, t, pos[0][0])
        with middle_self_attention_as_values(unet):
            patched = unet(x, t, pos[0][0])
        after = unet(x, t, pos[0][0])
        blocks, saved = _identity_attention(unet)
        try:
            by_hand = unet(x, t, pos[0][0])
        finally:
            for b, f in zip(blocks, saved):
                b.attn1.forward = f
    assert blocks and torch.equal(after, plain) and not torch.allclose(patched, plain)
    torch.testing.assert_close(patched, by_hand)


def test_pag_pushes_away_from_the_perturbed_positive(env):
    model, pos, neg = env
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    plain = K.sample(model, pos, neg, latent, **KW)["samples"]
    (off,) = G.perturbed_attention_guidance(None, model, 0.0)
    assert torch.equal(K.sample(off, pos, neg, latent, **KW)["samples"], plain)
    (pag,) = G.perturbed_attention_guidance(None, model, 2.5)
    got = K.sample(pag, pos, neg, latent, **KW)["samples"]

    def push(cfg, a):
        blocks, saved = _identity_attention(model.pipe.model.unet)
        try:
            perturbed = a.predict(pos)
        finally:
            for b, f in zip(blocks, saved):
                b.attn1.forward = f
        return cfg + (a.cond_denoised - perturbed) * 2.5
    want = K.sample(replace(model, cfg_function=_as_cfg_function(push)), pos, neg, latent, **KW)["samples"]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, plain, atol=1e-3)


def test_pag_is_refused_for_models_without_a_unet():
    flux = ModelRef(SimpleNamespace(family=FLUX), "flux")
    with pytest.raises(InvalidArgument, match="^model: PerturbedAttentionGuidance .* not available for Flux"):
        G.perturbed_attention_guidance(None, flux, 3.0)
