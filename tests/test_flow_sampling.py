"""Sampling rectified-flow models: every sampler, run through FlowSampling.sampler on the exact
denoiser of Gaussian data, lands on the data's distribution (a variance-exploding noise step in flow
latents would not); Euler is the flow ODE's Euler; Euler a is ComfyUI's flow form; noise enters as
sigma noise + (1 - sigma) latent; the SD3 and Flux schedules are their shifts."""
from __future__ import annotations

import math

import pytest
import torch

from opensd.errors import InvalidArgument
from opensd.sampling.flow import FlowSampling, flux_shift, in_ve_space, sample_euler_ancestral_rf
from opensd.sampling.samplers import SAMPLERS, sample_euler
from opensd.sampling.schedules import make_sigmas

DATA_STD = 0.5


def exact_denoiser(x, sigma):
    """E[x0 | x] for x0 ~ N(0, DATA_STD^2) and x = (1 - sigma) x0 + sigma noise."""
    a = 1 - sigma
    return x * a * DATA_STD ** 2 / (a ** 2 * DATA_STD ** 2 + sigma ** 2)


class Draws:
    def __init__(self, shape, seed=1):
        self.g, self.shape = torch.Generator().manual_seed(seed), shape

    def __call__(self, sigma=None, sigma_next=None):
        return torch.randn(self.shape, generator=self.g, dtype=torch.float64)


# LCM jumps to the estimate (it lands on the posterior mean's spread, not the data's); DPM adaptive's
# tolerances are absolute, and flow's equivalent first sigma (3e4) is far above an SD model's 14.6.
NOT_SOLVERS = {"lcm", "dpm_adaptive", "tcd"}


@pytest.mark.parametrize("name", sorted(set(SAMPLERS) - NOT_SOLVERS))
def test_every_sampler_lands_on_the_data_distribution(name):
    flow = FlowSampling.sd3(3.0)
    schedule = "normal" if name not in ("ddim", "plms") else "ddim_uniform"
    sigmas = make_sigmas(schedule, flow.schedule, 300, sampler=name).double()
    x = torch.randn(20000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * sigmas[0]
    options = {"eta": 1.0} if name == "ddim" else {}
    out = flow.sampler(name)(exact_denoiser, x, sigmas, None, noise_sampler=Draws(x.shape), **options)
    assert out.std().item() == pytest.approx(DATA_STD, rel=0.04), name
    assert abs(out.mean().item()) < 0.02


def test_tcd_is_refused_on_flow_models():
    with pytest.raises(InvalidArgument, match="sampler: TCD"):
        FlowSampling.sd3(3.0).sampler("tcd")


def test_ve_noise_in_flow_latents_would_be_wrong():
    """The test above can fail: the variance-exploding Euler a on flow latents misses the data."""
    flow = FlowSampling.sd3(3.0)
    sigmas = make_sigmas("normal", flow.schedule, 300).double()
    x = torch.randn(20000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = SAMPLERS["euler_ancestral"](exact_denoiser, x, sigmas, None, noise_sampler=Draws(x.shape))
    assert abs(out.std().item() - DATA_STD) > 0.1


def test_euler_is_the_flow_odes_euler_in_either_space():
    sigmas = torch.tensor([1.0, 0.8, 0.5, 0.2, 0.0], dtype=torch.float64)
    x = torch.randn(1000, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    direct, v = x.clone(), None
    for s, nxt in zip(sigmas[:-1], sigmas[1:]):
        v = (direct - exact_denoiser(direct, s)) / s  # the velocity the network predicts
        direct = direct + (nxt - s) * v
    assert torch.allclose(sample_euler(exact_denoiser, x, sigmas), direct, atol=1e-12)
    s = sigmas.clone()
    s[0] = 0.99999
    ve = in_ve_space(sample_euler, 0.99999, exact_denoiser, x, s)
    assert torch.allclose(ve, sample_euler(exact_denoiser, x, s), atol=1e-9)


def test_euler_a_takes_comfyuis_flow_form():
    sigmas = torch.tensor([1.0, 0.6, 0.3, 0.0], dtype=torch.float64)
    x = torch.randn(8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    z = [torch.randn(8, generator=torch.Generator().manual_seed(10 + i), dtype=torch.float64) for i in range(2)]
    draws = iter(z)
    got = sample_euler_ancestral_rf(exact_denoiser, x, sigmas, noise_sampler=lambda a, b: next(draws), eta=1.0)
    want = x.clone()
    for i in range(2):
        s, n = sigmas[i], sigmas[i + 1]
        d = exact_denoiser(want, s)
        down = n * n / s  # eta 1: sigma_down = sigma_next * (sigma_next / sigma)
        want = (down / s) * want + (1 - down / s) * d
        renoise = math.sqrt(n ** 2 - down ** 2 * (1 - n) ** 2 / (1 - down) ** 2)
        want = (1 - n) / (1 - down) * want + z[i] * renoise
    want = exact_denoiser(want, sigmas[2])
    assert torch.allclose(got, want, atol=1e-12)


def test_noise_enters_as_rectified_flow_does():
    flow = FlowSampling.sd3(3.0)
    noise, latent = torch.randn(4), torch.randn(4)
    assert torch.allclose(flow.noise_scaling(0.25, noise, latent), 0.25 * noise + 0.75 * latent)
    assert torch.allclose(flow.inverse_noise_scaling(0.25, flow.noise_scaling(0.25, torch.zeros(4), latent)), latent)
    net = lambda x, t: (x - latent) / t * 1000  # a network that knows the answer: v = (x - x0) / sigma
    x = flow.noise_scaling(0.4, noise, latent)
    assert torch.allclose(flow.denoise(net, x[None], torch.tensor(0.4)), latent[None], atol=1e-6)


def test_schedules_are_the_families_shifts():
    t = torch.arange(1, 1001, dtype=torch.float64) / 1000
    torch.testing.assert_close(FlowSampling.sd3(3.0).schedule.sigmas, (3 * t / (1 + 2 * t)).float())
    mu, t = 1.15, torch.arange(1, 10001, dtype=torch.float64) / 10000
    torch.testing.assert_close(FlowSampling.flux(mu).schedule.sigmas,
                               (math.exp(mu) / (math.exp(mu) + 1 / t - 1)).float())
    assert torch.equal(flux_shift(0.0, t), t)  # schnell: no shift
    assert FlowSampling.flux(0.5).percent_to_sigma(0.0) == 1.0 and FlowSampling.sd3(3.0).percent_to_sigma(1.0) == 0.0
