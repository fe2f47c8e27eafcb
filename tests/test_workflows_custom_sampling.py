"""ComfyUI's custom sampling nodes: the schedulers against their formulas, SamplerCustom and
SamplerCustomAdvanced chains against KSampler, split sampling, the guiders' arithmetic, and the
denoised output."""
import math

import numpy as np
import pytest
import torch
from workflow_fixtures import sampling_env

from opensd.errors import InvalidArgument
from opensd.workflows import ksampler as K
from opensd.workflows import nodes_sampling_custom as S
from opensd.workflows.guiders import DualCFGGuider, Step
from opensd.workflows.types import ModelRef, NoiseRef, SamplerRef


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return sampling_env(tmp_path_factory.mktemp("cs"))


def _model_sigmas() -> np.ndarray:
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    alphas = np.cumprod(1 - betas)
    return np.sqrt((1 - alphas) / alphas)


def test_karras_and_exponential_follow_their_formulas():
    (k,) = S.karras_scheduler(None, 4, 10.0, 0.1, 3.0)
    want = [(10 ** (1 / 3) + i / 3 * (0.1 ** (1 / 3) - 10 ** (1 / 3))) ** 3 for i in range(4)] + [0.0]
    np.testing.assert_allclose(k.numpy(), want, rtol=1e-5)
    (e,) = S.exponential_scheduler(None, 3, 8.0, 0.5)
    np.testing.assert_allclose(e.numpy(), [8.0, 2.0, 0.5, 0.0], rtol=1e-5)


def test_polyexponential_vp_and_laplace_follow_k_diffusions_formulas():
    (p,) = S.polyexponential_scheduler(None, 4, 8.0, 0.5, 2.0)
    ramp = np.linspace(1, 0, 4) ** 2  # log sigma along a squared ramp
    np.testing.assert_allclose(p.numpy(), list(np.exp(np.log(0.5) + ramp * np.log(16.0))) + [0.0], rtol=1e-5)
    torch.testing.assert_close(S.polyexponential_scheduler(None, 5, 8.0, 0.5, 1.0)[0],
                               S.exponential_scheduler(None, 5, 8.0, 0.5)[0])
    with pytest.raises(InvalidArgument, match="^sigma_min: must be above 0"):
        S.polyexponential_scheduler(None, 4, 8.0, 0.0, 1.0)
    (v,) = S.vp_scheduler(None, 3, 19.9, 0.1, 0.001)
    t = np.array([1.0, 0.5005, 0.001])
    np.testing.assert_allclose(v.numpy(), list(np.sqrt(np.exp(19.9 * t * t / 2 + 0.1 * t) - 1)) + [0.0], rtol=1e-5)
    (lap,) = S.laplace_scheduler(None, 5, 14.6, 0.03, 0.5, 0.25)
    x = np.linspace(0, 1, 5)
    log_sigma = 0.5 - 0.25 * np.sign(0.5 - x) * np.log(1 - 2 * np.abs(0.5 - x) + 1e-5)
    np.testing.assert_allclose(lap.numpy(), np.clip(np.exp(log_sigma), 0.03, 14.6), rtol=1e-5)
    assert len(lap) == 5 and lap[-1] > 0  # no final 0, as ComfyUI's: a run stops at the last sigma


def test_a_laplace_schedule_runs_and_stops_at_its_last_sigma(env):
    call, model, pos, neg = env
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    (sigmas,) = S.laplace_scheduler(None, 4, 14.614642, 0.0291675, 0.0, 0.5)
    (sampler,) = S.ksampler_select(None, "euler")
    out, _ = S.sampler_custom(call, model, True, 3, 5.0, pos, neg, sampler, sigmas, latent)
    with_zero, _ = S.sampler_custom(call, model, True, 3, 5.0, pos, neg, sampler, torch.cat([sigmas, torch.zeros(1)]),
                                    latent)
    assert torch.isfinite(out["samples"]).all() and not torch.allclose(out["samples"], with_zero["samples"])


