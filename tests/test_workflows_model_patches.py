"""ComfyUI's model patches: ModelSamplingDiscrete's parameterisations and schedules, RescaleCFG,
FreeU_V2, PerpNeg and DifferentialDiffusion, against their formulas computed here, and end to end on a tiny model."""
import math

import numpy as np
import pytest
import torch
from workflow_fixtures import Loader, make_ctx, make_models

from opensd.sampling.schedules import DiscreteSchedule, scaled_linear_alphas_cumprod
from opensd.workflows import ksampler as K
from opensd.workflows import nodes_model_patches as P
from opensd.workflows import nodes_sampling_custom as S
from opensd.workflows.guiders import CfgArgs
from opensd.workflows.model_sampling import ModelSampling, model_sampling
from opensd.workflows.nodes_core import clip_text_encode
from opensd.workflows.types import ClipRef, ModelRef
from opensd.workflows.unet_patches import output_block_patches

BASE = DiscreteSchedule(scaled_linear_alphas_cumprod())


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mp")
    folders = make_models(tmp / "models")
    pipe = make_ctx(folders, Loader(folders), tmp).load_pipeline("tiny.safetensors")
    clip = ClipRef(pipe, "tiny")
    pos, neg = clip_text_encode(None, "a castle", clip)[0], clip_text_encode(None, "rain", clip)[0]
    return ModelRef(pipe, "tiny"), pos, neg


def _table() -> np.ndarray:
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    a = np.cumprod(1 - betas)
    return np.sqrt((1 - a) / a)


# --- ModelSamplingDiscrete -----------------------------------------------------------------------

@pytest.mark.parametrize("sampling", ["eps", "v_prediction", "x0", "lcm"])
def test_parameterisations_turn_the_output_into_the_denoised_latent(sampling):
    ms = model_sampling(BASE, sampling, False)
    x, out, sigma = torch.full((1, 1, 2, 2), 3.0), torch.full((1, 1, 2, 2), 0.5), torch.tensor(2.0)
    seen = {}

    def unet(x_in, t, **cond):
        seen.update(x_in=x_in, t=t)
        return out

    d = ms.denoise(unet, x, sigma)
    s = 2.0
    assert torch.allclose(seen["x_in"], x / math.sqrt(s * s + 1))
    if sampling == "eps":
        want = 3.0 - s * 0.5
    elif sampling == "v_prediction":
        want = 3.0 / (s * s + 1) - 0.5 * s / math.sqrt(s * s + 1)
    elif sampling == "x0":
        want = 0.5
    else:  # LCM: the nearest of timesteps 19, 39, ..., 999; c_skip, c_out at 10 t with sigma_data 0.5
        table = _table()[19::20]
        k = int(np.abs(np.log(table) - math.log(s)).argmin())
        t = 20 * k + 19
        assert float(seen["t"][0]) == t
        ts = 10.0 * t
        want = ts / math.sqrt(ts * ts + 0.25) * (3.0 - 0.5 * s) + 0.25 / (ts * ts + 0.25) * 3.0
    assert torch.allclose(d, torch.full_like(x, want), rtol=1e-5)


def test_lcm_and_zsnr_schedules(env):
    model, _, _ = env
    table = _table()
    (lcm,) = P.model_sampling_discrete(None, model, "lcm", False)
    np.testing.assert_allclose(lcm.sampling.schedule.sigmas.numpy(), table[19::20], rtol=1e-5)
    (sigmas,) = S.basic_scheduler(None, lcm, "normal", 2, 1.0)  # the distilled timesteps 999 and 19
    np.testing.assert_allclose(sigmas.numpy(), [table[999], table[19], 0.0], rtol=1e-5)
    assert lcm.sampling.percent_to_sigma(0.5) == pytest.approx(
        math.exp(np.interp((499.5 - 19) / 20, np.arange(50), np.log(table[19::20]))), rel=1e-5)
    (z,) = P.model_sampling_discrete(None, model, "eps", True)
    ab_sqrt = np.sqrt(1 / (table ** 2 + 1))
    shifted = (ab_sqrt - ab_sqrt[-1]) * ab_sqrt[0] / (ab_sqrt[0] - ab_sqrt[-1])
    ab = shifted ** 2
    ab[-1] = 4.8973451890853435e-08
    np.testing.assert_allclose(z.sampling.schedule.sigmas.numpy(), np.sqrt((1 - ab) / ab), rtol=1e-5)
    assert z.sampling.sigma_max == pytest.approx(4518.8, rel=1e-3)


