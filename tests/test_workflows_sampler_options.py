"""ComfyUI's sampler-option nodes (SamplerEulerAncestral, SamplerDPMPP_2M_SDE, SamplerDPMAdaptative, ...)
through SamplerCustomAdvanced on a tiny model: at their defaults each is KSamplerSelect's sampler,
each option reaches the sampler (it changes the result, and where a setting has a known limit, the
result is that limit's), s_noise scales only the noise, and TCD steps on the model's own schedule."""
import math

import pytest
import torch
from workflow_fixtures import sampling_env

from opensd.sampling.samplers import sampler_options
from opensd.workflows import nodes_sampling_custom as S
from opensd.workflows.nodes_model_patches import model_sampling_discrete
from opensd.workflows.types import NODES, NoiseRef, SamplerRef


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return sampling_env(tmp_path_factory.mktemp("so"))


def node_sampler(name: str, **changes) -> SamplerRef:
    """The node's SAMPLER with its inputs at ComfyUI's defaults (the first choice of a list) but `changes`."""
    node = NODES[name]
    inputs = {k: (spec[1]["default"] if spec[1] else spec[0][0]) for k, spec in node.required.items()}
    (sampler,) = node.fn(None, **{**inputs, **changes})
    return sampler


def run(env, sampler: SamplerRef, sigmas=None, cfg=5.0, model=None) -> torch.Tensor:
    call, plain, pos, neg = env
    model = model or plain
    if sigmas is None:
        (sigmas,) = S.basic_scheduler(None, model, "karras", 4, 1.0)
    (guider,) = S.cfg_guider(None, model, pos, neg, cfg)
    out, _ = S.sampler_custom_advanced(call, NoiseRef(7), guider, sampler, sigmas, {"samples": torch.zeros(1, 4, 8, 8)})
    return out["samples"]


def test_every_input_but_noise_device_is_an_option_of_the_sampler():
    for name in ("SamplerEulerAncestral", "SamplerEulerAncestralCFGPP", "SamplerLMS", "SamplerDPMPP_3M_SDE",
                 "SamplerDPMPP_2M_SDE", "SamplerDPMPP_SDE", "SamplerDPMPP_2S_Ancestral", "SamplerDPMAdaptative",
                 "SamplerTCD"):
        sampler = node_sampler(name)
        given = [k for k, _ in sampler.options]
        assert given == [k for k in NODES[name].required if k != "noise_device"], name
        assert set(given) <= set(sampler_options(sampler.name)), name


# node, the KSamplerSelect name its defaults equal, an option set off its default
CASES = [
    ("SamplerEulerAncestral", "euler_ancestral", {"eta": 0.5}),
    ("SamplerEulerAncestral", "euler_ancestral", {"s_noise": 0.5}),
    ("SamplerEulerAncestralCFGPP", "euler_ancestral_cfg_pp", {"eta": 0.5}),
    ("SamplerEulerAncestralCFGPP", "euler_ancestral_cfg_pp", {"s_noise": 2.0}),
    ("SamplerLMS", "lms", {"order": 2}),
    ("SamplerDPMPP_3M_SDE", "dpmpp_3m_sde_gpu", {"eta": 0.5}),
    ("SamplerDPMPP_3M_SDE", "dpmpp_3m_sde", {"s_noise": 0.5, "noise_device": "cpu"}),
    ("SamplerDPMPP_2M_SDE", "dpmpp_2m_sde_gpu", {"solver_type": "heun"}),
    ("SamplerDPMPP_2M_SDE", "dpmpp_2m_sde", {"eta": 0.5, "noise_device": "cpu"}),
    ("SamplerDPMPP_2M_SDE", "dpmpp_2m_sde", {"s_noise": 0.5}),
    ("SamplerDPMPP_SDE", "dpmpp_sde_gpu", {"r": 0.3}),
    ("SamplerDPMPP_SDE", "dpmpp_sde", {"eta": 0.5, "s_noise": 0.5}),
    ("SamplerDPMPP_2S_Ancestral", "dpmpp_2s_ancestral", {"eta": 0.5}),
    ("SamplerDPMPP_2S_Ancestral", "dpmpp_2s_ancestral", {"s_noise": 0.5}),
    ("SamplerDPMAdaptative", "dpm_adaptive", {"rtol": 0.01, "atol": 0.001}),
    ("SamplerDPMAdaptative", "dpm_adaptive", {"order": 2}),
    ("SamplerDPMAdaptative", "dpm_adaptive", {"h_init": 0.2, "icoeff": 0.5}),
    ("SamplerDPMAdaptative", "dpm_adaptive", {"eta": 1.0}),
]


