"""SplitSigmasDenoise, SetFirstSigma, ExtendIntermediateSigmas, SamplingPercentToSigma and AddNoise
(ComfyUI's comfy_extras.nodes_custom_sampler) against their arithmetic written out here."""
import math

import pytest
import torch
from workflow_fixtures import sampling_env

from opensd.workflows import ksampler
from opensd.workflows import nodes_sigmas as S
from opensd.workflows.types import NoiseRef

SIGMAS = torch.tensor([14.6, 8.0, 4.0, 1.0, 0.0])


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return sampling_env(tmp_path_factory.mktemp("sig"))


def test_split_sigmas_denoise_keeps_the_last_steps_apart():
    high, low = S.split_sigmas_denoise(None, SIGMAS, 0.5)  # round(4 * 0.5) = 2 low steps
    assert high.tolist() == SIGMAS[:3].tolist() and low.tolist() == SIGMAS[2:].tolist()
    high, low = S.split_sigmas_denoise(None, SIGMAS, 1.0)
    assert torch.equal(high, SIGMAS[:1]) and torch.equal(low, SIGMAS)
    high, low = S.split_sigmas_denoise(None, SIGMAS, 0.1)  # round(0.4) = 0: ComfyUI's [:-0] is empty
    assert high.numel() == 0 and low.tolist() == [0.0]


def test_set_first_sigma_copies():
    (out,) = S.set_first_sigma(None, SIGMAS, 136.0)
    assert out.tolist()[0] == 136.0 and float(SIGMAS[0]) == pytest.approx(14.6) and torch.equal(out[1:], SIGMAS[1:])
    assert S.set_first_sigma(None, torch.tensor([]), 1.0)[0].numel() == 0


def test_extend_intermediate_sigmas_inside_the_window():
    (lin,) = S.extend_intermediate_sigmas(None, SIGMAS, 2, -1.0, 4.0, "linear")  # steps from 14.6, 8 and 4
    assert lin.tolist() == pytest.approx([14.6, 11.3, 8.0, 6.0, 4.0, 2.5, 1.0, 0.0])
    (cos,) = S.extend_intermediate_sigmas(None, SIGMAS, 3, 10.0, 0.5, "cosine")  # 8, 4 and 1, spaced by sin
    f1, f2 = math.sin(math.pi / 6), math.sin(math.pi / 3)
    want = [14.6, 8.0, 8 - 4 * f1, 8 - 4 * f2, 4.0, 4 - 3 * f1, 4 - 3 * f2, 1.0, 1 - f1, 1 - f2, 0.0]
    assert cos.tolist() == pytest.approx(want, rel=1e-6)
    (sine,) = S.extend_intermediate_sigmas(None, SIGMAS[:2], 2, -1.0, 0.0, "sine")
    assert sine.tolist() == pytest.approx([14.6, 14.6 - 6.6 * (1 - math.cos(math.pi / 4)), 8.0])
    assert S.extend_intermediate_sigmas(None, SIGMAS, 1, -1.0, 0.0, "linear")[0].tolist() == pytest.approx(
        SIGMAS.tolist())


def test_sampling_percent_to_sigma(env):
    _, model, _, _ = env
    ms = ksampler.sampling_of(model)
    assert S.sampling_percent_to_sigma(None, model, 0.3, False) == (ms.percent_to_sigma(0.3),)
    assert S.sampling_percent_to_sigma(None, model, 0.0, False) == (999999999.9,)
    assert S.sampling_percent_to_sigma(None, model, 0.0, True)[0] == pytest.approx(float(ms.sigma_max))
    assert S.sampling_percent_to_sigma(None, model, 1.0, True)[0] == pytest.approx(float(ms.sigma_min))
    assert S.sampling_percent_to_sigma(None, model, 1.0, False) == (0.0,)


def test_add_noise_noises_in_the_models_latent_space(env):
    _, model, _, _ = env
    fmt = ksampler.latent_format(model)
    x = torch.randn(2, 4, 3, 5, generator=torch.Generator().manual_seed(1))
    (out,) = S.add_noise(None, model, NoiseRef(7), SIGMAS, {"samples": x, "batch_index": [3, 4]})
    noise = ksampler.prepare_noise(x, 7, [3, 4])
    assert torch.allclose(out["samples"], fmt.unscaled(fmt.scaled(x) + noise * 14.6), atol=1e-5)
    assert out["batch_index"] == [3, 4]
    (one,) = S.add_noise(None, model, NoiseRef(7), SIGMAS[1:2], {"samples": x})
    assert torch.allclose(one["samples"], fmt.unscaled(fmt.scaled(x) + ksampler.prepare_noise(x, 7) * 8.0), atol=1e-5)
    (empty,) = S.add_noise(None, model, NoiseRef(2), SIGMAS[1:], {"samples": torch.zeros(1, 4, 3, 5)})
    assert torch.allclose(empty["samples"], fmt.unscaled(ksampler.prepare_noise(torch.zeros(1, 4, 3, 5), 2) * 8.0))
    (none,) = S.add_noise(None, model, NoiseRef(None), SIGMAS, {"samples": x})
    assert torch.allclose(none["samples"], x, atol=1e-6)
    latent = {"samples": x}
    assert S.add_noise(None, model, NoiseRef(1), torch.tensor([]), latent)[0] is latent


def test_optimal_steps_resamples_the_table_log_linearly():
    (ten,) = S.optimal_steps_scheduler(None, "FLUX", 10, 1.0)  # the table's own 11 levels
    assert ten.tolist() == pytest.approx(S.OPTIMAL_STEPS["FLUX"][:-1] + [0.0], rel=1e-6)
    (twenty,) = S.optimal_steps_scheduler(None, "FLUX", 20, 1.0)
    table = S.OPTIMAL_STEPS["FLUX"]
    assert len(twenty) == 21 and twenty[-1] == 0 and twenty[0] == pytest.approx(table[0])
    # every other sigma falls on the table; the ones between are the geometric means of neighbours
    assert twenty[2:20:2].tolist() == pytest.approx(table[1:10], rel=1e-5)
    assert float(twenty[1]) == pytest.approx(math.sqrt(table[0] * table[1]), rel=1e-5)
    (half,) = S.optimal_steps_scheduler(None, "Chroma", 6, 0.5)
    assert len(half) == 4 and half[-1] == 0
    assert half[:3].tolist() == pytest.approx(S.loglinear_resampled(S.OPTIMAL_STEPS["Chroma"], 7)[3:6], rel=1e-6)
    assert S.optimal_steps_scheduler(None, "Wan", 5, 0.0)[0].numel() == 0