def test_patched_sampling_runs_and_eps_patch_changes_nothing(env):
    model, pos, neg = env
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    kw = dict(seed=2, steps=3, cfg=5.0, sampler_name="euler", scheduler="normal")
    plain = K.sample(model, pos, neg, latent, **kw)["samples"]
    (eps,) = P.model_sampling_discrete(None, model, "eps", False)
    torch.testing.assert_close(K.sample(eps, pos, neg, latent, **kw)["samples"], plain, rtol=1e-4, atol=1e-4)
    (v,) = P.model_sampling_discrete(None, model, "v_prediction", False)
    assert not torch.allclose(K.sample(v, pos, neg, latent, **kw)["samples"], plain)
    (lcm,) = P.model_sampling_discrete(None, model, "lcm", True)
    out = K.sample(lcm, pos, neg, latent, **dict(kw, sampler_name="lcm", cfg=1.0))["samples"]
    assert torch.isfinite(out).all() and out.abs().sum() > 0


# --- RescaleCFG and PerpNeg ----------------------------------------------------------------------

def _args(x, cond_d, uncond_d, scale, sigma, predict=None):
    return CfgArgs(x - cond_d, x - uncond_d, scale, x, torch.tensor(sigma), cond_d, uncond_d, predict)


def test_rescale_cfg_is_cfg_on_v_rescaled_to_the_conditional_std():
    g = torch.Generator().manual_seed(0)
    x, c, u = (torch.randn(2, 4, 3, 3, generator=g) for _ in range(3))
    s, cfg, m = 1.7, 6.0, 0.7
    denoised = x - P.rescale_cfg_function(m)(_args(x, c, u, cfg, s))
    # v = (x / (s^2 + 1) - D) * sqrt(s^2 + 1) / s; D = x / (s^2 + 1) - v * s / sqrt(s^2 + 1)
    k = math.sqrt(s * s + 1)
    vc, vu = (x / (s * s + 1) - c) * k / s, (x / (s * s + 1) - u) * k / s
    v = vu + cfg * (vc - vu)
    std = lambda t: t.reshape(2, -1).std(dim=1).view(2, 1, 1, 1)  # noqa: E731
    v = m * v * std(vc) / std(v) + (1 - m) * v
    torch.testing.assert_close(denoised, x / (s * s + 1) - v * s / k, rtol=1e-5, atol=1e-5)
    plain = x - P.rescale_cfg_function(0.0)(_args(x, c, u, cfg, s))
    torch.testing.assert_close(plain, u + cfg * (c - u), rtol=1e-5, atol=1e-5)


def test_perp_neg_removes_only_the_negatives_perpendicular_part():
    nocond = torch.zeros(2)
    pos, neg = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 3.0])  # neg = 0.5 pos + (0, 3)
    out = P.perp_neg(pos, neg, nocond, 2.0, 4.0)
    assert out.tolist() == pytest.approx([4.0 * 2.0, 4.0 * (0.0 - 2.0 * 3.0)])