@pytest.mark.parametrize("name, select, changed", CASES)
def test_defaults_are_ksampler_selects_sampler_and_each_option_reaches_it(env, name, select, changed):
    (plain,) = S.ksampler_select(None, select)
    default = run(env, node_sampler(name))
    assert torch.equal(default, run(env, plain))
    assert not torch.allclose(run(env, node_sampler(name, **changed)), default, atol=1e-5)


@pytest.mark.parametrize("name, limit, same_as", [
    ("SamplerEulerAncestral", {"eta": 0.0}, SamplerRef("euler")),
    ("SamplerEulerAncestralCFGPP", {"eta": 0.0}, SamplerRef("euler_cfg_pp")),
    ("SamplerDPMPP_2M_SDE", {"eta": 0.0}, SamplerRef("dpmpp_2m")),
    ("SamplerDPMPP_SDE", {"eta": 0.0}, SamplerRef("dpmpp_2s_ancestral", (("eta", 0.0),))),
    ("SamplerLMS", {"order": 1}, SamplerRef("euler")),
])
def test_option_limits_are_the_samplers_they_reduce_to(env, name, limit, same_as):
    torch.testing.assert_close(run(env, node_sampler(name, **limit)), run(env, same_as), rtol=1e-4, atol=1e-4)


def test_s_noise_scales_only_the_noise(env):
    # one ancestral step: x1 = x0 + d (sigma_down - sigma) + s_noise sigma_up z, linear in s_noise
    sigmas = torch.tensor([6.0, 2.0])
    out = {s: run(env, node_sampler("SamplerEulerAncestral", s_noise=s), sigmas) for s in (0.0, 1.0, 2.5)}
    torch.testing.assert_close(out[2.5] - out[0.0], 2.5 * (out[1.0] - out[0.0]), rtol=1e-4, atol=1e-4)
    assert (out[1.0] - out[0.0]).abs().max() > 0.1


def test_tcd_steps_on_the_models_own_schedule(env):
    """On a zero-terminal-SNR model with sigmas from its own table, TCD at eta 0 is Euler down to the
    table's smallest sigma, rescaled by 1 / sqrt(1 + sigma_min^2) (TCD ends on timestep 0's VP point);
    on another schedule's table its intermediate sigmas would miss the steps."""
    _, model, _, _ = env
    (zsnr,) = model_sampling_discrete(None, model, "eps", True)
    (sigmas,) = S.basic_scheduler(None, zsnr, "simple", 4, 0.5)  # table entries from 1.77 down
    sigma_min = float(zsnr.sampling.schedule.sigmas[0])
    tcd = run(env, node_sampler("SamplerTCD", eta=0.0), sigmas, model=zsnr)
    euler = run(env, SamplerRef("euler"), torch.cat([sigmas[:-1], torch.tensor([sigma_min])]), model=zsnr)
    torch.testing.assert_close(tcd, euler / math.sqrt(1 + sigma_min ** 2), rtol=1e-5, atol=2e-4)
    default = run(env, node_sampler("SamplerTCD"), sigmas, model=zsnr)
    assert not torch.allclose(default, tcd, atol=1e-4)
