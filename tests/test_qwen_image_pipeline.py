"""Qwen-Image end to end against diffusers' QwenImagePipeline on tiny random weights (network, VAE,
Qwen2.5-VL text encoder, tokenizer): a QwenImagePipeline folder loads as a Qwen-Image model; our
prompt embeddings are encode_prompt's; txt2img with true CFG 4 against a negative prompt equals the
pipeline step by step (the schedule, the masked padded prompts, the renormalised CFG) and in pixels;
ComfyUI's split files found in the models folder make the same image."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline
from transformers import Qwen2TokenizerFast

from dit_fixtures import assert_same_pixels, spy_euler
from opensd.errors import CheckpointError
from opensd.families.chroma import text_mask
from opensd.pipeline.pipeline import load
from qwen_image_fixtures import SCHEDULER, qwen_image_parts, write_qwen_image_folder, write_qwen_image_split_files_of
from reference import assert_close_scaled

PROMPT, NEGATIVE = "A photograph of an astronaut riding a horse on the moon", "blurry, lowres"
STEPS, SEED, SIZE = 4, 99, 64


@pytest.fixture(scope="module")
def qwen_image(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen_image")
    parts = qwen_image_parts()
    folder = write_qwen_image_folder(root / "model", parts)
    ours = load(folder, precision="fp32", device="cpu")
    ref = QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER), vae=parts["vae"],
                            text_encoder=parts["text_encoder"],
                            tokenizer=Qwen2TokenizerFast.from_pretrained(str(folder / "tokenizer")),
                            transformer=parts["transformer"])
    ref.set_progress_bar_config(disable=True)
    return ours, ref, parts


def test_detected_as_qwen_image(qwen_image):
    ours, _, _ = qwen_image
    cfg = ours.config
    assert (cfg.family, cfg.prediction, cfg.text_length, cfg.resolution) == ("qwen_image", "flow", 512, 1328)
    assert cfg.qwen_image.num_layers == 2 and cfg.qwen_image.joint_attention_dim == cfg.qwen25vl.hidden_size == 128
    assert ours.family.defaults(cfg) == {"cfg": 4.0, "steps": 50} and ours.family.default_scheduler == "simple"


@pytest.mark.parametrize("text", [PROMPT, NEGATIVE, "", "a (cat:1.3) on a [red] chair"])
def test_prompt_embeddings_equal_encode_prompt(qwen_image, text):
    ours, ref, _ = qwen_image
    plain = text.replace("(", "").replace(":1.3)", "").replace("[", "").replace("]", "")
    with torch.no_grad():
        want, _ = ref.encode_prompt(plain, device=torch.device("cpu"), max_sequence_length=512)
    c = ours.conditioner().encode(text)
    n = want.shape[1]
    assert c.context.shape == (1, 512, 128) and c.pooled.shape == (1, 0)
    assert int(text_mask(c.context).sum()) == n and bool(text_mask(c.context)[0, :n].all())
    assert_close_scaled(c.context[0, :n], want[0], rel=1e-5)


def _run_ref(ref, pipe, negative, scale):
    noise = pipe.noise([SEED], SIZE // 8, SIZE // 8)
    packed = QwenImagePipeline._pack_latents(noise, 1, 16, SIZE // 8, SIZE // 8)
    steps = []

    def on_step_end(p, i, t, kwargs):
        steps.append(QwenImagePipeline._unpack_latents(kwargs["latents"].clone(), SIZE, SIZE, 8)[:, :, 0])
        return {}

    with torch.no_grad():
        out = ref(PROMPT, negative_prompt=negative, true_cfg_scale=scale, height=SIZE, width=SIZE,
                  num_inference_steps=STEPS, latents=packed, output_type="np", callback_on_step_end=on_step_end)
    return out.images[0], steps


@pytest.mark.parametrize("cfg", [1.0, 4.0])
def test_txt2img_equals_qwen_image_pipeline_step_by_step(qwen_image, monkeypatch, cfg):
    ours, ref, _ = qwen_image
    seen = spy_euler(monkeypatch)
    negative = NEGATIVE if cfg > 1 else None
    (image,) = ours.txt2img(PROMPT, negative or "", steps=STEPS, seed=SEED, width=SIZE, height=SIZE, cfg=cfg)
    want, steps = _run_ref(ref, ours, negative, cfg)
    torch.testing.assert_close(seen["sigmas"], ref.scheduler.sigmas.float(), rtol=2e-6, atol=2e-6)
    assert len(seen["steps"]) == len(steps) == STEPS
    for got, expected in zip(seen["steps"], steps):
        assert_close_scaled(got, expected, rel=1e-4)
    ours_8bit, ref_8bit = np.asarray(image).astype(int), np.round(want * 255).astype(int)
    assert np.abs(ours_8bit - ref_8bit).max() <= 1 and ref_8bit.std() > 1


def test_comfyui_split_files_found_in_the_models_folder(qwen_image, tmp_path):
    ours, _, parts = qwen_image
    want = ours.txt2img(PROMPT, "", steps=2, seed=SEED, width=SIZE, height=SIZE)[0]
    files = write_qwen_image_split_files_of(tmp_path / "models", parts)
    split = load(files["unet"], precision="fp32", device="cpu")
    assert split.config.family == "qwen_image" and sorted(p.name for p in split.loaded.part_paths) == [
        "qwen_2.5_vl_7b.safetensors", "qwen_image_vae.safetensors"]
    assert_same_pixels(split.txt2img(PROMPT, "", steps=2, seed=SEED, width=SIZE, height=SIZE)[0], want)
    files["te"].unlink()
    with pytest.raises(CheckpointError, match=r"this Qwen-Image file has no Qwen2.5-VL-7B text encoder"):
        load(files["unet"], precision="fp32", device="cpu")


def test_img2img_samples_the_tail_of_the_pipelines_schedule(qwen_image, monkeypatch):
    """img2img through the family's schedule: at strength 0.5 of 4 steps it samples the last 3 steps
    (A1111's int(strength * steps) + 1) of the txt2img schedule, from the encoded image."""
    ours, _, _ = qwen_image
    seen = spy_euler(monkeypatch)
    init = ours.txt2img(PROMPT, "", steps=STEPS, seed=SEED, width=SIZE, height=SIZE)[0]
    full = seen.pop("sigmas")
    ours.img2img(init, "a red chair", steps=STEPS, seed=SEED + 1, strength=0.5)
    torch.testing.assert_close(seen["sigmas"], full[1:])