def test_perp_neg_with_neg_scale_zero_and_the_negative_as_empty_is_plain_cfg(env):
    model, pos, neg = env
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    kw = dict(seed=4, steps=2, cfg=5.0, sampler_name="euler", scheduler="normal")
    (patched,) = P.perp_neg_node(None, model, neg, 0.0)
    # (nocond runs in its own batch: float rounding, amplified by CFG 5)
    torch.testing.assert_close(K.sample(patched, pos, neg, latent, **kw)["samples"],
                               K.sample(model, pos, neg, latent, **kw)["samples"], rtol=1e-3, atol=1e-3)
    (strong,) = P.perp_neg_node(None, model, clip_text_encode(None, "", ClipRef(model.pipe, "t"))[0], 1.0)
    assert not torch.allclose(K.sample(strong, pos, neg, latent, **kw)["samples"],
                              K.sample(model, pos, neg, latent, **kw)["samples"])


# --- FreeU_V2 ------------------------------------------------------------------------------------

def test_freeu_v2_patch_against_a_numpy_fft():
    g = torch.Generator().manual_seed(1)
    h, skip = torch.randn(2, 64, 6, 8, generator=g), torch.randn(2, 32, 6, 8, generator=g)
    out_h, out_skip = P.freeu_v2_patch(32, 1.3, 1.4, 0.9, 0.2)(h.clone(), skip)  # 64 = 2 x 32: (b2, s2)
    mean = h.mean(1, keepdim=True).numpy()
    lo, hi = mean.min(axis=(1, 2, 3), keepdims=True), mean.max(axis=(1, 2, 3), keepdims=True)
    ramp = (0.4 * (mean - lo) / (hi - lo) + 1)
    want_h = h.numpy().copy()
    want_h[:, :32] *= ramp
    np.testing.assert_allclose(out_h.numpy(), want_h, rtol=1e-5, atol=1e-6)
    spec = np.fft.fftshift(np.fft.fft2(skip.numpy()), axes=(-2, -1))
    spec[..., 2:4, 3:5] *= 0.2  # the 2x2 square around the centre (3, 4)
    want_skip = np.fft.ifft2(np.fft.ifftshift(spec, axes=(-2, -1))).real
    np.testing.assert_allclose(out_skip.numpy(), want_skip, rtol=1e-4, atol=1e-5)
    same_h, same_skip = P.freeu_v2_patch(32, 1.3, 1.4, 0.9, 0.2)(torch.ones(1, 48, 2, 2), skip)
    assert same_h.eq(1).all() and same_skip is skip  # other widths pass through


def test_freeu_v1_multiplies_half_of_h_by_b_throughout():
    g = torch.Generator().manual_seed(2)
    h, skip = torch.randn(1, 128, 4, 6, generator=g), torch.randn(1, 64, 4, 6, generator=g)
    out_h, out_skip = P.freeu_patch(32, 1.1, 1.2, 0.9, 0.2)(h.clone(), skip)  # 128 = 4 x 32: (b1, s1)
    want_h = h.clone()
    want_h[:, :64] *= 1.1
    assert torch.allclose(out_h, want_h) and torch.equal(out_h[:, 64:], h[:, 64:])
    spec = np.fft.fftshift(np.fft.fft2(skip.numpy()), axes=(-2, -1))
    spec[..., 1:3, 2:4] *= 0.9  # the 2x2 square around the centre (2, 3)
    want_skip = np.fft.ifft2(np.fft.ifftshift(spec, axes=(-2, -1))).real
    np.testing.assert_allclose(out_skip.numpy(), want_skip, rtol=1e-4, atol=1e-5)
    same_h, same_skip = P.freeu_patch(32, 1.1, 1.2, 0.9, 0.2)(torch.ones(1, 32, 2, 2), skip)
    assert same_h.eq(1).all() and same_skip is skip


