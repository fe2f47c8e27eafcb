"""Qwen-Image img2img and inpainting against diffusers' QwenImageImg2ImgPipeline and
QwenImageInpaintPipeline on tiny random weights: the schedule's tail, the noised init latent
(sigma * noise + (1 - sigma) * the normalised image latent) and every step, at CFG 1 and true CFG 4
(renormalised), at two strengths.

Deliberate differences, which the tests hold fixed rather than match:
- the init image's latent: opensd (as A1111 and ComfyUI) encodes the VAE posterior's mean; diffusers
  samples the posterior with its generator. The reference is run with the mean.
- strength -> steps: opensd (the CLI, the A1111 API and web UI) runs A1111's int(strength * steps) + 1
  steps of the `steps`-step schedule; diffusers' get_timesteps runs ceil(strength * steps). They agree
  unless strength * steps is whole (0.5 of 4 steps: A1111 3, diffusers 2); the strengths here are not.
  ComfyUI's denoise (its KSampler: the last `steps` of an int(steps / denoise)-step schedule) is a third
  rule, followed by its graphs.
- the inpaint mask: A1111's (blurred by mask_blur, area-downscaled to the latent and rounded) against
  diffusers' (binarised, nearest-downscaled); equal for the mask used here (its edges on latent
  cells, mask_blur 0). Where diffusers noises the kept area to the next step's sigma after each step
  and lays the clean latent there after the last, opensd keeps the kept area's prediction on the
  image's latent (A1111's blend): for Euler the same latents. After decoding, opensd lays the init
  image's own pixels back outside the mask (A1111's paste-back); diffusers returns the decoded latent
  there, so the pixels are compared inside the mask.
- only-masked inpainting (A1111's inpaint_full_res and its padding) is diffusers' padding_mask_crop:
  the mask's box grown by the padding and to the generation's ratio, the crop scaled (Lanczos) to the
  generation size, the result scaled back and laid over the init image through the mask. The box's
  growth to the ratio rounds where diffusers truncates (at most a pixel apart); the crop here is
  square already.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, QwenImageImg2ImgPipeline, QwenImageInpaintPipeline
from diffusers.pipelines.qwenimage import pipeline_qwenimage_img2img as img2img_module
from diffusers.pipelines.qwenimage import pipeline_qwenimage_inpaint as inpaint_module
from PIL import Image, ImageDraw
from transformers import Qwen2TokenizerFast

from dit_fixtures import spy_euler
from opensd.pipeline import img2img as i2i
from opensd.pipeline.pipeline import load
from qwen_image_fixtures import SCHEDULER, qwen_image_parts, write_qwen_image_folder
from reference import assert_close_scaled

PROMPT, NEGATIVE = "A photograph of an astronaut riding a horse on the moon", "blurry, lowres"
STEPS, SEED, SIZE = 4, 99, 64
STRENGTHS = (0.6, 0.3)  # 3 and 2 of 4 steps by either rule


@pytest.fixture(scope="module")
def qwen_image(tmp_path_factory):
    parts = qwen_image_parts()
    folder = write_qwen_image_folder(tmp_path_factory.mktemp("qwen_image") / "model", parts)
    ours = load(folder, precision="fp32", device="cpu")
    common = dict(vae=parts["vae"], text_encoder=parts["text_encoder"], transformer=parts["transformer"],
                  tokenizer=Qwen2TokenizerFast.from_pretrained(str(folder / "tokenizer")))
    refs = {}
    for name, cls in (("img2img", QwenImageImg2ImgPipeline), ("inpaint", QwenImageInpaintPipeline)):
        refs[name] = cls(scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER), **common)
        refs[name].set_progress_bar_config(disable=True)
    return ours, refs


def _init_image():
    """A smooth picture with some texture, so the VAE's latent is not noise-like."""
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    rgb = np.stack([x, y, 0.5 + 0.3 * np.sin(8 * x * y)], -1)
    rgb += np.random.default_rng(0).normal(0, 0.05, rgb.shape)
    return Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8))


def _mask():
    mask = Image.new("L", (SIZE, SIZE), 0)
    ImageDraw.Draw(mask).rectangle((16, 8, 47, 39), fill=255)  # whole latent cells: rows 1..4, columns 2..5
    return mask


def _reference(module, ref, ours, monkeypatch, cfg, **call):
    """diffusers' pipeline from our seed's noise (its randn_tensor) and the posterior mean (its
    retrieve_latents): its image (0..1) and each step's latent, unpacked."""
    h = w = SIZE // 8
    noise = ours.noise([SEED], h, w)
    monkeypatch.setattr(module, "randn_tensor", lambda shape, **kw: noise[:, None].clone())
    monkeypatch.setattr(module, "retrieve_latents", lambda out, generator=None, sample_mode="mode":
                        out.latent_dist.mode())
    steps = []

    def on_step_end(p, i, t, kwargs):
        steps.append(type(ref)._unpack_latents(kwargs["latents"].clone(), SIZE, SIZE, 8)[:, :, 0])
        return {}

    with torch.no_grad():
        out = ref(PROMPT, negative_prompt=NEGATIVE if cfg > 1 else None, true_cfg_scale=cfg, height=SIZE,
                  width=SIZE, num_inference_steps=STEPS, callback_on_step_end=on_step_end, **{"output_type": "np", **call})
    return out.images[0], steps


