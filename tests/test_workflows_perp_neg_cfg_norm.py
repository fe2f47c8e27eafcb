"""PerpNegGuider and CFGNorm (ComfyUI's comfy_extras.nodes_perpneg / nodes_cfg): the guider's
combination by hand, whole samplings against the same guidance written another way, and the
cfg-1 shortcuts."""
import pytest
import torch
from workflow_fixtures import sampling_env

from opensd.workflows import nodes_guidance as G
from opensd.workflows import nodes_model_patches as P
from opensd.workflows import nodes_sampling_custom as S
from opensd.workflows.guiders import PerpNegGuider, PostCfgArgs, Step, perp_neg
from opensd.workflows.nodes_core import clip_text_encode
from opensd.workflows.types import ClipRef, ModelRef, NoiseRef, SamplerRef


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return sampling_env(tmp_path_factory.mktemp("pn"))


def test_perp_neg_by_hand_and_an_empty_positive_is_plain_cfg():
    pos, neg, empty = torch.tensor([3.0, 1.0]), torch.tensor([1.0, 2.0]), torch.tensor([1.0, 1.0])
    # pos - empty = (2, 0), neg - empty = (0, 1): already perpendicular, so all of it is pushed away
    assert torch.allclose(perp_neg(pos, neg, empty, 0.5, 4.0), torch.tensor([1 + 4 * 2.0, 1 + 4 * -0.5]))
    # along (1, 1): neg - empty = (2, 0) has the part (1, 1) along it and (1, -1) across it
    got = perp_neg(torch.tensor([2.0, 2.0]), torch.tensor([3.0, 1.0]), empty, 1.0, 2.0)
    assert torch.allclose(got, empty + 2.0 * (torch.tensor([1.0, 1.0]) - torch.tensor([1.0, -1.0])))
    assert torch.equal(perp_neg(empty, neg, empty, 1.0, 3.0), empty + 3.0 * -(neg - empty))  # 0/0 dropped


def test_guider_skips_the_lists_it_does_not_need():
    m = ModelRef(None, "m")
    assert PerpNegGuider(m, [], [], [], 5.0, 1.0).evaluated() == ["positive", "negative", "empty_negative_prompt"]
    assert PerpNegGuider(m, [], [], [], 5.0, 0.0).evaluated() == ["positive", "empty_negative_prompt"]
    assert PerpNegGuider(m, [], [], [], 1.0, 0.0).evaluated() == ["positive"]
    g = PerpNegGuider(m, [], [], [], 1.0, 0.0)
    p = torch.full((1, 4, 2, 2), 2.0)
    assert torch.equal(g.combine({"positive": p}, Step(torch.zeros(1), torch.ones(1), None)), p)


def test_perp_neg_guider_samples_as_the_perp_neg_model_patch(env):
    call, model, pos, neg = env
    empty = clip_text_encode(None, "", ClipRef(model.pipe, "t"))[0]
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    (sigmas,) = S.basic_scheduler(None, model, "normal", 3, 1.0)
    (guider,) = G.perp_neg_guider(None, model, pos, neg, empty, 6.0, 0.7)
    (patched,) = P.perp_neg_node(None, model, empty, 0.7)
    (cfg,) = S.cfg_guider(None, patched, pos, neg, 6.0)
    a, _ = S.sampler_custom_advanced(call, NoiseRef(4), guider, SamplerRef("euler"), sigmas, latent)
    b, _ = S.sampler_custom_advanced(call, NoiseRef(4), cfg, SamplerRef("euler"), sigmas, latent)
    torch.testing.assert_close(a["samples"], b["samples"], rtol=1e-4, atol=1e-4)
    plain, _ = S.sampler_custom_advanced(call, NoiseRef(4), S.cfg_guider(None, model, pos, empty, 6.0)[0],
                                         SamplerRef("euler"), sigmas, latent)
    (zero,) = G.perp_neg_guider(None, model, pos, neg, empty, 6.0, 0.0)  # neg_scale 0: CFG over the empty prompt
    c, _ = S.sampler_custom_advanced(call, NoiseRef(4), zero, SamplerRef("euler"), sigmas, latent)
    torch.testing.assert_close(c["samples"], plain["samples"], rtol=1e-4, atol=1e-4)
    seen = []
    recording = ModelRef(model.pipe, "m", post_cfg_functions=(lambda a: seen.append(a.uncond) or a.denoised,))
    (with_post,) = G.perp_neg_guider(None, recording, pos, neg, empty, 6.0, 0.7)
    S.sampler_custom_advanced(call, NoiseRef(4), with_post, SamplerRef("euler"), sigmas, latent)
    assert len(seen) == 3 and all(u is neg for u in seen)  # post-CFG functions see the negative list


def test_cfg_norm_caps_each_pixels_length_at_the_positives():
    cond = torch.tensor([[[[3.0]], [[4.0]]]])  # length 5
    big, small = cond * 2, cond * 0.5
    fn = G.cfg_norm_function(0.8)

    def args(denoised):
        return PostCfgArgs(denoised, cond, torch.zeros_like(cond), 5.0, cond, torch.ones(1), [], None, None)
    assert torch.allclose(fn(args(big)), cond * 0.8, atol=1e-6)  # scaled down to length 5, then 0.8
    assert torch.allclose(fn(args(small)), small * 0.8)  # never scaled up