def test_output_block_hooks_split_h_from_the_skip_and_freeu_changes_the_image(env):
    model, pos, neg = env
    unet = model.pipe.model.unet
    seen = []

    def record(h, skip):
        seen.append((h.shape[1], skip.shape[1]))
        return h, skip

    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        plain = unet(x, torch.tensor([500.0]), pos[0][0])
        with output_block_patches(unet, (record,)):
            same = unet(x, torch.tensor([500.0]), pos[0][0])
    assert torch.equal(plain, same)
    inputs = [b[0].in_layers[2].weight.shape[1] for b in unet.output_blocks]  # the first ResBlock's input
    assert [h + s for h, s in seen] == inputs and [h for h, _ in seen] == [64, 64, 64, 32]
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    kw = dict(seed=4, steps=2, cfg=5.0, sampler_name="euler", scheduler="normal")
    (freeu,) = P.freeu_v2(None, model, 1.3, 1.4, 0.9, 0.2)
    assert not torch.allclose(K.sample(freeu, pos, neg, latent, **kw)["samples"],
                              K.sample(model, pos, neg, latent, **kw)["samples"])
    (freeu1,) = P.freeu(None, model, 1.1, 1.2, 0.9, 0.2)
    assert not torch.allclose(K.sample(freeu1, pos, neg, latent, **kw)["samples"],
                              K.sample(model, pos, neg, latent, **kw)["samples"])
    assert not unet.output_blocks[0]._forward_pre_hooks  # the hooks are gone after the run


# --- DifferentialDiffusion -------------------------------------------------------------------------

def test_differential_mask_thresholds_fall_linearly_in_timestep():
    sampling = model_sampling(BASE, "eps", False)
    sigmas = K.comfy_sigmas(BASE, "euler", "normal", 4)  # timesteps 999, 666, 333, 0, then sigma 0
    soft = torch.tensor([0.0, 0.3, 0.34, 0.67, 1.0])
    fn = P.differential_mask(1.0)
    steps = [fn(sigmas[i], soft, sampling, sigmas).tolist() for i in range(4)]
    assert steps == [[0, 0, 0, 0, 1], [0, 0, 0, 1, 1], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    half = P.differential_mask(0.5)(sigmas[1], soft, sampling, sigmas)
    torch.testing.assert_close(half, 0.5 * torch.tensor([0, 0, 0, 1, 1.0]) + 0.5 * soft)
    assert P.differential_mask(0.0)(sigmas[1], soft, sampling, sigmas).tolist() == steps[1]  # ComfyUI's 0 quirk
    cut = sigmas[:3]  # a run that stops at timestep 333: the threshold falls to 0 there
    assert P.differential_mask(1.0)(cut[1], soft, sampling, cut).tolist() == [0, 0, 0, 1, 1]  # threshold 0.5
    assert P.differential_mask(1.0)(cut[2], soft, sampling, cut).tolist() == [1, 1, 1, 1, 1]


def test_differential_diffusion_keeps_a_soft_area_until_its_step(env):
    model, pos, neg = env
    (patched,) = P.differential_diffusion(None, model, 1.0)
    samples = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    mask = torch.ones(1, 8, 8)
    mask[..., 4:] = 0.3  # the right half joins at the last of 4 steps (threshold 0)
    seen = []
    net = model.pipe.family.network(model.pipe.model)
    hook = net.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().cpu()))
    try:
        out = K.sample(patched, pos, neg, {"samples": samples, "noise_mask": mask}, seed=5, steps=4, cfg=3.0,
                       sampler_name="euler", scheduler="normal")["samples"]
    finally:
        hook.remove()
    x0 = model.pipe.config.vae.scaled(samples)
    noise = K.prepare_noise(samples, 5)
    sigmas = K.comfy_sigmas(BASE, "euler", "normal", 4)
    assert len(seen) == 4
    for i, x_in in enumerate(seen):
        kept = (x0 + noise * sigmas[i]) / (sigmas[i] ** 2 + 1) ** 0.5  # the re-noised latent, as the UNet gets it
        same = torch.allclose(x_in[..., 4:], kept[..., 4:].expand_as(x_in[..., 4:]), atol=1e-5)
        assert same == (i < 3), i
    # the plain soft mask blends every step instead: a different result on the right half
    plain = K.sample(model, pos, neg, {"samples": samples, "noise_mask": mask}, seed=5, steps=4, cfg=3.0,
                     sampler_name="euler", scheduler="normal")["samples"]
    assert not torch.allclose(out[..., 4:], plain[..., 4:], atol=1e-3)


