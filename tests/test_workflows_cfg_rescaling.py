"""Epsilon Scaling, TemporalScoreRescaling (comfy_extras.nodes_eps), RenormCFG (nodes_lumina2) and
ManualSigmas (nodes_custom_sampler): their formulas against values worked out by hand from
ComfyUI's, and Epsilon Scaling through a whole sampling against the same rescaling written as a
sampler_cfg_function."""
import math
from dataclasses import replace

import pytest
import torch
from workflow_fixtures import sampling_env

from opensd.errors import InvalidArgument
from opensd.workflows import ksampler as K
from opensd.workflows import nodes_cfg_rescaling as R
from opensd.workflows import nodes_sigmas as S
from opensd.workflows.guiders import CfgArgs, PostCfgArgs
from opensd.workflows.types import ModelRef

KW = dict(seed=3, steps=3, cfg=5.0, sampler_name="euler", scheduler="normal")


def _post(denoised, x, sigma, cond=None, uncond=None):
    cond = denoised if cond is None else cond
    uncond = denoised if uncond is None else uncond
    return PostCfgArgs(denoised, cond, uncond, 5.0, x, torch.tensor([sigma]), [], None, None)


def test_epsilon_scaling_divides_the_predicted_noise():
    x, d = torch.tensor([[3.0, -1.0]]), torch.tensor([[1.0, 1.0]])
    out = R.epsilon_scaling_function(1.25)(_post(d, x, 2.0))
    # x - (x - d) / 1.25: 3 - 2 / 1.25 = 1.4; -1 - (-2) / 1.25 = 0.6
    torch.testing.assert_close(out, torch.tensor([[1.4, 0.6]]))


def test_tsr_on_a_variance_exploding_model():
    x, d = torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    # sigma 2: snr = 1 / 4, v = 0.5^2; r = (0.0625 + 1) / (0.0625 / 0.8 + 1); alpha = 1
    r = (0.25 * 0.25 + 1) / (0.25 * 0.25 / 0.8 + 1)
    out = R.tsr_function(0.8, 0.5, flow=False)(_post(d, x, 2.0))
    torch.testing.assert_close(out, x + r * (d - x))
    assert r < 1


def test_tsr_on_a_flow_model_and_its_no_op_cases():
    x, d = torch.tensor([[2.0, -4.0]]), torch.tensor([[0.5, 0.5]])
    # sigma 0.25: half log snr = log(0.75 / 0.25) = log 3, snr = 9, alpha = 0.25 * 3 = 0.75
    r = (9 * 4.0 + 1) / (9 * 4.0 / 1.5 + 1)
    out = R.tsr_function(1.5, 2.0, flow=True)(_post(d, x, 0.25))
    torch.testing.assert_close(out, x / 0.75 + r * (d - x / 0.75))
    assert R.tsr_function(1.0, 2.0, flow=True)(_post(d, x, 0.25)) is d  # k = 1: no rescaling
    assert R.tsr_function(0.9, 2.0, flow=False)(_post(d, x, 0.0)) is d  # no noise left
    assert float(R.tsr_factor(torch.tensor(math.inf), 0.7, 1.0)) == pytest.approx(0.7)


def test_renorm_cfg_caps_the_guided_norm_and_truncates():
    x = torch.zeros(2, 1, 2)
    cond = torch.tensor([[[3.0, 4.0]], [[30.0, 40.0]]])   # norms 5 and 50
    uncond = torch.tensor([[[0.0, 0.0]], [[30.0, 40.0]]])
    args = CfgArgs(x - cond, x - uncond, 2.0, x, torch.tensor([10.0]), cond, uncond, None)
    fn = R.renorm_cfg_function(cfg_trunc=100.0, renorm=1.5)
    denoised = x - fn(args)
    # item 0: guided (6, 8), norm 10 >= 1.5 * 5: scaled to norm 7.5; item 1: guided = cond, 50 < 75
    torch.testing.assert_close(denoised[0], torch.tensor([[4.5, 6.0]]))
    torch.testing.assert_close(denoised[1], cond[1])
    no_cap = x - R.renorm_cfg_function(100.0, 0.0)(args)
    torch.testing.assert_close(no_cap[0], torch.tensor([[6.0, 8.0]]))
    truncated = x - R.renorm_cfg_function(5.0, 1.5)(args)  # sigma 10 >= 5: the positive alone
    torch.testing.assert_close(truncated, cond)


def test_zero_scaling_factor_is_guarded():
    fn = R.epsilon_scaling(None, ModelRef(None, "m"), 0.0)[0].post_cfg_functions[-1]
    out = fn(_post(torch.ones(1, 1), torch.ones(1, 1), 1.0))  # x == denoised: no division by zero
    assert torch.isfinite(out).all()


def test_manual_sigmas_reads_numbers_as_comfyui():
    (s,) = S.manual_sigmas(None, "14.6, 8,.5 ; -1 and +2 1e-3")
    torch.testing.assert_close(s, torch.tensor([14.6, 8.0, 0.5, -1.0, 2.0, 1.0, -3.0]))
    assert S.manual_sigmas(None, "none")[0].shape == (0,)
    with pytest.raises(InvalidArgument, match="'1..5' is not a number"):
        S.manual_sigmas(None, "3, 1..5")
    with pytest.raises(InvalidArgument, match="more than 100,000 numbers"):
        S.manual_sigmas(None, "1," * 100_001)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return sampling_env(tmp_path_factory.mktemp("eps"))[1:]


def test_epsilon_scaling_guides_a_whole_sampling(env):
    model, pos, neg = env
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    (patched,) = R.epsilon_scaling(None, model, 1.2)
    got = K.sample(patched, pos, neg, latent, **KW)["samples"]

    def scaled(args):  # x - denoised, the noise of plain CFG divided by 1.2
        cfg = args.uncond_denoised + args.cond_scale * (args.cond_denoised - args.uncond_denoised)
        return (args.input - cfg) / 1.2
    want = K.sample(replace(model, cfg_function=scaled), pos, neg, latent, **KW)["samples"]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, K.sample(model, pos, neg, latent, **KW)["samples"], atol=1e-3)
    (tsr,) = R.temporal_score_rescaling(None, model, 0.5, 1.0)
    assert not torch.allclose(K.sample(tsr, pos, neg, latent, **KW)["samples"],
                              K.sample(model, pos, neg, latent, **KW)["samples"], atol=1e-3)


def test_renorm_cfg_node_in_a_sampling(env):
    model, pos, neg = env
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    plain = K.sample(model, pos, neg, latent, **KW)["samples"]
    # every sigma of SD's schedule is below 100 and renorm 0 caps nothing: plain CFG
    torch.testing.assert_close(K.sample(R.renorm_cfg(None, model, 100.0, 0.0)[0], pos, neg, latent, **KW)["samples"],
                               plain, rtol=1e-4, atol=1e-4)
    # truncated from the start: the positive's prediction alone, CFG 1
    positive_only = K.sample(model, pos, neg, latent, **{**KW, "cfg": 1.0})["samples"]
    torch.testing.assert_close(K.sample(R.renorm_cfg(None, model, 0.0, 1.0)[0], pos, neg, latent, **KW)["samples"],
                               positive_only, rtol=1e-4, atol=1e-4)