def test_basic_and_turbo_schedulers_read_the_models_schedule(env):
    _, model, _, _ = env
    table = _model_sigmas()
    (normal,) = S.basic_scheduler(None, model, "normal", 3, 1.0)  # timesteps 999, 499.5, 0
    mid = math.exp((math.log(table[499]) + math.log(table[500])) / 2)
    np.testing.assert_allclose(normal.numpy(), [table[999], mid, table[0], 0.0], rtol=1e-5)
    (part,) = S.basic_scheduler(None, model, "karras", 4, 0.5)  # the last 5 of an 8-step schedule
    assert torch.equal(part, K.comfy_sigmas(model.pipe.schedule, "euler", "karras", 8)[-5:])
    assert len(S.basic_scheduler(None, model, "normal", 4, 0.0)[0]) == 0
    (turbo,) = S.sd_turbo_scheduler(None, model, 2, 1.0)
    np.testing.assert_allclose(turbo.numpy(), [table[999], table[899], 0.0], rtol=1e-5)
    (turbo,) = S.sd_turbo_scheduler(None, model, 3, 0.5)  # starts 5 of the 10 timesteps later
    np.testing.assert_allclose(turbo.numpy(), [table[499], table[399], table[299], 0.0], rtol=1e-5)


def test_align_your_steps_interpolates_the_published_table_log_linearly():
    sd1 = [14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092,
           0.9642583904, 0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582]
    (ten,) = S.align_your_steps_scheduler(None, "SD1", 10, 1.0)
    np.testing.assert_allclose(ten.numpy(), sd1[:-1] + [0.0], rtol=1e-6)
    (four,) = S.align_your_steps_scheduler(None, "SD1", 4, 1.0)  # at table positions 0, 2.5, 5, 7.5, 10
    want = [sd1[0], math.sqrt(sd1[2] * sd1[3]), sd1[5], math.sqrt(sd1[7] * sd1[8]), 0.0]
    np.testing.assert_allclose(four.numpy(), want, rtol=1e-5)
    (half,) = S.align_your_steps_scheduler(None, "SD1", 10, 0.5)  # round(10 * 0.5) = 5 steps from the tail
    np.testing.assert_allclose(half.numpy(), sd1[5:10] + [0.0], rtol=1e-6)


def test_split_and_flip_sigmas():
    sigmas = torch.tensor([5.0, 3.0, 1.0, 0.0])
    high, low = S.split_sigmas(None, sigmas, 1)
    assert high.tolist() == [5.0, 3.0] and low.tolist() == [3.0, 1.0, 0.0]
    (flipped,) = S.flip_sigmas(None, sigmas.clone())
    assert flipped.tolist() == pytest.approx([0.0001, 1.0, 3.0, 5.0])


def _ksampler(model, pos, neg, latent, **kw):
    args = dict(seed=11, steps=3, cfg=6.0, sampler_name="euler", scheduler="normal")
    args.update(kw)
    return K.sample(model, pos, neg, latent, **args)["samples"]


def test_sampler_custom_and_the_advanced_chain_equal_ksampler(env):
    call, model, pos, neg = env
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    want = _ksampler(model, pos, neg, latent)
    (sigmas,) = S.basic_scheduler(None, model, "normal", 3, 1.0)
    (sampler,) = S.ksampler_select(None, "euler")
    out, _ = S.sampler_custom(call, model, True, 11, 6.0, pos, neg, sampler, sigmas, latent)
    assert torch.equal(out["samples"], want)
    (noise,) = S.random_noise(None, 11)
    (guider,) = S.cfg_guider(None, model, pos, neg, 6.0)
    out, _ = S.sampler_custom_advanced(call, noise, guider, sampler, sigmas, latent)
    assert torch.equal(out["samples"], want)
    # split in two: the second half without noise continues the first
    high, low = S.split_sigmas(None, sigmas, 1)
    first, _ = S.sampler_custom_advanced(call, noise, guider, sampler, high, latent)
    (none,) = S.disable_noise(None)
    second, _ = S.sampler_custom_advanced(call, none, guider, sampler, low, first)
    torch.testing.assert_close(second["samples"], want, rtol=1e-4, atol=1e-4)
    # ancestral samplers draw their step noise from the noise's seed (DisableNoise: 0)
    (anc,) = S.ksampler_select(None, "euler_ancestral")
    a, _ = S.sampler_custom_advanced(call, noise, guider, anc, sigmas, latent)
    assert torch.equal(a["samples"], _ksampler(model, pos, neg, latent, sampler_name="euler_ancestral"))