# --- PatchModelAddDownscale (Kohya deep shrink) ----------------------------------------------------

def _shrunk_by_hand(unet, x, t, context, block, factor, after_skip):
    """ComfyUI's UNet forward with deep shrink's input/output block patches written out: bicubic
    down after input block `block` (before or after its skip is kept), h resized (bilinear) to a
    skip whose size differs before they are joined."""
    from opensd.models.unet import embed
    from opensd.workflows.nodes_image import upscale
    emb = embed(unet, unet.config, t, None, torch.float32)
    h, hs = x, []
    for i, b in enumerate(unet.input_blocks):
        h = b(h, emb, context)
        shrink = i == block
        if shrink and not after_skip:
            h = upscale(h, round(h.shape[-1] / factor), round(h.shape[-2] / factor), "bicubic", "disabled")
        hs.append(h)
        if shrink and after_skip:
            h = upscale(h, round(h.shape[-1] / factor), round(h.shape[-2] / factor), "bicubic", "disabled")
    h = unet.middle_block(h, emb, context)
    for b in unet.output_blocks:
        skip = hs.pop()
        if h.shape[-2:] != skip.shape[-2:]:
            h = upscale(h, skip.shape[-1], skip.shape[-2], "bilinear", "disabled")
        h = b(torch.cat([h, skip], dim=1), emb, context, hs[-1].shape[-2:] if hs else None)
    return unet.out(h)


@pytest.mark.parametrize("block,factor,after_skip", [(1, 2.0, True), (1, 1.5, False), (2, 2.0, False),
                                                    (3, 2.0, True), (3, 1.5, False)])
def test_deep_shrink_hooks_equal_comfyuis_block_patches(env, block, factor, after_skip):
    from opensd.workflows.nodes_image import upscale
    from opensd.workflows.unet_patches import deep_shrink
    model, pos, _ = env
    unet = model.pipe.model.unet
    x, t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5)), torch.tensor([300.0])
    with torch.no_grad():
        plain = unet(x, t, pos[0][0])
        with deep_shrink(unet, block, factor, after_skip, lambda v, w, h: upscale(v, w, h, "bicubic", "disabled"),
                         lambda v, w, h: upscale(v, w, h, "bilinear", "disabled")):
            got = unet(x, t, pos[0][0])
        want = _shrunk_by_hand(unet, x, t, pos[0][0], block, factor, after_skip)
        assert torch.equal(unet(x, t, pos[0][0]), plain)  # nothing left behind
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, plain)


def test_patch_model_add_downscale_acts_within_its_sigma_window(env):
    model, pos, neg = env
    unet = model.pipe.model.unet
    (patched,) = P.patch_model_add_downscale(None, model, 1, 2.0, 0.0, 0.35, True, "bicubic", "bilinear")
    edge = float(np.interp(0.65 * 999, np.arange(1000), _table()))  # end_percent 0.35: timestep 649.35
    x, t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(6)), torch.tensor([300.0])
    (patch,) = patched.network_patches
    with torch.no_grad():
        plain = unet(x, t, pos[0][0])
        with patch(unet, edge * 0.999):  # below the window: untouched
            assert torch.equal(unet(x, t, pos[0][0]), plain)
        with patch(unet, edge * 1.001):
            inside = unet(x, t, pos[0][0])
        torch.testing.assert_close(inside, _shrunk_by_hand(unet, x, t, pos[0][0], 1, 2.0, True))
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    kw = dict(seed=4, steps=3, cfg=5.0, sampler_name="euler", scheduler="normal")
    shrunk = K.sample(patched, pos, neg, latent, **kw)["samples"]
    assert torch.isfinite(shrunk).all()
    assert not torch.allclose(shrunk, K.sample(model, pos, neg, latent, **kw)["samples"])
    # the steps run at timesteps 999, 499.5 and 0: none in a window of timesteps 399.6 to 299.7
    (between,) = P.patch_model_add_downscale(None, model, 1, 2.0, 0.6, 0.7, True, "bicubic", "bilinear")
    assert torch.equal(K.sample(between, pos, neg, latent, **kw)["samples"],
                       K.sample(model, pos, neg, latent, **kw)["samples"])


