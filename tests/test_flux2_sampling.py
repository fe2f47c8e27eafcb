"""FLUX.2 [klein]'s sampling against diffusers' Flux2KleinPipeline on tiny random weights, from the
same patched latents and the same prompt embeddings: the family's schedule (mu from the image's
tokens and the step count) and our Euler steps over the family's network call equal the pipeline's
step by step, for a distilled model (no CFG) and a base model (CFG 4 against a negative prompt);
and the schedule equals ComfyUI's Flux2Scheduler's rule at sizes above 4300 tokens too."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline

from flux2_fixtures import F2_CTX, flux2_transformer
from opensd.checkpoints import detect_dit as DD
from opensd.checkpoints.keymap_flux2 import flux2_from_diffusers
from opensd.families.flux2 import COMFY_SHIFT, FLUX2_FAMILY
from opensd.models.config_dit import FLUX2_VAE
from opensd.models.config_dit import Flux2ModelConfig, PatchedLatentConfig
from opensd.models.flux2 import Flux2
from opensd.sampling.flow import flux2_mu
from opensd.sampling.schedules import make_sigmas
from reference import assert_close_scaled, randomize_

SIZE, STEPS, L = 64, 4, 9  # 64 px: a 4x4 grid of 128-channel cells


def _tiny_vae() -> AutoencoderKLFlux2:
    vae = AutoencoderKLFlux2(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4)
    randomize_(vae, seed=2, std=0.1)
    vae.bn.running_mean.normal_(0, 0.3)
    vae.bn.running_var.uniform_(0.5, 2.0)
    return vae.eval()


@pytest.fixture(scope="module")
def pair():
    theirs = flux2_transformer(seed=4)
    shapes = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    net_cfg = DD.flux2_config_diffusers(shapes, "", {})
    ours = Flux2(net_cfg).eval()
    ours.load_state_dict(flux2_from_diffusers(theirs.state_dict(), net_cfg))
    return ours, theirs


def _ours(net, cfg, latents, context, negative, scale, steps=STEPS):
    """Our run: the family's schedule, network call and our Euler sampler, CFG as the pipeline does."""
    pipe = SimpleNamespace(config=cfg)
    sampling = FLUX2_FAMILY.sampling(pipe, SIZE, SIZE, None, steps)
    sigmas = make_sigmas("simple", sampling.schedule, steps, sampler="euler", family="flux2")
    model = SimpleNamespace(network=net)
    fn = FLUX2_FAMILY.net_fn(model)

    def velocity(x, t):
        v = fn(x, t, context, None)
        if negative is None:
            return v
        neg = fn(x, t, negative, None)
        return neg + scale * (v - neg)

    seen = []
    sample = sampling.sampler("euler")
    with torch.no_grad():
        sample(lambda x, s: sampling.denoise(lambda xx, tt: velocity(xx, tt), x, s), latents, sigmas,
               lambda i, x, d: seen.append(x.clone()))
    return sigmas, seen


def _config(net_cfg, distilled):
    return Flux2ModelConfig(net_cfg, PatchedLatentConfig(FLUX2_VAE), distilled=distilled)


@pytest.mark.parametrize("distilled", [True, False], ids=["distilled", "base"])
def test_txt2img_equals_flux2_klein_pipeline_step_by_step(pair, distilled):
    ours, theirs = pair
    cfg = _config(ours.cfg, distilled)
    scale = FLUX2_FAMILY.defaults(cfg)["cfg"]
    assert scale == (1.0 if distilled else 4.0)
    g = torch.Generator().manual_seed(11)
    latents = torch.randn(1, 128, SIZE // 16, SIZE // 16, generator=g)
    context, negative = torch.randn(1, L, F2_CTX, generator=g), torch.randn(1, L, F2_CTX, generator=g)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                                base_shift=0.5, max_shift=1.15)
    ref = Flux2KleinPipeline(scheduler=scheduler, vae=_tiny_vae(), text_encoder=None, tokenizer=None,
                             transformer=theirs, is_distilled=distilled)
    ref.set_progress_bar_config(disable=True)
    steps = []

    def on_step_end(p, i, t, kwargs):
        steps.append(kwargs["latents"].clone())
        return {}

    with torch.no_grad():
        ref(prompt_embeds=context, negative_prompt_embeds=negative, height=SIZE, width=SIZE,
            num_inference_steps=STEPS, guidance_scale=scale, latents=latents, output_type="latent",
            callback_on_step_end=on_step_end)
    sigmas, seen = _ours(ours, cfg, latents, context, None if distilled else negative, scale)
    torch.testing.assert_close(sigmas, ref.scheduler.sigmas.float(), rtol=2e-6, atol=1e-6)
    assert len(seen) == len(steps) == STEPS
    for got, want in zip(seen, steps):  # theirs: tokens (B, h * w, 128) row by row
        assert_close_scaled(got.flatten(2).transpose(1, 2), want, rel=1e-4)


@pytest.mark.parametrize("tokens, steps", [(16, 4), (4096, 4), (4096, 50), (9216, 20)])
def test_schedule_is_comfyui_flux2_scheduler_rule(tokens, steps):
    """ComfyUI's Flux2Scheduler: the times linspace(1, 0, steps + 1) shifted by mu = flux2_mu(round(w h / 256),
    steps); an image of `tokens` 16x16 cells here."""
    side = int(math.sqrt(tokens)) * 16
    cfg = _config(DD.flux2_config({"img_in.weight": (64, 128), "txt_in.weight": (64, 24),
                                   "double_blocks.0.img_attn.norm.query_norm.scale": (32,),
                                   "double_blocks.0.img_mlp.2.weight": (64, 192)}, "", {}), True)
    sampling = FLUX2_FAMILY.sampling(SimpleNamespace(config=cfg), side, side, None, steps)
    sigmas = make_sigmas("simple", sampling.schedule, steps, sampler="euler", family="flux2")
    mu = flux2_mu(tokens, steps)
    t = torch.linspace(1, 0, steps + 1, dtype=torch.float64)[:-1]
    want = torch.cat([math.exp(mu) / (math.exp(mu) + (1 / t - 1)), torch.zeros(1, dtype=torch.float64)])
    torch.testing.assert_close(sigmas.double(), want, rtol=1e-5, atol=1e-6)


def test_without_size_or_steps_comfyui_shift():
    cfg = _config(DD.flux2_config({"img_in.weight": (64, 128), "txt_in.weight": (64, 24),
                                   "double_blocks.0.img_attn.norm.query_norm.scale": (32,),
                                   "double_blocks.0.img_mlp.2.weight": (64, 192)}, "", {}), True)
    a = FLUX2_FAMILY.sampling(SimpleNamespace(config=cfg), None, None)
    b = FLUX2_FAMILY.sampling(SimpleNamespace(config=cfg), 1024, 1024, COMFY_SHIFT)
    assert torch.equal(a.schedule.sigmas, b.schedule.sigmas)
