"""Qwen-Image's sampling against diffusers' QwenImagePipeline on tiny random weights, from the same
latents and the same prompt embeddings (the text encoder and VAE left out: output_type "latent"):
the family's schedule (mu from the image's tokens and the scheduler config, stretched to
shift_terminal) and our Euler steps over the family's network call, with true CFG renormalised as
the pipeline does (guidance.Guidance with the config's cfg_renorm), equal the pipeline's step by
step; the prompt and the negative prompt of different lengths run as one padded, masked batch."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline

from opensd.checkpoints import detect_dit as DD
from opensd.families.qwen_image import COMFY_SHIFT, QWEN_IMAGE_FAMILY
from opensd.models.config_dit import FlowShiftConfig, QwenImageModelConfig
from opensd.models.flux import pack
from opensd.models.qwen_image import QwenImage
from opensd.pipeline.guidance import Guidance
from opensd.sampling.schedules import make_sigmas
from qwen_image_fixtures import QI_CTX, qwen_image_transformer
from reference import assert_close_scaled

WIDTH, HEIGHT, STEPS = 96, 64, 5  # a 6x4 grid of 2x2 patches of a 12x8 latent
RELEASED_SCHEDULER = dict(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=8192, max_shift=0.9,
                          num_train_timesteps=1000, shift=1.0, shift_terminal=0.02, time_shift_type="exponential",
                          use_dynamic_shifting=True)


@pytest.fixture(scope="module")
def pair():
    theirs = qwen_image_transformer(seed=5)
    shapes = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    ours = QwenImage(DD.qwen_image_config(shapes, "", {})).eval()
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def _config(net_cfg, schedule=FlowShiftConfig()):
    return QwenImageModelConfig(net_cfg, SimpleNamespace(downscale=8, embed_dim=16), schedule=schedule)


def _sigmas(cfg, width, height, steps):
    sampling = QWEN_IMAGE_FAMILY.sampling(SimpleNamespace(config=cfg), width, height, None, steps)
    return sampling, make_sigmas("simple", sampling.schedule, steps, sampler="euler", family="qwen_image")


@pytest.mark.parametrize("side, steps", [(1328, 50), (1024, 20), (512, 8), (96, 5)])
def test_schedule_equals_the_pipelines(side, steps):
    """The released scheduler config at the model card's 1328 and other sizes and step counts."""
    scheduler = FlowMatchEulerDiscreteScheduler(**RELEASED_SCHEDULER)
    tokens = (side // 16) ** 2
    s = RELEASED_SCHEDULER
    slope = (s["max_shift"] - s["base_shift"]) / (s["max_image_seq_len"] - s["base_image_seq_len"])
    mu = tokens * slope + s["base_shift"] - slope * s["base_image_seq_len"]
    scheduler.set_timesteps(sigmas=[1.0 - i / steps for i in range(steps)], mu=mu)
    _, sigmas = _sigmas(_config(None), side, side, steps)
    torch.testing.assert_close(sigmas, scheduler.sigmas.float(), rtol=2e-6, atol=2e-6)
    assert sigmas[-2].item() == pytest.approx(0.02, abs=1e-6)


def test_without_size_or_steps_and_with_shift_it_is_comfyuis_aura_flow_shift():
    from opensd.sampling.flow import sd3_shift
    t = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)
    for shift, want in ((None, COMFY_SHIFT), (3.1, 3.1)):
        sampling = QWEN_IMAGE_FAMILY.sampling(SimpleNamespace(config=_config(None)), None if shift is None else 64,
                                              64, shift, 20)
        assert sampling.multiplier == 1.0
        torch.testing.assert_close(sampling.schedule.shift_fn(t).double(), sd3_shift(want, t))