def test_patch_model_add_downscale_is_refused_without_a_unet():
    from types import SimpleNamespace

    from opensd.errors import InvalidArgument
    from opensd.families import FLUX
    with pytest.raises(InvalidArgument, match="^model: PatchModelAddDownscale .* not available for Flux"):
        P.patch_model_add_downscale(None, ModelRef(SimpleNamespace(family=FLUX), "f"), 3, 2.0, 0.0, 0.35, True,
                                    "bicubic", "bicubic")


# --- ModelSamplingContinuousEDM / ModelSamplingContinuousV ---------------------------------------

@pytest.mark.parametrize("node,sampling,time,sd,sign", [
    ("edm", "eps", lambda s: 0.25 * math.log(s), 1.0, None),
    ("edm", "v_prediction", lambda s: 0.25 * math.log(s), 1.0, -1),
    ("edm", "edm_playground_v2.5", lambda s: 0.25 * math.log(s), 0.5, 1),
    ("v", "v_prediction", lambda s: math.atan(s) * 2 / math.pi, 1.0, -1)])
def test_continuous_sampling_scales_inputs_times_and_outputs(env, node, sampling, time, sd, sign):
    model, _, _ = env
    patch = P.model_sampling_continuous_edm if node == "edm" else P.model_sampling_continuous_v
    (m,) = patch(None, model, sampling, 120.0, 0.002)
    x, out, s = torch.full((1, 1, 2, 2), 3.0), torch.full((1, 1, 2, 2), 0.5), 2.0
    seen = {}

    def unet(x_in, t, **cond):
        seen.update(x_in=x_in, t=t)
        return out
    d = m.sampling.denoise(unet, x, torch.tensor(s))
    assert torch.allclose(seen["x_in"], x / math.sqrt(s * s + sd * sd))
    assert float(seen["t"][0]) == pytest.approx(time(s), rel=1e-6)
    if sign is None:  # eps
        want = 3.0 - 0.5 * s
    else:  # c_skip x -/+ c_out F (v / EDM)
        want = 3.0 * sd * sd / (s * s + sd * sd) + sign * 0.5 * s * sd / math.sqrt(s * s + sd * sd)
    assert torch.allclose(d, torch.full_like(x, want), rtol=1e-5)


def test_continuous_schedules_space_the_models_time(env):
    model, _, _ = env
    (edm,) = P.model_sampling_continuous_edm(None, model, "v_prediction", 120.0, 0.002)
    (normal,) = S.basic_scheduler(None, edm, "normal", 4, 1.0)
    np.testing.assert_allclose(normal.numpy(), list(np.exp(np.linspace(np.log(120), np.log(0.002), 4))) + [0],
                               rtol=1e-4)
    (karras,) = S.basic_scheduler(None, edm, "karras", 3, 1.0)
    np.testing.assert_allclose(karras.numpy(), S.karras_scheduler(None, 3, 120.0, 0.002, 7.0)[0].numpy(), rtol=1e-4)
    assert edm.sampling.percent_to_sigma(0.5) == pytest.approx(math.sqrt(120 * 0.002), rel=1e-4)
    (v,) = P.model_sampling_continuous_v(None, model, "v_prediction", 500.0, 0.03)
    (normal,) = S.basic_scheduler(None, v, "normal", 3, 1.0)
    times = np.linspace(np.arctan(500) * 2 / np.pi, np.arctan(0.03) * 2 / np.pi, 3)  # even in atan time
    np.testing.assert_allclose(normal.numpy(), list(np.tan(times * np.pi / 2)) + [0], rtol=1e-4)
    from opensd.errors import InvalidArgument
    with pytest.raises(InvalidArgument, match="^sigma_min: must be above 0"):
        P.model_sampling_continuous_v(None, model, "v_prediction", 500.0, 0.0)
    with pytest.raises(InvalidArgument, match="^sigma_min: 9.0 must be below sigma_max 2.0"):
        P.model_sampling_continuous_edm(None, model, "eps", 2.0, 9.0)


