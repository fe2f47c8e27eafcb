"""The samplers and schedules added from ComfyUI's KSampler lists, through the workflow faces: the
server's /object_info lists them for KSampler (and KSamplerSelect / BasicScheduler), KSampler runs each
on the tiny model, the CFG++ ones evaluate the negative and with a negative equal to the positive are
their base samplers, and the SamplerER_SDE / SamplerSASolver / SamplerEulerCFGpp nodes build the
samplers they name."""
import json

import pytest
import torch
from fastapi.testclient import TestClient
from test_workflows_custom_sampling import env  # noqa: F401 (the tiny model and two prompts)

from opensd.server.app import create_app
from opensd.server.settings import Settings
from opensd.workflows import object_info
from opensd.workflows import ksampler as K
from opensd.workflows import nodes_sampling_custom as S
from opensd.workflows.types import NODES, NoiseRef, SamplerRef

NEW_SAMPLERS = ["heunpp2", "dpmpp_2s_ancestral_cfg_pp", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "ddpm", "ipndm",
                "ipndm_v", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
                "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde",
                "uni_pc_bh2", "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece"]
NEW_SCHEDULERS = ["linear_quadratic", "kl_optimal"]


@pytest.fixture(scope="module")
def server_info(tmp_path_factory):
    settings = Settings(outputs_dir=tmp_path_factory.mktemp("comfy") / "out")
    with TestClient(create_app(settings), base_url="http://127.0.0.1:7860") as client:
        return client.get("/object_info").json()


def test_the_servers_object_info_lists_them(server_info):
    ks = server_info["KSampler"]["input"]["required"]
    samplers, schedulers = ks["sampler_name"][0], ks["scheduler"][0]
    assert set(NEW_SAMPLERS) <= set(samplers)
    assert schedulers[-2:] == NEW_SCHEDULERS
    # in ComfyUI's order: ..., heun, heunpp2, dpm_2, ..., deis, res_multistep, ..., er_sde, ddim, uni_pc, uni_pc_bh2
    assert samplers.index("heunpp2") == samplers.index("heun") + 1
    assert samplers[samplers.index("deis") + 1] == "res_multistep"
    assert samplers[-8:] == ["er_sde", "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc",
                             "uni_pc_bh2"]
    for node in ("KSamplerAdvanced", "KSamplerSelect"):
        assert server_info[node]["input"]["required"]["sampler_name"][0] == samplers
    assert server_info["BasicScheduler"]["input"]["required"]["scheduler"][0] == schedulers


def _run(model, pos, neg, sampler, cfg=5.0, scheduler="karras", steps=3):
    return K.sample(model, pos, neg, {"samples": torch.zeros(1, 4, 8, 8)}, seed=3, steps=steps, cfg=cfg,
                    sampler_name=sampler, scheduler=scheduler)["samples"]


@pytest.mark.parametrize("name", NEW_SAMPLERS)
def test_ksampler_runs_each_new_sampler(env, name):
    _, model, pos, neg = env
    out = _run(model, pos, neg, name)
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()
    assert not torch.allclose(out, _run(model, pos, neg, "euler"), atol=1e-4)


@pytest.mark.parametrize("scheduler", NEW_SCHEDULERS)
def test_ksampler_runs_each_new_scheduler(env, scheduler):
    _, model, pos, neg = env
    out = _run(model, pos, neg, "res_multistep", scheduler=scheduler)
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()
    assert not torch.allclose(out, _run(model, pos, neg, "res_multistep", scheduler="karras"), atol=1e-4)


@pytest.mark.parametrize("pp, plain", [
    ("res_multistep_cfg_pp", "res_multistep"), ("res_multistep_ancestral_cfg_pp", "res_multistep_ancestral"),
    ("gradient_estimation_cfg_pp", "gradient_estimation"), ("dpmpp_2s_ancestral_cfg_pp", "dpmpp_2s_ancestral"),
])
def test_cfg_pp_with_the_negative_equal_to_the_positive_is_its_base(env, pp, plain):
    _, model, pos, neg = env
    torch.testing.assert_close(_run(model, pos, pos, pp, 0.8), _run(model, pos, pos, plain, 0.8), rtol=1e-4, atol=1e-4)
    rows = []
    unet = model.pipe.model.unet
    hook = unet.register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]))
    try:
        _run(model, pos, neg, plain, 1.0)
        n_plain = sum(rows)
        _run(model, pos, neg, pp, 1.0)
    finally:
        hook.remove()
    assert sum(rows) - n_plain >= 2 * n_plain  # CFG 1 still evaluates the negative for CFG++


