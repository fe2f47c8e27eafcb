"""SamplerLCMUpscale: LCM steps that enlarge the latent between steps. The pure sampler against a
hand-written loop (sizes, values and noise per step), then the node through SamplerCustomAdvanced on
a tiny model: scale 1 is KSamplerSelect's lcm exactly, a ratio enlarges the result, the resize
method reaches the sampler, and a noise mask (which cannot follow the size) is one clear error."""
import pytest
import torch
import torch.nn.functional as F
from test_workflows_sampler_options import node_sampler
from workflow_fixtures import sampling_env

from opensd.errors import InvalidArgument
from opensd.sampling.lcm_upscale import sample_lcm_upscale, upscale_factors
from opensd.workflows import nodes_sampling_custom as S
from opensd.workflows.types import NoiseRef


def test_factors_follow_comfyuis_spacing():
    assert upscale_factors(5, 2.0, None) == [1.5, 2.0]            # 4 steps: max(5 // 2 + 1, 2) points
    assert upscale_factors(3, 3.0, None) == [3.0]                 # 2 steps: at least one enlargement
    assert upscale_factors(5, 2.0, 4) == [1.25, 1.5, 1.75, 2.0]   # scale_steps 4: over 4 steps
    assert upscale_factors(3, 2.0, 10) == pytest.approx([1 + 1 / 3, 1 + 2 / 3, 2.0])  # capped at len(sigmas) + 1


def test_the_sampler_is_the_hand_written_loop():
    sigmas = torch.tensor([4.0, 2.0, 1.0, 0.5, 0.0])
    x0 = torch.randn(1, 4, 8, 6, generator=torch.Generator().manual_seed(0))
    seen = []

    def denoise(x, sigma):  # any function of (x, sigma) will do
        seen.append((tuple(x.shape[2:]), float(sigma)))
        return x / (1 + sigma) + 0.1

    def resize(x, w, h):
        return F.interpolate(x, size=(h, w), mode="bilinear")

    gen = torch.Generator().manual_seed(1)
    out = sample_lcm_upscale(denoise, x0, sigmas, resize=resize, total_upscale=2.0,
                             noise_like=lambda x: torch.randn(x.shape, generator=gen))

    gen = torch.Generator().manual_seed(1)
    x = x0
    for i, size in enumerate([(12, 9), (16, 12), None, None]):  # (h, w): 1.5x, then 2x, then kept
        x = x / (1 + sigmas[i]) + 0.1
        if size is not None:
            x = F.interpolate(x, size=size, mode="bilinear")
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * torch.randn(x.shape, generator=gen)
    assert [s for s, _ in seen] == [(8, 6), (12, 9), (16, 12), (16, 12)]
    assert torch.equal(out, x)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return sampling_env(tmp_path_factory.mktemp("lcmup"))


def run(env, sampler, latent=None):
    call, model, pos, neg = env
    (sigmas,) = S.basic_scheduler(None, model, "simple", 4, 1.0)
    (guider,) = S.cfg_guider(None, model, pos, neg, 3.0)
    latent = latent or {"samples": torch.zeros(1, 4, 8, 8)}
    return S.sampler_custom_advanced(call, NoiseRef(7), guider, sampler, sigmas, latent)


def test_scale_one_is_lcm_and_a_ratio_enlarges_the_latent(env):
    (lcm,) = S.ksampler_select(None, "lcm")
    same, _ = run(env, node_sampler("SamplerLCMUpscale"))
    assert torch.equal(same["samples"], run(env, lcm)[0]["samples"])
    out, denoised = run(env, node_sampler("SamplerLCMUpscale", scale_ratio=2.0))
    assert out["samples"].shape == (1, 4, 16, 16) and torch.isfinite(out["samples"]).all()
    assert denoised["samples"].shape == (1, 4, 16, 16)  # the last step ran at the full size
    quick, _ = run(env, node_sampler("SamplerLCMUpscale", scale_ratio=1.5, scale_steps=1))
    assert quick["samples"].shape == (1, 4, 12, 12)
    nearest, _ = run(env, node_sampler("SamplerLCMUpscale", scale_ratio=2.0, upscale_method="nearest-exact"))
    assert not torch.allclose(nearest["samples"], out["samples"], atol=1e-4)  # the method reaches the sampler


def test_a_noise_mask_is_refused_in_one_line(env):
    latent = {"samples": torch.zeros(1, 4, 8, 8), "noise_mask": torch.ones(1, 8, 8)}
    with pytest.raises(InvalidArgument, match="^sampler: lcm_upscale changes the latent's size, which a noise mask"):
        run(env, node_sampler("SamplerLCMUpscale", scale_ratio=2.0), latent)
    assert run(env, node_sampler("SamplerLCMUpscale"), latent)[0]["samples"].shape == (1, 4, 8, 8)  # no resize: fine