def test_playground_v25_samples_edm_in_its_own_latent_format_by_hand(env):
    model, pos, _ = env
    (m,) = P.model_sampling_continuous_edm(None, model, "edm_playground_v2.5", 80.0, 0.002)
    mean = torch.tensor([-1.6574, 1.886, -1.383, 2.5155]).view(1, 4, 1, 1)
    std = torch.tensor([8.4927, 5.9022, 6.5498, 5.2299]).view(1, 4, 1, 1)
    start = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    kw = dict(seed=9, steps=3, cfg=1.0, sampler_name="euler", scheduler="normal", denoise=1.0)
    got = K.sample(m, pos, pos, {"samples": start}, **kw)["samples"]
    # by hand: the latent standardised per channel and halved, EDM's F with sigma_data 0.5 at time
    # 0.25 log sigma, Euler steps over log-even sigmas from 80 (the first noise scaled by sqrt(1 + 80^2))
    sigmas = [float(s) for s in np.exp(np.linspace(np.log(80.0), np.log(0.002), 3))] + [0.0]
    x0 = (start - mean) * 0.5 / std
    x = x0 + K.prepare_noise(start, 9) * math.sqrt(1 + 80.0 ** 2)
    unet = model.pipe.model.unet
    with torch.no_grad():
        for s, nxt in zip(sigmas, sigmas[1:]):
            f = unet(x / math.sqrt(s * s + 0.25), torch.tensor([0.25 * math.log(s)]), pos[0][0])
            denoised = x * 0.25 / (s * s + 0.25) + f * s * 0.5 / math.sqrt(s * s + 0.25)
            x = x + (x - denoised) / s * (nxt - s)
    torch.testing.assert_close(got, x * std / 0.5 + mean, rtol=1e-4, atol=1e-4)


# --- TorchCompileModel ---------------------------------------------------------------------------

def test_torch_compile_model_runs_compiled_only_for_its_model_and_compiles_once(env, monkeypatch):
    """Traced with dynamo's eager backend (the same capture, no minutes of C++ compilation)."""
    from opensd.pipeline import compiled
    from opensd.workflows import nodes_torch_compile as T
    monkeypatch.setattr(compiled, "BACKEND", "eager")
    model, pos, neg = env
    network = model.pipe.family.network(model.pipe.model)
    compiles, real = [], compiled.compile_in_place
    monkeypatch.setattr(compiled, "compile_in_place", lambda m: compiles.append(m) or real(m))
    seen = []
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    kw = dict(seed=2, steps=3, cfg=5.0, sampler_name="euler", scheduler="normal")
    plain = K.sample(model, pos, neg, latent, **kw)["samples"]
    (fast,) = T.torch_compile_model(None, model, "inductor")
    spy = network.forward
    monkeypatch.setattr(network, "forward", lambda *a, **k: seen.append(network._compiled_call_impl is not None)
                        or spy(*a, **k))
    out = K.sample(fast, pos, neg, latent, **kw)["samples"]
    assert seen and network._compiled_call_impl is None  # compiled during the run, plain after it
    torch.testing.assert_close(out, plain, rtol=1e-5, atol=1e-5)
    K.sample(fast, pos, neg, latent, **kw)
    assert compiles == [network]  # the second run reused the compiled call
