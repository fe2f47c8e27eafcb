"""Qwen-Image-Edit end to end against diffusers' QwenImageEditPipeline on tiny random weights (network,
VAE, Qwen2.5-VL with a vision tower of Qwen2.5-VL's layout, a tokenizer with the vision tokens): a
QwenImageEditPipeline folder loads with the vision tower; txt2img with a reference image and true CFG
against a negative prompt equals the pipeline step by step (the reference fitted to ~1 MP and
VAE-encoded, the prompts encoded with the image, the reference tokens in the network) and in pixels.
The oracle's text encoder is handed the image-token types (see test_qwen_edit_prompts)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, QwenImageEditPipeline
from PIL import Image
from transformers import Qwen2TokenizerFast
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

from dit_fixtures import spy_euler
from opensd.errors import InvalidArgument
from opensd.pipeline.pipeline import load
from opensd.text.qwen_vl_image import MAX_PIXELS, MIN_PIXELS
from qwen_image_fixtures import SCHEDULER, qwen_image_transformer, qwen_image_vae
from reference import assert_close_scaled
from test_qwen_edit_prompts import hf_vl_model, write_vl_tokenizer

PROMPT, NEGATIVE = "make the horse blue", "blurry"
STEPS, SEED, SIZE = 3, 7, 64


def vl_parts(tok_dir):
    """(tokenizer, processor, text encoder with its vision tower) of the tiny edit models."""
    hf_tok = Qwen2TokenizerFast.from_pretrained(str(write_vl_tokenizer(tok_dir)))
    image_id = hf_tok.convert_tokens_to_ids("<|image_pad|>")
    te = hf_vl_model(len(hf_tok), image_id, hf_tok.convert_tokens_to_ids("<|vision_start|>"), width=128,
                     heads=1, sections=(16, 24, 24), vision=dict(depth=4, hidden_size=160, num_heads=2,
                                                                  fullatt_block_indexes=[0, 1, 2, 3]), seed=3)
    processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS),
                                    tokenizer=hf_tok, video_processor=Qwen2VLVideoProcessor())
    return hf_tok, processor, te


def save_edit_folder(root, class_name, parts) -> None:
    """A diffusers folder of `class_name` with `parts` (transformer, vae, text_encoder) and the tokenizer."""
    write_vl_tokenizer(root / "tokenizer")
    (root / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    FlowMatchEulerDiscreteScheduler(**SCHEDULER).save_pretrained(root / "scheduler")
    for name, part in parts.items():
        part.save_pretrained(root / name)


def feed_image_token_types(te, hf_tok) -> None:
    """The oracle's text encoder handed the image-token types transformers 5 needs (see test_qwen_edit_prompts)."""
    image_id = hf_tok.convert_tokens_to_ids("<|image_pad|>")
    forward = te.forward
    te.forward = lambda *a, **kw: forward(*a, **kw, mm_token_type_ids=(kw["input_ids"] == image_id).int())


def edit_pair(root, pipeline_class=QwenImageEditPipeline):
    """(ours loaded from a tiny edit folder of `pipeline_class`, that diffusers pipeline on the same parts)."""
    hf_tok, processor, te = vl_parts(root / "tokenizer")
    net, vae = qwen_image_transformer(5, ctx=128), qwen_image_vae(6, False)
    save_edit_folder(root, pipeline_class.__name__, {"transformer": net, "vae": vae, "text_encoder": te})
    ours = load(root, precision="fp32", device="cpu")
    feed_image_token_types(te, hf_tok)
    ref = pipeline_class(scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER), vae=vae, text_encoder=te,
                         tokenizer=hf_tok, processor=processor, transformer=net)
    ref.set_progress_bar_config(disable=True)
    return ours, ref


@pytest.fixture(scope="module")
def edit(tmp_path_factory):
    return edit_pair(tmp_path_factory.mktemp("qwen_edit") / "model")