def test_basic_guider_is_the_positive_alone_and_add_noise_off_starts_from_the_latent(env):
    call, model, pos, neg = env
    latent = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))}
    (sigmas,) = S.basic_scheduler(None, model, "karras", 2, 0.6)
    (sampler,) = S.ksampler_select(None, "euler")
    (guider,) = S.basic_guider(None, model, pos)
    basic, _ = S.sampler_custom_advanced(call, NoiseRef(5), guider, sampler, sigmas, latent)
    one, _ = S.sampler_custom(call, model, True, 5, 1.0, pos, neg, sampler, sigmas, latent)
    assert torch.equal(basic["samples"], one["samples"])  # cfg 1: the negative is never evaluated
    quiet, _ = S.sampler_custom(call, model, False, 5, 1.0, pos, neg, sampler, sigmas, latent)
    assert torch.equal(quiet["samples"], S.sampler_custom_advanced(call, NoiseRef(None), guider, sampler,
                                                                   sigmas, latent)[0]["samples"])
    assert not torch.equal(quiet["samples"], one["samples"])


def test_denoised_output_is_the_last_steps_estimate(env):
    call, model, pos, neg = env
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    sigmas = torch.tensor([6.0, 2.0])  # one Euler step that stops at sigma 2
    (sampler,) = S.ksampler_select(None, "euler")
    out, den = S.sampler_custom(call, model, True, 9, 4.0, pos, neg, sampler, sigmas, latent)
    sf = model.pipe.config.vae.scaling_factor
    x0 = K.prepare_noise(latent["samples"], 9) * 6.0  # 6 is below sigma_max: plain scaling
    x1 = out["samples"] * sf
    estimate = x0 - (x1 - x0) * 6.0 / (2.0 - 6.0)  # Euler: x1 = x0 + (x0 - D) / 6 * (2 - 6)
    torch.testing.assert_close(den["samples"] * sf, estimate, rtol=1e-4, atol=1e-4)


def test_dual_cfg_combines_two_guidance_scales():
    g = DualCFGGuider(ModelRef(None, "m"), [], [], [], 3.0, 5.0)
    p, m, n = torch.full((1,), 2.0), torch.full((1,), 1.5), torch.full((1,), 1.0)
    out = g.combine({"positive": p, "middle": m, "negative": n}, Step(torch.zeros(1), torch.ones(1), None))
    assert out.item() == pytest.approx(1.0 + (1.5 - 1.0) * 5.0 + (2.0 - 1.5) * 3.0)


def test_dual_cfg_guider_with_equal_conds_is_cfg_over_the_second(env):
    call, model, pos, neg = env
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    (sigmas,) = S.basic_scheduler(None, model, "normal", 2, 1.0)
    sampler = SamplerRef("euler")
    (dual,) = S.dual_cfg_guider(None, model, pos, pos, neg, 9.0, 5.0)
    (cfg,) = S.cfg_guider(None, model, pos, neg, 5.0)
    a, _ = S.sampler_custom_advanced(call, NoiseRef(3), dual, sampler, sigmas, latent)
    b, _ = S.sampler_custom_advanced(call, NoiseRef(3), cfg, sampler, sigmas, latent)
    torch.testing.assert_close(a["samples"], b["samples"], rtol=1e-4, atol=1e-5)


def test_beta_sampling_scheduler_takes_the_beta_quantiles_of_the_models_timesteps(env):
    _, model, _, _ = env
    table = _model_sigmas()
    (default,) = S.beta_sampling_scheduler(None, model, 6, 0.6, 0.6)
    assert torch.equal(default, S.basic_scheduler(None, model, "beta", 6, 1.0)[0])  # the "beta" scheduler
    # Beta(2, 1) has CDF x^2, so its quantiles are sqrt(p): timesteps round(sqrt(1 - i/5) * 999)
    (skewed,) = S.beta_sampling_scheduler(None, model, 5, 2.0, 1.0)
    np.testing.assert_allclose(skewed.numpy(), [*table[[999, 894, 774, 632, 447]], 0.0], rtol=1e-5)
    with pytest.raises(InvalidArgument, match="^alpha: must be above 0"):
        S.beta_sampling_scheduler(None, model, 5, 0.0, 1.0)