def _assert_steps_equal(seen, ref, steps, strength):
    run = len(steps)
    assert run == i2i.steps_run(STEPS, strength) == len(seen["steps"])
    torch.testing.assert_close(seen["sigmas"], ref.scheduler.sigmas[STEPS - run:].float(), rtol=2e-6, atol=2e-6)
    for got, expected in zip(seen["steps"], steps):
        assert_close_scaled(got, expected, rel=1e-4)


@pytest.mark.parametrize("strength", STRENGTHS)
@pytest.mark.parametrize("cfg", [1.0, 4.0])
def test_img2img_equals_the_img2img_pipeline_step_by_step(qwen_image, monkeypatch, cfg, strength):
    ours, refs = qwen_image
    init = _init_image()
    seen = spy_euler(monkeypatch)
    (image,) = ours.img2img(init, PROMPT, NEGATIVE if cfg > 1 else "", steps=STEPS, seed=SEED, cfg=cfg,
                            strength=strength)
    want, steps = _reference(img2img_module, refs["img2img"], ours, monkeypatch, cfg, image=init, strength=strength)
    _assert_steps_equal(seen, refs["img2img"], steps, strength)
    got, ref_8bit = np.asarray(image).astype(int), np.round(want * 255).astype(int)
    assert np.abs(got - ref_8bit).max() <= 1 and np.abs(got - np.asarray(init).astype(int)).mean() > 2


@pytest.mark.parametrize("strength", STRENGTHS)
@pytest.mark.parametrize("cfg", [1.0, 4.0])
def test_inpaint_equals_the_inpaint_pipeline_step_by_step(qwen_image, monkeypatch, cfg, strength):
    ours, refs = qwen_image
    init, mask = _init_image(), _mask()
    seen = spy_euler(monkeypatch)
    (image,) = ours.img2img(init, PROMPT, NEGATIVE if cfg > 1 else "", mask=mask, mask_blur=0, steps=STEPS,
                            seed=SEED, cfg=cfg, strength=strength, inpainting_fill="original")
    want, steps = _reference(inpaint_module, refs["inpaint"], ours, monkeypatch, cfg, image=init,
                             mask_image=mask, strength=strength)
    _assert_steps_equal(seen, refs["inpaint"], steps, strength)
    inside = np.asarray(mask) > 0
    got, ref_8bit, kept = (np.asarray(a).astype(int) for a in (image, np.round(want * 255), init))
    assert np.abs(got - ref_8bit)[inside].max() <= 1 and np.abs(got - kept)[inside].mean() > 2
    assert np.array_equal(got[~inside], kept[~inside])  # A1111's paste-back
    assert np.abs(ref_8bit - kept)[~inside].mean() > 0.5  # diffusers: the VAE's round trip


def test_the_step_rules_differ_where_strength_times_steps_is_whole(qwen_image):
    """0.5 of 4 steps: A1111 (opensd) samples 3, diffusers' get_timesteps 2."""
    _, refs = qwen_image
    ref = refs["img2img"]
    ref.scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / STEPS, STEPS), mu=0.5)
    assert ref.get_timesteps(STEPS, 0.5, "cpu")[1] == 2 and i2i.steps_run(STEPS, 0.5) == 3
    assert [ref.get_timesteps(STEPS, s, "cpu")[1] for s in STRENGTHS] == [i2i.steps_run(STEPS, s) for s in STRENGTHS]


@pytest.mark.parametrize("cfg", [1.0, 4.0])
def test_only_masked_equals_padding_mask_crop(qwen_image, monkeypatch, cfg):
    """A 16x16 mask in a 128x128 image, padded by 8: the 32x32 crop is sampled at 64x64 (its mask on
    whole latent cells) and laid back; outside the mask the init image's own pixels in both."""
    ours, refs = qwen_image
    init = _init_image().resize((2 * SIZE, 2 * SIZE), Image.LANCZOS)
    mask = Image.new("L", init.size, 0)
    ImageDraw.Draw(mask).rectangle((56, 56, 71, 71), fill=255)
    seen = spy_euler(monkeypatch)
    (image,) = ours.img2img(init, PROMPT, NEGATIVE if cfg > 1 else "", mask=mask, mask_blur=0, steps=STEPS,
                            seed=SEED, cfg=cfg, strength=0.6, inpaint_full_res=True, inpaint_full_res_padding=8,
                            width=SIZE, height=SIZE)
    ref = refs["inpaint"]
    want = _reference(inpaint_module, ref, ours, monkeypatch, cfg, image=init, mask_image=mask, strength=0.6,
                      padding_mask_crop=8, output_type="pil")
    _assert_steps_equal(seen, ref, want[1], 0.6)
    inside = np.asarray(mask) > 0
    got, expected, kept = (np.asarray(a).astype(int) for a in (image, want[0], init))
    assert got.shape == expected.shape == (2 * SIZE, 2 * SIZE, 3)
    assert np.abs(got - expected)[inside].max() <= 1 and np.abs(got - kept)[inside].mean() > 2
    assert np.array_equal(got[~inside], kept[~inside]) and np.array_equal(expected[~inside], kept[~inside])