def _image():
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (12, 18, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((90, 60), Image.BICUBIC)


def test_the_vision_tower_is_loaded(edit):
    ours, _ = edit
    v = ours.config.qwen25vl_vision
    assert (v.depth, v.hidden_size, v.num_heads, v.fullatt_block_indexes) == (4, 160, 2, (0, 1, 2, 3))
    assert ours.model.encoder("qwen25_7b").visual is not None


def run_ref(ref, pipe, image, negative, scale, prompt=PROMPT):
    """The oracle's image and its latents after each step (`image`: one, or a list for Edit Plus)."""
    noise = pipe.noise([SEED], SIZE // 8, SIZE // 8)
    packed = QwenImageEditPipeline._pack_latents(noise, 1, 16, SIZE // 8, SIZE // 8)
    steps = []

    def on_step_end(p, i, t, kwargs):
        steps.append(QwenImageEditPipeline._unpack_latents(kwargs["latents"].clone(), SIZE, SIZE, 8)[:, :, 0])
        return {}

    with torch.no_grad():
        out = ref(image, prompt, negative_prompt=negative, true_cfg_scale=scale, height=SIZE, width=SIZE,
                  num_inference_steps=STEPS, latents=packed, output_type="np", callback_on_step_end=on_step_end)
    return out.images[0], steps


@pytest.mark.parametrize("cfg", [1.0, 4.0])
def test_edit_equals_the_pipeline_step_by_step(edit, monkeypatch, cfg):
    ours, ref = edit
    seen = spy_euler(monkeypatch)
    negative = NEGATIVE if cfg > 1 else None
    image = _image()
    (got,) = ours.txt2img(PROMPT, negative or "", steps=STEPS, seed=SEED, width=SIZE, height=SIZE, cfg=cfg,
                          references=[image])
    want, steps = run_ref(ref, ours, image, negative, cfg)
    assert len(seen["steps"]) == len(steps) == STEPS
    for mine, expected in zip(seen["steps"], steps):
        assert_close_scaled(mine, expected, rel=1e-4)
    ours_8bit, ref_8bit = np.asarray(got).astype(int), np.round(want * 255).astype(int)
    assert np.abs(ours_8bit - ref_8bit).max() <= 1 and ref_8bit.std() > 1
    plain = ours.txt2img(PROMPT, negative or "", steps=STEPS, seed=SEED, width=SIZE, height=SIZE, cfg=cfg)[0]
    assert np.abs(np.asarray(plain).astype(int) - ours_8bit).max() > 3  # the reference is seen


def test_one_reference_only(edit):
    ours, _ = edit
    with pytest.raises(InvalidArgument, match="one reference image"):
        ours.txt2img(PROMPT, "", steps=1, seed=SEED, width=SIZE, height=SIZE, references=[_image(), _image()])
    assert ours._reference_images == []  # a generation's references do not outlive it (shared pipelines)


def write_edit_split_files(models, ref, net_name: str = "qwen_image_edit_bf16.safetensors") -> dict:
    """ComfyUI's split files of the tiny edit model: diffusion_models/<net_name>,
    text_encoders/qwen_2.5_vl_7b.safetensors (ComfyUI's / Qwen's names, `visual.` tower) with its
    tokenizer, vae/qwen_image_vae.safetensors."""
    from opensd.checkpoints.files import save_safetensors
    from qwen_image_fixtures import write_qwen_image_split_files
    files = write_qwen_image_split_files(models, ref.transformer, ref.vae, net_name=net_name)
    files["te"] = models / "text_encoders" / "qwen_2.5_vl_7b.safetensors"
    files["te"].parent.mkdir(parents=True, exist_ok=True)
    save_safetensors({k.replace("model.language_model.", "model.").replace("model.visual.", "visual."): v.contiguous()
                      for k, v in ref.text_encoder.state_dict().items()}, files["te"])
    write_vl_tokenizer(models / "text_encoders" / "qwen_tokenizer")
    return files


def test_comfyui_split_files_edit_alike(edit, tmp_path):
    """ComfyUI's split files (the text encoder in ComfyUI's / Qwen's names with its `visual.` tower, a
    network named as an Edit file) make the same edit as the folder."""
    ours, ref = edit
    files = write_edit_split_files(tmp_path / "models", ref)
    split = load(files["unet"], precision="fp32", device="cpu")
    assert split.config.qwen25vl_vision == ours.config.qwen25vl_vision
    args = dict(steps=2, seed=SEED, width=SIZE, height=SIZE, references=[_image()])
    a = np.asarray(split.txt2img(PROMPT, "", **args)[0]).astype(int)
    b = np.asarray(ours.txt2img(PROMPT, "", **args)[0]).astype(int)
    assert np.abs(a - b).max() <= 1
