"""A1111's noise-schedule settings (sampling/schedule_options.py): the sigmas against values worked
out by hand from A1111's formulas, defaults that change nothing, the model's schedule rescaled
(zero terminal SNR, fp16 downcast), the SGM noise multiplier, validation, and the infotext keys
(the faces: test_schedule_options_faces.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from opensd.errors import InvalidArgument
from opensd.pipeline.infotext_params import recorded
from opensd.pipeline.params import Params
from opensd.sampling import schedule_options as SO
from opensd.sampling.schedules import (DiscreteSchedule, beta_sigmas, exponential, make_sigmas, normal_sigmas,
                                       scaled_linear_alphas_cumprod)
from test_refiner import models  # noqa: F401 (an SDXL base and refiner)
from test_sampler_faces import ckpt, pipe  # noqa: F401 (the tiny checkpoint and its pipeline)

MODEL = DiscreteSchedule(scaled_linear_alphas_cumprod())


def karras_by_hand(lo: float, hi: float, n: int, rho: float) -> list[float]:
    top, bottom = hi ** (1 / rho), lo ** (1 / rho)
    return [(top + i / (n - 1) * (bottom - top)) ** rho for i in range(n)] + [0.0]


# --- sigmas ---------------------------------------------------------------------------------------

def test_karras_takes_the_set_sigma_range_and_rho():
    got = make_sigmas("karras", MODEL, 4, "dpmpp_2m", options={"sigma_min": 0.1, "sigma_max": 10.0, "rho": 5.0})
    assert torch.allclose(got, torch.tensor(karras_by_hand(0.1, 10.0, 4, 5.0)), rtol=1e-6)
    only_max = make_sigmas("karras", MODEL, 4, "dpmpp_2m", options={"sigma_max": 10.0})
    assert torch.allclose(only_max, torch.tensor(karras_by_hand(MODEL.sigma_min, 10.0, 4, 7.0)), rtol=1e-6)
    old = make_sigmas("karras", MODEL, 4, "dpmpp_2m", options={"use_old_karras_scheduler_sigmas": True})
    assert torch.allclose(old, torch.tensor(karras_by_hand(0.1, 10.0, 4, 7.0)), rtol=1e-6)
    assert math.isclose(got[0], 10.0, rel_tol=1e-6) and math.isclose(got[3], 0.1, rel_tol=1e-6)


def test_the_range_reaches_exponential_and_sgm_uniform_but_not_the_models_own_sigmas():
    got = make_sigmas("exponential", MODEL, 3, "dpmpp_2m_sde", options={"sigma_min": 0.5, "sigma_max": 8.0})
    assert torch.allclose(got, torch.tensor([8.0, 2.0, 0.5, 0.0]), rtol=1e-6)  # log-even: ratio 4
    sgm = make_sigmas("sgm_uniform", MODEL, 2, "euler", options={"sigma_max": 10.0})
    t_hi = float(MODEL.sigma_to_t(torch.tensor(10.0)))  # A1111: linspace(t(max), t(min), n + 1)[:-1]
    assert torch.allclose(sgm[:2], MODEL.t_to_sigma(torch.tensor([t_hi, t_hi / 2])), rtol=1e-6)
    assert math.isclose(sgm[0], 10.0, rel_tol=1e-5) and sgm[-1] == 0
    plain = make_sigmas("normal", MODEL, 3, "euler")
    assert torch.equal(make_sigmas("normal", MODEL, 3, "euler", options={"sigma_max": 10.0}), plain)


@pytest.mark.parametrize("schedule,sampler", [("karras", "dpmpp_2m"), ("normal", "euler"), ("exponential", None),
                                              ("sgm_uniform", "euler"), ("kl_optimal", "euler"), ("beta", "euler"),
                                              ("normal", "uni_pc"), ("ddim_uniform", "ddim")])
def test_default_values_give_todays_sigmas(schedule, sampler):
    today = make_sigmas(schedule, MODEL, 7, sampler)
    defaults = {name: default for name, (default, _) in SO.SETTINGS.items()}
    assert torch.equal(make_sigmas(schedule, MODEL, 7, sampler, options=defaults, txt2img=True), today)
    same_as_model = {"sigma_min": MODEL.sigma_min, "sigma_max": MODEL.sigma_max, "rho": 7.0}
    assert torch.equal(make_sigmas(schedule, MODEL, 7, sampler, options=same_as_model), today)


def test_always_discard_next_to_last_sigma():
    on = {"always_discard_next_to_last_sigma": True}
    five = normal_sigmas(MODEL, 5)
    assert torch.equal(make_sigmas("normal", MODEL, 4, "euler", options=on), torch.cat([five[:4], five[5:]]))
    assert torch.equal(make_sigmas("karras", MODEL, 4, "dpm_2", options=on), make_sigmas("karras", MODEL, 4, "dpm_2"))
    # A1111's DDIM is a timestep sampler: "discard" runs its grid for one more step
    assert torch.equal(make_sigmas("ddim_uniform", MODEL, 4, "ddim", options=on),
                       make_sigmas("ddim_uniform", MODEL, 5, "ddim"))
    assert torch.equal(make_sigmas("normal", MODEL, 4, "uni_pc", options=on), make_sigmas("normal", MODEL, 5, "uni_pc"))


def test_unipc_skip_types_in_txt2img_only():
    quad = make_sigmas("normal", MODEL, 3, "uni_pc", options={"uni_pc_skip_type": "time_quadratic"}, txt2img=True)
    t = [(1 + k / 3 * (0.001 ** 0.5 - 1)) ** 2 * 1000 - 1 for k in range(3)]  # sqrt-even in t from 1 to 1/1000
    assert torch.allclose(quad[:3], MODEL.t_to_sigma(torch.tensor(t)), rtol=1e-5) and quad[3] == 0
    log = make_sigmas("normal", MODEL, 3, "uni_pc", options={"uni_pc_skip_type": "logSNR"}, txt2img=True)
    four = exponential(MODEL.sigma_min, MODEL.sigma_max, 4)
    assert torch.equal(log, torch.cat([four[:3], four[4:]]))
    assert torch.equal(make_sigmas("normal", MODEL, 3, "uni_pc", options={"uni_pc_skip_type": "logSNR"}),
                       make_sigmas("normal", MODEL, 3, "uni_pc"))  # img2img and hires keep time_uniform


def test_beta_schedule_takes_its_distribution():
    got = make_sigmas("beta", MODEL, 5, "euler", options={"beta_dist_alpha": 0.3, "beta_dist_beta": 0.9})
    assert torch.equal(got, beta_sigmas(MODEL, 5, 0.3, 0.9))
    assert not torch.equal(got, make_sigmas("beta", MODEL, 5, "euler"))


# --- the model's schedule --------------------------------------------------------------------------

def test_zero_terminal_snr_rescale_is_lin_et_al_with_a1111s_last_value():
    ac = scaled_linear_alphas_cumprod()
    new = SO.rescale_zero_terminal_snr(ac)
    root, r0, rT = ac.sqrt(), ac[0].sqrt(), ac[-1].sqrt()
    by_hand = ((root - rT) * r0 / (r0 - rT)) ** 2
    assert torch.allclose(new[:-1], by_hand[:-1], rtol=1e-12) and new[0] == ac[0]
    assert new[-1] == 4.8973451890853435e-08
    sched = DiscreteSchedule(*SO.model_alphas(ac, {"sd_noise_schedule": "Zero Terminal SNR"}))
    assert math.isclose(sched.sigma_max, math.sqrt((1 - 4.8973451890853435e-08) / 4.8973451890853435e-08), rel_tol=1e-6)
    assert math.isclose(sched.sigma_min, MODEL.sigma_min, rel_tol=1e-6)


def test_downcast_alphas_cumprod_computes_sigmas_in_fp16():
    ac = scaled_linear_alphas_cumprod()
    sched = DiscreteSchedule(*SO.model_alphas(ac, {"use_downcasted_alpha_bar": True}))
    first = float(torch.tensor(ac[0].item(), dtype=torch.float16))  # 0.99915 rounds to 0.99902...
    assert sched.sigma_min == float(torch.tensor((1 - first) / first, dtype=torch.float16) ** 0.5) == 0.03125
    assert sched.sigma_min != MODEL.sigma_min


def test_the_pipeline_samples_on_the_rescaled_schedule_and_restores_it(pipe):
    kw = dict(steps=3, seed=2, width=64, height=64, sampler="Euler")
    plain = np.asarray(pipe.txt2img("a cat", **kw)[0])
    ztsnr = np.asarray(pipe.txt2img("a cat", schedule_options={"sd_noise_schedule": "Zero Terminal SNR"}, **kw)[0])
    assert (plain != ztsnr).any()
    assert math.isclose(pipe.schedule.sigma_max, MODEL.sigma_max, rel_tol=1e-6)
    assert (np.asarray(pipe.txt2img("a cat", **kw)[0]) == plain).all()


def test_sgm_noise_multiplier_scales_the_first_noise_by_sqrt_one_plus_sigma_squared(pipe, monkeypatch):
    starts = []

    def first_latent(p, x, sigmas, *a, **k):
        starts.append((x.clone(), float(sigmas[0])))
        return x

    monkeypatch.setattr(pipe, "_sample", first_latent)
    kw = dict(steps=3, seed=2, width=64, height=64)
    for sampler, options in [("Euler", {}), ("Euler", {"sgm_noise_multiplier": True}),
                             ("DDIM", {"sgm_noise_multiplier": True}), ("DDIM", {})]:
        pipe.txt2img("a cat", sampler=sampler, schedule_options=options, **kw)
    (plain, s), (sgm, s2), (ddim_sgm, _), (ddim, _) = starts
    assert s == s2 and torch.allclose(sgm, plain * math.sqrt(1 + s * s) / s, rtol=1e-5)
    assert torch.equal(ddim_sgm, ddim)  # A1111's timestep samplers take no SGM multiplier


# --- validation and the faces ----------------------------------------------------------------------

@pytest.mark.parametrize("options,named", [
    ({"sigma_min": -1.0}, "sigma_min"), ({"rho": float("nan")}, "rho"), ({"sigma_max": "big"}, "sigma_max"),
    ({"sd_noise_schedule": "Cosine"}, "sd_noise_schedule"), ({"beta_dist_alpha": 0}, "beta_dist_alpha"),
    ({"sigma_min": 5.0, "sigma_max": 1.0}, "sigma_min"), ({"no_such": 1}, "no_such"),
    ({"use_downcasted_alpha_bar": True, "sd_noise_schedule": "Zero Terminal SNR"}, "use_downcasted_alpha_bar"),
])
def test_bad_values_name_the_setting(options, named):
    with pytest.raises(InvalidArgument, match=f"schedule_options.{named}"):
        Params(schedule_options=options, width=64, height=64).validate()


def test_a_range_that_crosses_the_models_is_refused_when_sampling():
    with pytest.raises(InvalidArgument, match="sigma_min: 20.0 must be below sigma_max"):
        make_sigmas("karras", MODEL, 4, "dpmpp_2m", options={"sigma_min": 20.0})


def test_infotext_keys_are_a1111s_and_read_back():
    options = {"sigma_min": 0.1, "sigma_max": 10.0, "rho": 5.0, "always_discard_next_to_last_sigma": True,
               "sd_noise_schedule": "Zero Terminal SNR", "sgm_noise_multiplier": True}
    keys = SO.written("dpmpp_2m", "karras", options, True, False, MODEL.sigma_min, MODEL.sigma_max)
    assert keys == {"Schedule min sigma": 0.1, "Schedule max sigma": 10.0, "Schedule rho": 5.0,
                    "Discard penultimate sigma": True, "Noise Schedule": "Zero Terminal SNR",
                    "SGM noise multiplier": True}
    text = {k: str(v) for k, v in keys.items()}
    assert SO.read(text) == options
    assert SO.written("euler", "beta", {}, False, False, 0.03, 14.6) == {"Beta schedule alpha": 0.6,
                                                                       "Beta schedule beta": 0.6}
    assert SO.read({"Beta scheduler alpha": "0.5"}) == {"beta_dist_alpha": 0.5}  # A1111's paste label
    assert recorded("p", "", {"Schedule rho": "4", "Steps": "3"}).schedule_options == {"rho": 4.0}
    with pytest.raises(InvalidArgument, match="Schedule rho"):
        SO.read({"Schedule rho": "steep"})


def test_zero_terminal_snr_reaches_the_refiner_too(models):
    from opensd.pipeline.refiner import Refiner

    _, base, ref = models
    seen = []
    hook = ref.model.unet.register_forward_pre_hook(lambda module, args: seen.append(ref.schedule.sigma_max))
    try:
        base.txt2img("a cat", refiner=Refiner(ref, 0.0), steps=2, seed=1, width=64, height=64,
                     schedule_options={"sd_noise_schedule": "Zero Terminal SNR"})
    finally:
        hook.remove()
    assert seen and all(math.isclose(s, 4518.76, rel_tol=1e-4) for s in seen)  # A1111 rescales the refiner too
    assert math.isclose(ref.schedule.sigma_max, MODEL.sigma_max, rel_tol=1e-6)


def test_quantization_takes_the_nearest_timestep():
    quantized = DiscreteSchedule(scaled_linear_alphas_cumprod(), quantize=True)
    lo, hi = MODEL.log_sigmas[10].item(), MODEL.log_sigmas[11].item()
    sigmas = torch.tensor([math.exp(lo + 0.3 * (hi - lo)), math.exp(lo + 0.7 * (hi - lo)), MODEL.sigmas[500].item()])
    assert MODEL.sigma_to_t(sigmas).tolist() == pytest.approx([10.3, 10.7, 500], abs=1e-3)
    assert quantized.sigma_to_t(sigmas).tolist() == [10.0, 11.0, 500.0]  # k-diffusion's nearest, in log sigma


def test_enable_quantization_gives_the_unet_whole_timesteps(pipe):
    seen = []
    hook = pipe.model.unet.register_forward_pre_hook(lambda module, args: seen.append(args[1].clone()))
    kw = dict(steps=4, seed=2, width=64, height=64, sampler="Euler", scheduler="karras")
    try:
        plain = np.asarray(pipe.txt2img("a cat", **kw)[0])
        loose, seen[:] = list(seen), []
        quantized = np.asarray(pipe.txt2img("a cat", schedule_options={"enable_quantization": True}, **kw)[0])
    finally:
        hook.remove()
    assert any((t != t.round()).any() for t in loose)  # Karras's sigmas fall between the model's
    assert seen and all((t == t.round()).all() for t in seen)
    assert (plain != quantized).any() and not pipe.schedule.quantize  # the model's own schedule is back
    # A1111 writes no infotext key for it
    assert SO.written("euler", "karras", {"enable_quantization": True}, True, False, 0.03, 14.6) == {}
