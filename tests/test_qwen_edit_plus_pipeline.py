"""Qwen-Image-Edit-2509/2511 ("Edit Plus") end to end against diffusers' QwenImageEditPlusPipeline on
tiny random weights (the single-image edit test's models: network, VAE, Qwen2.5-VL with a vision
tower, a tokenizer with the vision tokens): QwenImageEditPlusPipeline folders load as Edit Plus (2511's
with its transformer's zero_cond_t), and txt2img with one and two references, at CFG 1 and true CFG 4,
equals the pipeline step by step (each reference fitted to ~1 MP for the VAE and ~384x384 for the vision
tower, the prompts labelled "Picture N:", 2511's references modulated at time 0) and in pixels.
The oracle's text encoder is handed the image-token types (see test_qwen_edit_prompts)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, QwenImageEditPlusPipeline, QwenImageTransformer2DModel
from PIL import Image
from transformers import Qwen2TokenizerFast
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

from dit_fixtures import spy_euler
from opensd.pipeline.pipeline import load
from opensd.text.qwen_vl_image import MAX_PIXELS, MIN_PIXELS
from qwen_image_fixtures import SCHEDULER, qwen_image_transformer, qwen_image_vae
from reference import assert_close_scaled
from test_qwen_edit_prompts import hf_vl_model, write_vl_tokenizer

PROMPT, NEGATIVE = "put the horse in the second picture", "blurry"
STEPS, SEED, SIZE = 3, 7, 64


@pytest.fixture(scope="module")
def plus(tmp_path_factory):
    """{"2509": (ours, diffusers'), "2511": (...)}: the same weights, 2511's transformer with zero_cond_t."""
    base = tmp_path_factory.mktemp("qwen_edit_plus")
    tok_dir = write_vl_tokenizer(base / "tokenizer")
    hf_tok = Qwen2TokenizerFast.from_pretrained(str(tok_dir))
    image_id = hf_tok.convert_tokens_to_ids("<|image_pad|>")
    te = hf_vl_model(len(hf_tok), image_id, hf_tok.convert_tokens_to_ids("<|vision_start|>"), width=128,
                     heads=1, sections=(16, 24, 24), vision=dict(depth=4, hidden_size=160, num_heads=2,
                                                                  fullatt_block_indexes=[0, 1, 2, 3]), seed=3)
    vae = qwen_image_vae(6, False)
    plain = qwen_image_transformer(5, ctx=128)
    out = {}
    for variant, zero in (("2509", False), ("2511", True)):
        net = QwenImageTransformer2DModel.from_config(plain.config, zero_cond_t=zero)
        net.load_state_dict(plain.state_dict())
        net.eval()
        root = base / variant
        write_vl_tokenizer(root / "tokenizer")
        (root / "model_index.json").write_text(json.dumps({"_class_name": "QwenImageEditPlusPipeline"}))
        FlowMatchEulerDiscreteScheduler(**SCHEDULER).save_pretrained(root / "scheduler")
        for name, part in (("transformer", net), ("vae", vae), ("text_encoder", te)):
            part.save_pretrained(root / name)
        ours = load(root, precision="fp32", device="cpu")
        processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(min_pixels=MIN_PIXELS,
                                                                              max_pixels=MAX_PIXELS),
                                        tokenizer=hf_tok, video_processor=Qwen2VLVideoProcessor())
        ref = QwenImageEditPlusPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER), vae=vae,
                                        text_encoder=te, tokenizer=hf_tok, processor=processor, transformer=net)
        ref.set_progress_bar_config(disable=True)
        out[variant] = ours, ref
    forward = te.forward
    te.forward = lambda *a, **kw: forward(*a, **kw, mm_token_type_ids=(kw["input_ids"] == image_id).int())
    return out


def _images(n):
    rng = np.random.default_rng(0)
    sizes = [(90, 60), (60, 84)]
    return [Image.fromarray(rng.integers(0, 256, (12, 18, 3), dtype=np.uint8)).resize(sizes[i], Image.BICUBIC)
            for i in range(n)]


def test_folders_are_edit_plus(plus):
    for variant, zero in (("2509", False), ("2511", True)):
        cfg = plus[variant][0].config.qwen_image
        assert (cfg.edit_plus, cfg.zero_cond_t) == (True, zero)


def _run_ref(ref, pipe, images, negative, scale):
    noise = pipe.noise([SEED], SIZE // 8, SIZE // 8)
    packed = QwenImageEditPlusPipeline._pack_latents(noise, 1, 16, SIZE // 8, SIZE // 8)
    steps = []

    def on_step_end(p, i, t, kwargs):
        steps.append(QwenImageEditPlusPipeline._unpack_latents(kwargs["latents"].clone(), SIZE, SIZE, 8)[:, :, 0])
        return {}

    with torch.no_grad():
        out = ref(images, PROMPT, negative_prompt=negative, true_cfg_scale=scale, height=SIZE, width=SIZE,
                  num_inference_steps=STEPS, latents=packed, output_type="np", callback_on_step_end=on_step_end)
    return out.images[0], steps


@pytest.mark.parametrize("variant, count, cfg", [("2509", 1, 1.0), ("2509", 2, 4.0), ("2509", 2, 1.0),
                                                 ("2511", 1, 4.0), ("2511", 2, 1.0)])
def test_edit_plus_equals_the_pipeline_step_by_step(plus, monkeypatch, variant, count, cfg):
    ours, ref = plus[variant]
    seen = spy_euler(monkeypatch)
    negative = NEGATIVE if cfg > 1 else None
    images = _images(count)
    (got,) = ours.txt2img(PROMPT, negative or "", steps=STEPS, seed=SEED, width=SIZE, height=SIZE, cfg=cfg,
                          references=images)
    want, steps = _run_ref(ref, ours, images, negative, cfg)
    assert len(seen["steps"]) == len(steps) == STEPS
    for mine, expected in zip(seen["steps"], steps):
        assert_close_scaled(mine, expected, rel=1e-4)
    ours_8bit, ref_8bit = np.asarray(got).astype(int), np.round(want * 255).astype(int)
    assert np.abs(ours_8bit - ref_8bit).max() <= 1 and ref_8bit.std() > 1
    assert ours._reference_images == []


def test_the_second_reference_and_zero_cond_t_are_seen(plus):
    args = dict(steps=2, seed=SEED, width=SIZE, height=SIZE, cfg=1.0)
    one, two = _images(1), _images(2)
    a = np.asarray(plus["2509"][0].txt2img(PROMPT, "", references=one, **args)[0]).astype(int)
    b = np.asarray(plus["2509"][0].txt2img(PROMPT, "", references=two, **args)[0]).astype(int)
    c = np.asarray(plus["2511"][0].txt2img(PROMPT, "", references=two, **args)[0]).astype(int)
    assert np.abs(a - b).max() > 3 and np.abs(b - c).max() > 3
