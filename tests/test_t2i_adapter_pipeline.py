"""txt2img with a T2I-Adapter equals diffusers' StableDiffusionAdapterPipeline (SD1) and
StableDiffusionXLAdapterPipeline (SDXL) step by step, on the tiny random diffusers folders of
tests/test_pipeline_equivalence.py (same Euler path: see there) and a random adapter saved as a
diffusers folder and loaded by us from disk."""
from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionAdapterPipeline, StableDiffusionXLAdapterPipeline, T2IAdapter
from PIL import Image, ImageDraw
from test_loader import make_diffusers_folder
from test_pipeline_equivalence import CFG, NEGATIVE, PROMPT, SEED, STEPS, _hf_tokenizer, _scheduler, vocab_dir  # noqa: F401

from opensd.adapters.controlnet import ControlSpec, load_controlnet
from opensd.pipeline.pipeline import load
from opensd.sampling import samplers as S
from opensd.sampling.schedules import normal_sigmas
from reference import assert_close_scaled, randomize_

SCALE = 0.8
ADAPTERS = {"sd1": dict(channels=[32, 64], num_res_blocks=2, downscale_factor=8, adapter_type="full_adapter"),
            "sdxl": dict(channels=[32, 64], num_res_blocks=2, downscale_factor=16, adapter_type="full_adapter_xl")}


def _control_image() -> Image.Image:
    im = Image.new("RGB", (64, 64), (10, 10, 10))
    d = ImageDraw.Draw(im)
    d.rectangle((8, 10, 40, 50), outline=(250, 250, 250), width=3)
    d.ellipse((30, 4, 60, 34), fill=(120, 200, 40))
    return im


def _pipes(tmp_path, vocab, family):
    parts = make_diffusers_folder(tmp_path / "model", family)
    adapter = randomize_(T2IAdapter(in_channels=3, **ADAPTERS[family]), seed=7, std=0.2).eval()
    adapter.save_pretrained(tmp_path / "adapter", safe_serialization=True)
    common = dict(vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=_hf_tokenizer(vocab),
                  unet=parts["unet"], adapter=adapter, scheduler=_scheduler())
    if family == "sd1":
        ref = StableDiffusionAdapterPipeline(**common, safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
    else:
        ref = StableDiffusionXLAdapterPipeline(**common, text_encoder_2=parts["text_encoder_2"],
                                               tokenizer_2=_hf_tokenizer(vocab, pad_token="!"),
                                               force_zeros_for_empty_prompt=True)
    ref.set_progress_bar_config(disable=True)
    ours = load(tmp_path / "model")
    return ours, ref, load_controlnet(tmp_path / "adapter", ours)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_adapter_txt2img_equals_diffusers_step_by_step(family, tmp_path, vocab_dir, monkeypatch):  # noqa: F811
    ours, ref, adapter = _pipes(tmp_path, vocab_dir, family)
    assert adapter.is_adapter
    steps_ours, steps_ref = [], []
    euler = S.SAMPLERS["euler"]

    def spy(denoise, x, sigmas, callback=None, *args, **kwargs):
        return euler(denoise, x, sigmas, lambda i, x, d: steps_ours.append(x.clone()), *args, **kwargs)

    monkeypatch.setitem(S.SAMPLERS, "euler", spy)
    spec = ControlSpec(adapter, _control_image(), weight=SCALE, end=0.25 if family == "sdxl" else 1.0)
    ours.txt2img(PROMPT, NEGATIVE, steps=STEPS, cfg=CFG, seed=SEED, width=64, height=64, controls=[spec])
    first_run = list(steps_ours)
    steps_ours.clear()
    ours.txt2img(PROMPT, NEGATIVE, steps=STEPS, cfg=CFG, seed=SEED, width=64, height=64, controls=[spec])

    noise = ours.noise([SEED], 8, 8)
    sigmas = normal_sigmas(ours.schedule, STEPS)
    ref.scheduler.set_timesteps(STEPS)
    kw = dict(negative_prompt=NEGATIVE, image=_control_image(), num_inference_steps=STEPS, guidance_scale=CFG,
              height=64, width=64, latents=noise * sigmas[0] / ref.scheduler.init_noise_sigma, output_type="latent",
              adapter_conditioning_scale=SCALE)
    if family == "sdxl":  # the adapter on the first half of the steps: diffusers' i < 4 * 0.5, ours i / 4 <= 0.25
        kw["adapter_conditioning_factor"] = 0.5
    with torch.no_grad():
        ref(PROMPT, **kw, callback=lambda i, t, lat: steps_ref.append(lat.clone()))
    assert len(steps_ours) == len(steps_ref) == STEPS
    for mine, theirs in zip(steps_ours, steps_ref):
        assert_close_scaled(mine, theirs, rel=1e-4)
    assert torch.equal(first_run[-1], steps_ours[-1])  # deterministic (features cached per run only)
    without = []
    monkeypatch.setitem(S.SAMPLERS, "euler",
                        lambda d, x, s, callback=None, *a, **k: euler(d, x, s, lambda i, x, _: without.append(x), *a, **k))
    ours.txt2img(PROMPT, NEGATIVE, steps=STEPS, cfg=CFG, seed=SEED, width=64, height=64)
    assert (without[-1] - steps_ours[-1]).abs().max() > 1e-3  # the adapter mattered
