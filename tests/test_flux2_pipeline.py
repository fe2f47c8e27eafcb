"""FLUX.2 [klein] end to end on tiny random weights built by diffusers and transformers: a
Flux2KleinPipeline folder is detected (distilled or base from its model_index.json); our prompt
features equal the pipeline's encode_prompt; txt2img equals Flux2KleinPipeline step by step and in
pixels, distilled (no CFG) and base (CFG 4 against the empty negative prompt, as the pipeline runs
it); ComfyUI's split files found in the models folder give the same image, a missing or
mismatched part is named in one line, and [dev] is refused naming its missing encoder."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline
from transformers import Qwen2TokenizerFast

from dit_fixtures import assert_same_pixels, spy_euler
from flux2_fixtures import compare_to_pipeline, flux2_parts, write_flux2_folder, write_flux2_split_files
from opensd.errors import CheckpointError
from opensd.pipeline.pipeline import load
from reference import assert_close_scaled

PROMPT = "A photograph of an astronaut riding a horse on the moon"
STEPS, SEED, SIZE = 4, 99, 32  # the tiny VAE halves the image: 8x8 cells of 4x4 pixels


@pytest.fixture(scope="module")
def parts():
    return flux2_parts()


def _pair(root, parts, distilled):
    folder = write_flux2_folder(root, parts, distilled)
    ours = load(folder, precision="fp32", device="cpu")
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True)
    ref = Flux2KleinPipeline(scheduler=scheduler, vae=parts["vae"], text_encoder=parts["text_encoder"],
                             tokenizer=Qwen2TokenizerFast.from_pretrained(str(folder / "tokenizer")),
                             transformer=parts["transformer"], is_distilled=distilled)
    ref.set_progress_bar_config(disable=True)
    return ours, ref


@pytest.fixture(scope="module")
def klein(tmp_path_factory, parts):
    return _pair(tmp_path_factory.mktemp("klein") / "model", parts, True)


def test_detected_as_flux2_klein(klein):
    ours, _ = klein
    cfg = ours.config
    assert (cfg.family, cfg.prediction, cfg.distilled, cfg.text_length) == ("flux2", "flow", True, 512)
    assert (cfg.latent_channels, cfg.size_multiple, cfg.vae.file.latent_batch_norm) == (128, 4, True)
    assert cfg.flux2.context_in_dim == 3 * cfg.qwen3.hidden_size == 96
    assert ours.family.defaults(cfg) == {"cfg": 1.0, "steps": 4} and ours.family.default_scheduler == "simple"


@pytest.mark.parametrize("text", [PROMPT, ""])
def test_prompt_features_equal_the_pipeline(klein, text):
    ours, ref = klein
    with torch.no_grad():
        want, _ = ref.encode_prompt(text, device=torch.device("cpu"))
    c = ours.conditioner().encode(text)
    assert c.context.shape == (1, 512, 96) and c.pooled.shape == (1, 0)
    assert_close_scaled(c.context, want, rel=1e-5)


def _check(ours, ref, monkeypatch, cfg):
    seen = spy_euler(monkeypatch)
    (image,) = ours.txt2img(PROMPT, "", steps=STEPS, seed=SEED, width=SIZE, height=SIZE, cfg=cfg)
    compare_to_pipeline(seen, image, ref, ours.noise([SEED], SIZE // 4, SIZE // 4), prompt=PROMPT, height=SIZE,
                        width=SIZE, num_inference_steps=STEPS, guidance_scale=cfg)


def test_distilled_txt2img_equals_the_pipeline(klein, monkeypatch):
    ours, ref = klein
    _check(ours, ref, monkeypatch, ours.family.defaults(ours.config)["cfg"])


def test_base_txt2img_with_cfg_equals_the_pipeline(tmp_path, parts, monkeypatch):
    ours, ref = _pair(tmp_path / "base", parts, False)
    assert not ours.config.distilled and ours.family.defaults(ours.config) == {"cfg": 4.0, "steps": 50}
    _check(ours, ref, monkeypatch, 4.0)


def _pixels(pipe):
    return pipe.txt2img(PROMPT, "", steps=2, seed=SEED, width=SIZE, height=SIZE)[0]


def test_comfyui_split_files_found_in_the_models_folder(klein, parts, tmp_path):
    ours, _ = klein
    want = _pixels(ours)
    files = write_flux2_split_files(tmp_path / "models", ours.model, parts["tokenizer"])
    split = load(files["unet"], precision="fp32", device="cpu")
    assert split.config.family == "flux2" and sorted(p.name for p in split.loaded.part_paths) == [
        "flux2-vae.safetensors", "qwen_3_4b.safetensors"]
    assert_same_pixels(_pixels(split), want)
    files["qwen3"].unlink()
    with pytest.raises(CheckpointError, match=r"this FLUX.2 file has no Qwen3 text encoder 32 wide \(--text-encoder\)"):
        load(files["unet"], precision="fp32", device="cpu")
    files["vae"].unlink()
    with pytest.raises(CheckpointError, match=r"no VAE .* and no Qwen3 text encoder 32 wide"):
        load(files["unet"], precision="fp32", device="cpu")


def test_a_text_encoder_of_the_wrong_width_is_named(klein, parts, tmp_path):
    """klein 4B given an encoder of another width (as Qwen3-8B for klein 4B): one line naming both."""
    from opensd.checkpoints.files import save_safetensors
    from opensd.models.qwen3 import Qwen3Config
    from qwen_fixtures import hf_qwen3
    ours, _ = klein
    files = write_flux2_split_files(tmp_path / "models", ours.model, parts["tokenizer"])
    wide = hf_qwen3(Qwen3Config(vocab_size=400, hidden_size=48, intermediate_size=48, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, head_dim=8))
    save_safetensors({k: v.contiguous() for k, v in wide.state_dict().items()}, files["qwen3"])
    with pytest.raises(CheckpointError, match=r"the text encoder is a Qwen3 text encoder 48 wide; this FLUX.2 "
                                              r"\[klein\] network takes the Qwen3 text encoder 32 wide"):
        load(files["unet"], text_encoders=[files["qwen3"]], precision="fp32", device="cpu")


@torch.no_grad()
@pytest.mark.parametrize("prefix", ["transformer.", "diffusion_model."])
def test_a_diffusers_flux2_lora_patches_our_weights(tmp_path, parts, prefix):
    """A PEFT LoRA on diffusers' Flux2Transformer2DModel (q, k, v and the added projections, outputs,
    the SwiGLU MLPs, the fused single-block projections, the shared modulations and the embedders),
    saved by Flux2KleinPipeline (transformer.) or under diffusion_model. as ai-toolkit writes it,
    patches our fused weights: our network equals diffusers' with the LoRA active."""
    import copy

    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    from opensd.adapters.lora import LoraSpec
    ours = load(write_flux2_folder(tmp_path / "model", parts), precision="fp32", device="cpu")
    ref = copy.deepcopy(parts["transformer"])
    torch.manual_seed(7)
    ref.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=(
        r".*(to_q|to_k|to_v|add_q_proj|add_k_proj|add_v_proj|to_out\.0|to_add_out|linear_in|linear_out"
        r"|to_qkv_mlp_proj|single_transformer_blocks\.\d+\.attn\.to_out|modulation_img\.linear|single_stream_modulation\.linear|x_embedder"
        r"|context_embedder|linear_1|linear_2|proj_out)$")))
    lora = {k: v.detach().clone() for k, v in get_peft_model_state_dict(ref).items()}
    Flux2KleinPipeline.save_lora_weights(tmp_path / "lora", transformer_lora_layers=lora, safe_serialization=True)
    path = tmp_path / "lora" / "pytorch_lora_weights.safetensors"
    if prefix != "transformer.":
        saved = load_file(path)
        save_file({prefix + k[len("transformer."):]: v for k, v in saved.items()}, path)
    ours.set_loras([LoraSpec(path)])
    ours.apply_loras("")
    assert ours.lora_reports[0].patched == len(lora) // 2 and ours.lora_reports[0].unmatched == []
    g = torch.Generator().manual_seed(8)
    x, ctx, t = torch.randn(1, 128, 3, 2, generator=g), torch.randn(1, 5, 96, generator=g), torch.tensor([0.6])
    img_ids = torch.cartesian_prod(torch.arange(1), torch.arange(3), torch.arange(2), torch.arange(1))[None]
    txt_ids = torch.cartesian_prod(torch.arange(1), torch.arange(1), torch.arange(1), torch.arange(5))[None]
    want = ref(x.flatten(2).transpose(1, 2), ctx, t, img_ids, txt_ids, return_dict=False)[0]
    assert_close_scaled(ours.model.network(x, t, ctx).flatten(2).transpose(1, 2), want, 1e-5)


def test_img2img_runs_through_the_patched_vae(klein):
    """img2img encodes the image into the patched, normalised latent (the VAE's statistics applied)
    and back: the latent is the VAE's mean patched and normalised, and the image keeps its size."""
    from PIL import Image
    ours, _ = klein
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8))
    latent = ours.encode(image)
    assert latent.shape == (1, 128, SIZE // 4, SIZE // 4)
    vae = ours.model.first_stage_model
    with torch.no_grad():
        x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 127.5 - 1
        want = vae.bn.normalize(vae.encode(x)[0])
    assert_close_scaled(latent, want, rel=1e-5)
    (out,) = ours.img2img(image, PROMPT, "", steps=STEPS, seed=SEED, strength=0.5)
    assert out.size == (SIZE, SIZE)
