"""Schedules, the eps/v denoiser wrapper and the Euler sampler, against exact answers and diffusers."""
import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler

from opensd.errors import InvalidArgument
from opensd.sampling.denoiser import Denoiser
from opensd.sampling.samplers import get_sampler, sample_euler
from opensd.sampling.schedules import DiscreteSchedule, normal_sigmas, scaled_linear_alphas_cumprod

SCHEDULE = DiscreteSchedule(scaled_linear_alphas_cumprod())


def test_schedule_matches_diffusers_euler_at_integer_timesteps():
    # 4 steps over 0..999 land on integer timesteps, where interpolation schemes agree.
    ref = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                 timestep_spacing="linspace")
    ref.set_timesteps(4)
    ours = normal_sigmas(SCHEDULE, 4)
    np.testing.assert_allclose(ours.numpy(), ref.sigmas.numpy(), rtol=5e-5)
    assert ours[0].item() == pytest.approx(14.6146, abs=1e-3)  # SD's well-known sigma_max


def test_sigma_and_t_round_trip():
    t = torch.tensor([0.0, 1.5, 500.25, 999.0])
    np.testing.assert_allclose(SCHEDULE.sigma_to_t(SCHEDULE.t_to_sigma(t)).numpy(), t.numpy(), atol=1e-3)


def _oracle_unet(x0, eps, prediction):
    """A perfect UNet for a known clean image x0 and noise eps, in the VP parametrisation."""
    def unet(x_scaled, t, **_):
        sigma = SCHEDULE.t_to_sigma(t)[:, None, None, None]
        alpha, sigma_vp = 1 / (sigma ** 2 + 1).sqrt(), sigma / (sigma ** 2 + 1).sqrt()
        assert torch.allclose(x_scaled, alpha * x0 + sigma_vp * eps, atol=1e-4)  # c_in is right
        return eps if prediction == "eps" else alpha * eps - sigma_vp * x0
    return unet


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_denoiser_recovers_the_clean_image(prediction):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    sigma = SCHEDULE.t_to_sigma(torch.tensor([700.0]))
    d = Denoiser(_oracle_unet(x0, eps, prediction), SCHEDULE, prediction)
    torch.testing.assert_close(d(x0 + sigma * eps, sigma), x0, atol=1e-4, rtol=1e-4)


def test_euler_with_a_perfect_denoiser_lands_on_the_clean_image():
    x0 = torch.randn(1, 4, 8, 8)
    sigmas = normal_sigmas(SCHEDULE, 7)
    seen = []
    out = sample_euler(lambda x, s: x0, torch.randn(1, 4, 8, 8) * sigmas[0], sigmas,
                       callback=lambda i, x, d: seen.append(i))
    torch.testing.assert_close(out, x0)
    assert seen == list(range(7))


def test_euler_matches_diffusers_trajectory():
    ref = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                 timestep_spacing="linspace")
    ref.set_timesteps(4)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 8, 8, generator=g)
    target = torch.randn(1, 4, 8, 8, generator=g)

    def eps_model(x_scaled, t):  # an arbitrary deterministic "UNet"
        return torch.tanh(x_scaled + target) * (1 + t.float().reshape(-1, 1, 1, 1) / 1000)

    # Both start from the same x_T (diffusers' init_noise_sigma is a pipeline convention).
    xr = x * ref.sigmas[0]
    for t in ref.timesteps:
        xr = ref.step(eps_model(ref.scale_model_input(xr, t), t[None]), t, xr).prev_sample
    ours = sample_euler(Denoiser(lambda xs, t: eps_model(xs, t.round()), SCHEDULE, "eps"),
                        x * normal_sigmas(SCHEDULE, 4)[0], normal_sigmas(SCHEDULE, 4))
    torch.testing.assert_close(ours, xr, atol=1e-4, rtol=1e-4)


def test_unknown_sampler_lists_the_valid_ones():
    assert get_sampler("Euler") is sample_euler
    with pytest.raises(InvalidArgument, match="sampler.*valid: .*euler"):
        get_sampler("warp drive")