def _ours(net, cfg, latents, context, negative, scale):
    """Our run: the family's schedule and network call, our Euler sampler, the guidance's CFG (renormalised
    by the config's cfg_renorm) over one batch [negative padded with zero rows, prompt]."""
    sampling, sigmas = _sigmas(cfg, WIDTH, HEIGHT, STEPS)
    fn = QWEN_IMAGE_FAMILY.net_fn(SimpleNamespace(network=net))
    length = max(context.shape[1], negative.shape[1])
    rows = torch.cat([torch.nn.functional.pad(c, (0, 0, 0, length - c.shape[1])) for c in (negative, context)])
    g = Guidance(None, (None,), scale, renorm=cfg.cfg_renorm)

    def denoised(x, s):
        both = sampling.denoise(lambda xx, tt: fn(xx, tt, rows, None), x.expand(2, -1, -1, -1), s)
        return g.combine_flow(both, [1.0], x, s)

    seen = []
    with torch.no_grad():
        sampling.sampler("euler")(denoised, latents, sigmas, lambda i, x, d: seen.append(x.clone()))
    return sigmas, seen


def test_txt2img_equals_qwen_image_pipeline_step_by_step(pair):
    ours, theirs = pair
    cfg = _config(ours.cfg)
    scale = QWEN_IMAGE_FAMILY.defaults(cfg)["cfg"]
    assert scale == 4.0 and QWEN_IMAGE_FAMILY.defaults(cfg)["steps"] == 50
    g = torch.Generator().manual_seed(11)
    latents = torch.randn(1, 16, HEIGHT // 8, WIDTH // 8, generator=g)
    context, negative = torch.randn(1, 9, QI_CTX, generator=g), torch.randn(1, 4, QI_CTX, generator=g)
    ref = QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(**RELEASED_SCHEDULER), vae=None,
                            text_encoder=None, tokenizer=None, transformer=theirs)
    ref.set_progress_bar_config(disable=True)
    steps = []

    def on_step_end(p, i, t, kwargs):
        steps.append(kwargs["latents"].clone())
        return {}

    with torch.no_grad():
        ref(prompt_embeds=context, prompt_embeds_mask=torch.ones(1, 9, dtype=torch.long),
            negative_prompt_embeds=negative, negative_prompt_embeds_mask=torch.ones(1, 4, dtype=torch.long),
            true_cfg_scale=scale, height=HEIGHT, width=WIDTH, num_inference_steps=STEPS,
            latents=pack(latents), output_type="latent", callback_on_step_end=on_step_end)
    sigmas, seen = _ours(ours, cfg, latents, context, negative, scale)
    torch.testing.assert_close(sigmas, ref.scheduler.sigmas.float(), rtol=2e-6, atol=2e-6)
    assert len(seen) == len(steps) == STEPS
    for got, want in zip(seen, steps):
        assert_close_scaled(pack(got), want, rel=1e-4)


def test_renormalisation_is_the_pipelines_and_off_in_plain_guidance():
    """combine_flow renormalises the velocities, keeping the prompt's norm per 2x2 patch (the
    pipeline's per-token norm over the packed 64 features); a Guidance without renorm (ComfyUI's
    graphs) is plain CFG."""
    g = torch.Generator().manual_seed(3)
    out, x, sigma = torch.randn(2, 16, 4, 6, generator=g), torch.randn(1, 16, 4, 6, generator=g), torch.tensor(0.7)
    neg, pos = out[:1], out[1:]
    plain = Guidance(None, (None,), 4.0).combine_flow(x - sigma * out, [1.0], x, sigma)
    torch.testing.assert_close(plain, x - sigma * (neg + 4.0 * (pos - neg)))
    plain = (x - plain) / sigma
    got = (x - Guidance(None, (None,), 4.0, renorm=2).combine_flow(x - sigma * out, [1.0], x, sigma)) / sigma
    comb, cond = pack(plain), pack(pos)
    want = comb * (cond.norm(dim=-1, keepdim=True) / comb.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(pack(got), want)
    assert not torch.allclose(got, plain)
    assert math.isclose(float(pack(got).norm(dim=-1)[0, 0]), float(cond.norm(dim=-1)[0, 0]), rel_tol=1e-5)