def _custom(env, sampler):
    call, model, pos, neg = env
    (sigmas,) = S.basic_scheduler(None, model, "karras", 4, 1.0)
    (guider,) = S.cfg_guider(None, model, pos, neg, 5.0)
    out, _ = S.sampler_custom_advanced(call, NoiseRef(7), guider, sampler, sigmas, {"samples": torch.zeros(1, 4, 8, 8)})
    return out["samples"]


def _node(name, **inputs):
    return NODES[name].fn(None, **inputs)[0]


def test_sampler_er_sde_node(env):
    defaults = {"solver_type": "ER-SDE", "max_stage": 3, "eta": 1.0, "s_noise": 1.0}
    (select,) = S.ksampler_select(None, "er_sde")
    default = _custom(env, _node("SamplerER_SDE", **defaults))
    assert torch.equal(default, _custom(env, select))
    ode = _custom(env, _node("SamplerER_SDE", **{**defaults, "solver_type": "ODE"}))
    torch.testing.assert_close(ode, _custom(env, SamplerRef("er_sde", (("solver_type", "ODE"),))))
    # the reverse-time SDE at eta 0 is the ODE; at eta 1 it is not; max_stage reaches the sampler
    rt0 = _custom(env, _node("SamplerER_SDE", **{**defaults, "solver_type": "Reverse-time SDE", "eta": 0.0}))
    torch.testing.assert_close(rt0, ode)
    for changed in ({"solver_type": "Reverse-time SDE"}, {"max_stage": 1}, {"s_noise": 0.5}):
        assert not torch.allclose(_custom(env, _node("SamplerER_SDE", **{**defaults, **changed})), default, atol=1e-5)


def test_sampler_sa_solver_node(env):
    _, model, _, _ = env
    defaults = {"model": model, "eta": 1.0, "sde_start_percent": 0.2, "sde_end_percent": 0.8, "s_noise": 1.0,
                "predictor_order": 3, "corrector_order": 4, "use_pece": False, "simple_order_2": False}
    (select,) = S.ksampler_select(None, "sa_solver")
    default = _custom(env, _node("SamplerSASolver", **defaults))
    torch.testing.assert_close(default, _custom(env, select))
    (pece,) = S.ksampler_select(None, "sa_solver_pece")
    torch.testing.assert_close(_custom(env, _node("SamplerSASolver", **{**defaults, "use_pece": True})),
                               _custom(env, pece))
    for changed in ({"eta": 0.0}, {"predictor_order": 1}, {"corrector_order": 0}, {"simple_order_2": True},
                    {"sde_end_percent": 0.3}):
        assert not torch.allclose(_custom(env, _node("SamplerSASolver", **{**defaults, **changed})), default, atol=1e-5)


def test_sampler_euler_cfgpp_node(env):
    regular = _node("SamplerEulerCFGpp", version="regular")
    assert regular == SamplerRef("euler_cfg_pp")
    check = NODES["SamplerEulerCFGpp"].check
    assert check(None, {"version": "regular"}) is None
    assert check(None, {"version": "alternative"}).startswith("SamplerEulerCFGpp: version 'alternative'")


def test_new_nodes_object_info_is_comfyuis():
    er = object_info(None, "SamplerER_SDE")["SamplerER_SDE"]
    f = {"min": 0.0, "max": 100.0, "step": 0.01, "round": False}
    assert json.dumps(er["input"]) == json.dumps({"required": {
        "solver_type": [["ER-SDE", "Reverse-time SDE", "ODE"]], "max_stage": ["INT", {"default": 3, "min": 1, "max": 3}],
        "eta": ["FLOAT", {"default": 1.0, **f, "tooltip": "Stochastic strength of reverse-time SDE.\nWhen eta=0, it "
                          "reduces to deterministic ODE. This setting doesn't apply to ER-SDE solver type."}],
        "s_noise": ["FLOAT", {"default": 1.0, **f}]}})
    assert (er["category"], er["python_module"], er["output"]) == (
        "sampling/custom_sampling/samplers", "comfy_extras.nodes_custom_sampler", ["SAMPLER"])
    pp = object_info(None, "SamplerEulerCFGpp")["SamplerEulerCFGpp"]
    assert pp["input"] == {"required": {"version": [["regular", "alternative"]]}}
    assert (pp["display_name"], pp["category"], pp["python_module"], pp.get("experimental")) == (
        "SamplerEulerCFG++", "_for_testing", "comfy_extras.nodes_advanced_samplers", True)
