"""Qwen-Image-Edit inpainting: opensd's inpainting with the init image also given as the reference
(`img2img(image, mask=..., references=[image])`) against diffusers' QwenImageEditInpaintPipeline on
tiny random weights, step by step (the model loaded from a QwenImageEditInpaintPipeline folder). That pipeline fits the image to ~1 MP (sides multiples of 32) and
generates at that size, so the image here is 1024x1024 already (at other sizes pass the fitted size as
width/height: the init image is then Lanczos-resized as diffusers resizes it). The deliberate
differences of test_qwen_image_img2img hold (the posterior's mean; A1111's step count, equal at
these strengths; A1111's mask, equal for a mask on whole latent cells; the paste-back)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import QwenImageEditInpaintPipeline
from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_inpaint as module
from PIL import Image, ImageDraw

from dit_fixtures import spy_euler
from reference import assert_close_scaled
from test_qwen_edit_pipeline import edit_pair

PROMPT, NEGATIVE = "make the horse blue", "blurry"
STEPS, SEED, SIZE = 3, 7, 1024


@pytest.fixture(scope="module")
def edit(tmp_path_factory):
    return edit_pair(tmp_path_factory.mktemp("qwen_edit_inpaint") / "model", QwenImageEditInpaintPipeline)


def _image_and_mask():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).resize((SIZE, SIZE), Image.BICUBIC)
    mask = Image.new("L", image.size, 0)
    ImageDraw.Draw(mask).rectangle((256, 384, 639, 767), fill=255)  # whole latent cells
    return image, mask


def test_inpaint_with_the_image_as_reference_equals_the_edit_inpaint_pipeline(edit, monkeypatch):
    """True CFG 4 at strength 0.6 (one case: the pipeline runs at ~1 MP, about half a minute on a CPU)."""
    ours, ref = edit
    cfg, strength = 4.0, 0.6
    image, mask = _image_and_mask()
    seen = spy_euler(monkeypatch)
    negative = NEGATIVE if cfg > 1 else None
    (got,) = ours.img2img(image, PROMPT, negative or "", mask=mask, mask_blur=0, references=[image], steps=STEPS,
                          seed=SEED, cfg=cfg, strength=strength, inpainting_fill="original")
    side = SIZE // 8
    noise = ours.noise([SEED], side, side)
    monkeypatch.setattr(module, "randn_tensor", lambda shape, **kw: noise[:, None].clone())
    monkeypatch.setattr(module, "retrieve_latents", lambda out, generator=None, sample_mode="mode":
                        out.latent_dist.mode())  # opensd encodes the posterior's mean
    steps = []

    def on_step_end(p, i, t, kwargs):
        steps.append(QwenImageEditInpaintPipeline._unpack_latents(kwargs["latents"].clone(), SIZE, SIZE, 8)[:, :, 0])
        return {}

    with torch.no_grad():
        want = ref(image, PROMPT, negative_prompt=negative, mask_image=mask, true_cfg_scale=cfg, strength=strength,
                   num_inference_steps=STEPS, output_type="np", callback_on_step_end=on_step_end).images[0]
    assert len(seen["steps"]) == len(steps) == 2
    torch.testing.assert_close(seen["sigmas"], ref.scheduler.sigmas[STEPS - len(steps):].float(), rtol=2e-6, atol=2e-6)
    for mine, expected in zip(seen["steps"], steps):
        assert_close_scaled(mine, expected, rel=1e-4)
    inside = np.asarray(mask) > 0
    a, b, kept = np.asarray(got).astype(int), np.round(want * 255).astype(int), np.asarray(image).astype(int)
    assert np.abs(a - b)[inside].max() <= 1 and np.abs(a - kept)[inside].mean() > 2
    assert np.array_equal(a[~inside], kept[~inside])  # A1111's paste-back
