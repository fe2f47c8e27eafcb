"""Chroma end to end on tiny random weights built by diffusers: detected from a ChromaPipeline
folder; our prompt encoding equals ChromaPipeline.encode_prompt (T5 masked to the prompt, one
padding token kept, the rest zeros); txt2img with real CFG against a negative prompt equals
ChromaPipeline step by step; the released naming as ComfyUI keeps it (network alone in
diffusion_models/, T5 in text_encoders/, Flux's VAE) gives the same image, and without T5 the error
names what to add."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import ChromaPipeline, FlowMatchEulerDiscreteScheduler

from dit_fixtures import META_FLUX, assert_same_pixels, chroma_parts, hf_tokenizers, packed_reference_run, spy_euler, \
    write_diffusers_folder, write_split_files
from dit_fixtures import _clip
from opensd.checkpoints.files import save_safetensors
from opensd.errors import CheckpointError
from opensd.families.chroma import text_mask
from opensd.pipeline.pipeline import load
from reference import assert_close_scaled

PROMPT, NEGATIVE = "a photo of a cat sitting on a red chair", "blurry, lowres, bad anatomy"
STEPS, SEED, SIZE, CFG = 4, 99, 64, 4.0


@pytest.fixture(scope="module")
def chroma(tmp_path_factory):
    root = tmp_path_factory.mktemp("chroma")
    parts = chroma_parts()
    ours = load(write_diffusers_folder(root / "model", "chroma", parts), precision="fp32", device="cpu")
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    ref = ChromaPipeline(scheduler=scheduler, vae=parts["vae"], text_encoder=parts["text_encoder"],
                         tokenizer=hf_tokenizers(root)["t5"], transformer=parts["transformer"])
    ref.set_progress_bar_config(disable=True)
    return ours, ref


def test_detected_as_chroma(chroma):
    ours, _ = chroma
    cfg = ours.config
    assert (cfg.family, cfg.prediction, cfg.t5_length, cfg.text_encoders) == ("chroma", "flow", 512, ())
    assert cfg.chroma.depth == 2 and cfg.chroma.depth_single_blocks == 3 and cfg.t5 is not None
    assert ours.family.default_cfg > 1 and ours.family.default_scheduler == "simple"


@pytest.mark.parametrize("text", [PROMPT, NEGATIVE, ""])
def test_prompt_embeddings_equal_chroma_encode_prompt(chroma, text):
    ours, ref = chroma
    with torch.no_grad():
        embeds, _, mask, *_ = ref.encode_prompt(text, None, device=torch.device("cpu"),
                                                do_classifier_free_guidance=False, max_sequence_length=512)
    c = ours.conditioner().encode(text)
    kept = int(mask.sum())
    assert c.context.shape == embeds.shape and c.pooled.shape == (1, 0)
    assert torch.equal(text_mask(c.context), mask.bool())  # the prompt, its end of text and one padding token
    assert_close_scaled(c.context[:, :kept], embeds[:, :kept])
    assert not c.context[:, kept:].any()


def _run_ours(pipe, monkeypatch, prompt, negative):
    seen = spy_euler(monkeypatch)
    (image,) = pipe.txt2img(prompt, negative, steps=STEPS, seed=SEED, width=SIZE, height=SIZE, cfg=CFG)
    return image, seen


def _run_ref(ref, pipe, prompt, negative):
    return packed_reference_run(ref, pipe, SIZE, SEED, prompt=prompt, negative_prompt=negative,
                                num_inference_steps=STEPS, guidance_scale=CFG)


def test_txt2img_with_cfg_equals_chroma_pipeline_step_by_step(chroma, monkeypatch):
    """Prompt and negative prompt fill T5's 512 tokens: ChromaPipeline hands the network its padding
    mask as floats, which SDPA adds instead of masking (diffusers#12116, #13619); with no padding
    the mask is all ones and adds the same constant to every logit, so the oracle is exact."""
    ours, ref = chroma
    prompt, negative = (PROMPT + ", ") * 40, (NEGATIVE + ", ") * 60
    assert int(ref.tokenizer(prompt, max_length=1024, truncation=True, return_tensors="pt").attention_mask.sum()) > 512
    assert int(ref.tokenizer(negative, max_length=1024, truncation=True, return_tensors="pt").attention_mask.sum()) > 512
    image, got = _run_ours(ours, monkeypatch, prompt, negative)
    expected_image, steps = _run_ref(ref, ours, prompt, negative)
    torch.testing.assert_close(got["sigmas"], ref.scheduler.sigmas, rtol=2e-6, atol=1e-6)
    assert not torch.allclose(got["sigmas"][1:-1], torch.tensor([0.75, 0.5, 0.25]))  # shifted by the size
    assert_close_scaled(got["steps"][0], steps[0], rel=1e-5)
    assert_close_scaled(got["steps"][-1], steps[-1], rel=1e-4)
    ours_8bit, ref_8bit = np.asarray(image).astype(int), np.round(expected_image * 255).astype(int)
    assert np.abs(ours_8bit - ref_8bit).max() <= 1 and ref_8bit.std() > 1


def _pixels(pipe):
    return pipe.txt2img(PROMPT, NEGATIVE, steps=2, seed=SEED, width=SIZE, height=SIZE, cfg=CFG)[0]


def test_comfyui_split_files_equal_the_diffusers_folder_and_t5_is_required(chroma, tmp_path):
    ours, _ = chroma
    want = _pixels(ours)
    files = write_split_files(tmp_path / "models", ours.model, "chroma", META_FLUX)
    assert set(files) == {"unet", "t5xxl_fp16", "vae"}
    split = load(files["unet"], vae=files["vae"], text_encoders=[files["t5xxl_fp16"]], precision="fp32", device="cpu")
    assert split.config.family == "chroma"
    assert_same_pixels(_pixels(split), want)
    clip = tmp_path / "clip_l.safetensors"
    save_safetensors({"text_model." + k: v.contiguous() for k, v in _clip(32, "quick_gelu", None, 0).state_dict().items()},
                     clip)
    with pytest.raises(CheckpointError, match=r"1 CLIP text encoders given; a Chroma model takes none \(T5-XXL alone\)"):
        load(files["unet"], vae=files["vae"], text_encoders=[files["t5xxl_fp16"], clip], precision="fp32", device="cpu")
    files["t5xxl_fp16"].unlink()
    with pytest.raises(CheckpointError, match=r"Chroma file has no T5-XXL"):
        load(files["unet"], vae=files["vae"], precision="fp32", device="cpu")


@torch.no_grad()
def test_a_diffusers_chroma_lora_patches_our_weights(tmp_path):
    """A PEFT LoRA on diffusers' ChromaTransformer2DModel (attention, MLPs, the approximator's MLPs),
    saved by diffusers, patches our fused weights: our network equals diffusers' with it active."""
    from diffusers import FluxPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from opensd.adapters.lora import LoraSpec
    from opensd.models.flux import image_ids, pack
    parts = chroma_parts(seed=6)
    ours = load(write_diffusers_folder(tmp_path / "model", "chroma", parts), precision="fp32", device="cpu")
    ref = parts["transformer"]
    torch.manual_seed(7)
    ref.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=[
        "to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "to_add_out", "ff.net.2", "proj_mlp", "proj_out",
        "linear_1", "linear_2"]))
    lora = {k: v.detach().clone() for k, v in get_peft_model_state_dict(ref).items()}
    FluxPipeline.save_lora_weights(tmp_path / "lora", transformer_lora_layers=lora, safe_serialization=True)
    ours.set_loras([LoraSpec(tmp_path / "lora" / "pytorch_lora_weights.safetensors")])
    ours.apply_loras("")
    assert ours.lora_reports[0].patched == len(lora) // 2 and ours.lora_reports[0].unmatched == []
    g = torch.Generator().manual_seed(8)
    x, ctx, t = torch.randn(1, 16, 8, 6, generator=g), torch.randn(1, 5, 128, generator=g), torch.tensor([0.6])
    want = ref(hidden_states=pack(x), encoder_hidden_states=ctx, timestep=t, img_ids=image_ids(4, 3),
               txt_ids=torch.zeros(5, 3), return_dict=False)[0]
    got = ours.model.network(x, t, ctx, None)
    assert_close_scaled(got, ChromaPipeline._unpack_latents(want, 64, 48, 8), 1e-5)
    ref.disable_adapters()
    plain = ChromaPipeline._unpack_latents(ref(hidden_states=pack(x), encoder_hidden_states=ctx, timestep=t,
                                               img_ids=image_ids(4, 3), txt_ids=torch.zeros(5, 3),
                                               return_dict=False)[0], 64, 48, 8)
    assert (got - plain).abs().max() > 0.1 * plain.abs().max()  # the LoRA did change the output


def test_a_folder_is_chroma_by_its_transformer_config_whatever_its_pipeline_class(tmp_path):
    """A folder whose model_index.json names another pipeline but whose transformer/config.json is a
    ChromaTransformer2DModel (as hand-assembled folders are) loads as Chroma, not as Flux."""
    folder = write_diffusers_folder(tmp_path / "model", "chroma", chroma_parts(seed=2), pipeline="FluxPipeline")
    assert '"ChromaTransformer2DModel"' in (folder / "transformer" / "config.json").read_text()
    assert load(folder, precision="fp32", device="cpu").config.family == "chroma"
