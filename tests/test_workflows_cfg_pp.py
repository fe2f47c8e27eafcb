"""ComfyUI's CFG++ samplers (euler_cfg_pp, dpmpp_2m_cfg_pp) through KSampler: the guider evaluates the
negative even at CFG 1 (ComfyUI's disable_cfg1_optimization) and the sampler steps with its
prediction as the unconditional estimate; with a negative equal to the positive they are Euler /
DPM++ 2M. And the other samplers issue 22 added to ComfyUI's list run through KSampler."""
import pytest
import torch
from test_workflows_custom_sampling import env  # noqa: F401 (the tiny model and two prompts)

from opensd.workflows import ksampler as K
from opensd.workflows.nodes_core import SAMPLERS


def _run(model, pos, neg, sampler, cfg, steps=4):
    return K.sample(model, pos, neg, {"samples": torch.zeros(1, 4, 8, 8)}, seed=3, steps=steps, cfg=cfg,
                    sampler_name=sampler, scheduler="karras")["samples"]


def test_cfg_pp_evaluates_the_negative_at_cfg_one(env):
    _, model, pos, neg = env
    rows = []
    unet = model.pipe.model.unet
    hook = unet.register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]))
    try:
        plain = _run(model, pos, neg, "euler", 1.0)
        n_plain = sum(rows)
        pp = _run(model, pos, neg, "euler_cfg_pp", 1.0)
    finally:
        hook.remove()
    assert sum(rows) - n_plain == 2 * n_plain  # positive and negative rows every step
    assert not torch.allclose(plain, pp)


@pytest.mark.parametrize("pp, plain", [("euler_cfg_pp", "euler"), ("dpmpp_2m_cfg_pp", "dpmpp_2m")])
def test_with_the_negative_equal_to_the_positive_cfg_pp_is_its_base_sampler(env, pp, plain):
    _, model, pos, _ = env
    torch.testing.assert_close(_run(model, pos, pos, pp, 0.8), _run(model, pos, pos, plain, 0.8),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["dpm_fast", "dpm_adaptive", "deis", "euler_cfg_pp", "dpmpp_2m_cfg_pp"])
def test_new_samplers_are_in_ksamplers_list_and_run(env, name):
    _, model, pos, neg = env
    assert name in SAMPLERS
    out = _run(model, pos, neg, name, 5.0, steps=3)
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()
