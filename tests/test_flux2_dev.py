"""FLUX.2 [dev]: a tiny Flux2Pipeline folder (Mistral3 text encoder, tekken-like tokenizer) is
detected as guidance-distilled [dev] with Flux2Pipeline's defaults; the prompt features equal the
pipeline's encode_prompt; txt2img equals Flux2Pipeline step by step and in pixels; ComfyUI's split
files (a Mistral file cut to 31 layers) load from the models folder and give the same pixels; a
klein text encoder with the dev network is named."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, Flux2Pipeline

from dit_fixtures import spy_euler
from flux2_fixtures import compare_to_pipeline
from flux2_dev_fixtures import MISTRAL_WIDTH, flux2_dev_parts, processor, write_flux2_dev_folder, \
    write_flux2_dev_split_files
from opensd.errors import CheckpointError
from opensd.pipeline.pipeline import load
from reference import assert_close_scaled

PROMPT = "A photograph of an astronaut riding a horse on the moon"
STEPS, SEED, SIZE = 3, 7, 32


@pytest.fixture(scope="module")
def parts():
    return flux2_dev_parts()


@pytest.fixture(scope="module")
def dev(tmp_path_factory, parts):
    folder = write_flux2_dev_folder(tmp_path_factory.mktemp("dev") / "FLUX.2-dev", parts)
    ours = load(folder, precision="fp32", device="cpu")
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True)
    ref = Flux2Pipeline(scheduler=scheduler, vae=parts["vae"], text_encoder=parts["text_encoder"],
                        tokenizer=processor(folder / "tokenizer"), transformer=parts["transformer"])
    ref.set_progress_bar_config(disable=True)
    return ours, ref


def test_detected_as_flux2_dev(dev):
    ours, _ = dev
    cfg = ours.config
    assert cfg.family == "flux2" and cfg.flux2.guidance_embed and cfg.qwen3 is None
    assert cfg.mistral.num_hidden_layers == 32 and cfg.mistral.rope_theta == 1e9
    assert cfg.flux2.context_in_dim == 3 * MISTRAL_WIDTH
    assert ours.family.defaults(cfg) == {"cfg": 1.0, "steps": 50, "distilled_guidance": 4.0}


@pytest.mark.parametrize("text", [PROMPT, ""])
def test_prompt_features_equal_the_pipeline(dev, text):
    ours, ref = dev
    with torch.no_grad():
        want, _ = ref.encode_prompt(text, device=torch.device("cpu"))
    c = ours.conditioner().encode(text)
    assert c.context.shape == (1, 512, 3 * MISTRAL_WIDTH)
    assert_close_scaled(c.context, want, rel=1e-5)


def _txt2img(ours, guidance=None):
    kw = {} if guidance is None else {"distilled_guidance": guidance}
    return ours.txt2img(PROMPT, "", steps=STEPS, seed=SEED, width=SIZE, height=SIZE, cfg=1.0, **kw)[0]


@pytest.mark.parametrize("guidance", [None, 2.5])  # None: the default, Flux2Pipeline's 4
def test_txt2img_equals_the_pipeline(dev, monkeypatch, guidance):
    ours, ref = dev
    seen = spy_euler(monkeypatch)
    image = _txt2img(ours, guidance)
    compare_to_pipeline(seen, image, ref, ours.noise([SEED], SIZE // 4, SIZE // 4), prompt=PROMPT, height=SIZE,
                        width=SIZE, num_inference_steps=STEPS, guidance_scale=4.0 if guidance is None else guidance)


def test_comfyui_split_files_give_the_same_pixels(dev, parts, tmp_path):
    ours, _ = dev
    files = write_flux2_dev_split_files(tmp_path / "models", ours.model, parts["tokenizer"])
    split = load(files["unet"], precision="fp32", device="cpu")
    assert split.config.mistral.num_hidden_layers == 31 and not split.config.mistral.final_norm
    assert np.array_equal(np.asarray(_txt2img(split)), np.asarray(_txt2img(ours)))


def test_a_klein_text_encoder_is_named(dev, parts, tmp_path):
    from flux2_fixtures import flux2_parts
    from opensd.checkpoints.files import save_safetensors
    ours, _ = dev
    files = write_flux2_dev_split_files(tmp_path / "models", ours.model, parts["tokenizer"])
    files["mistral"].unlink()
    qwen = flux2_parts()["text_encoder"]
    save_safetensors({k: v.contiguous() for k, v in qwen.state_dict().items()},
                     files["mistral"].with_name("qwen_3_4b.safetensors"))
    qwen_file = files["mistral"].with_name("qwen_3_4b.safetensors")
    with pytest.raises(CheckpointError, match=r"the text encoder is a Qwen3 \(FLUX.2 \[klein\]'s\); FLUX.2 \[dev\]"):
        load(files["unet"], precision="fp32", device="cpu", text_encoders=[qwen_file])


def test_txt2img_with_references_equals_the_pipeline(dev, monkeypatch):
    """[dev] edits as klein does: two references (the second centre-cropped to whole tokens), every
    step and the pixels equal Flux2Pipeline(image=[...])'s."""
    from test_flux2_edit import picture
    ours, ref = dev
    images = [picture(64, 72, 0), picture(70, 66, 1)]
    seen = spy_euler(monkeypatch)
    (image,) = ours.txt2img(PROMPT, "", references=images, steps=STEPS, seed=SEED, width=SIZE, height=SIZE, cfg=1.0)
    compare_to_pipeline(seen, image, ref, ours.noise([SEED], SIZE // 4, SIZE // 4), image=images, prompt=PROMPT,
                        height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=4.0)
    assert np.abs(np.asarray(image).astype(int) - np.asarray(_txt2img(ours)).astype(int)).max() > 8


def test_released_whole_dev_on_meta_is_detected_with_every_key():
    """FLUX.2 [dev] with Mistral Small 3.1 (40 layers) and FLUX.2's VAE, built whole on the meta
    device: the family detects the config back from the shapes (the encoder not a Qwen), every key
    is the canonical layout's, and the part finder asks for the Mistral file when it is left out."""
    from opensd import families
    from opensd.checkpoints import detect_dit as DD
    from opensd.models import config_dit as C
    from opensd.models.dit_models import Flux2Model
    from opensd.models.qwen3 import MISTRAL_SMALL_31
    cfg = C.Flux2ModelConfig(C.FLUX2_DEV, C.PatchedLatentConfig(C.FLUX2_VAE), mistral=MISTRAL_SMALL_31)
    with torch.device("meta"):
        model = Flux2Model(cfg)
    sd = model.state_dict()
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    family, found = families.detect(shapes, {}, "flux2-dev.safetensors")
    assert family.name == "flux2" and found == cfg and found.qwen3 is None
    assert set(family.canonical(dict(sd), found)) == set(sd)
    family.check_complete(found, shapes, "x")
    network_only = {k: v for k, v in shapes.items() if k.startswith(DD.NET)}
    assert family.missing_parts(network_only) == ["flux2_vae", "mistral"]


def test_a_model_too_big_for_the_ram_is_refused_naming_the_smaller_files(dev, parts, tmp_path, monkeypatch):
    from opensd.errors import OutOfMemoryForModel
    from opensd.pipeline import parts as P
    from opensd.pipeline import peak_memory
    ours, _ = dev
    files = write_flux2_dev_split_files(tmp_path / "models", ours.model, parts["tokenizer"])
    monkeypatch.setattr(peak_memory, "free_memory", lambda: (1000, 0))
    with pytest.raises(OutOfMemoryForModel, match=r"for FLUX.2 \[dev\] .*flux2_dev_fp8mixed\.safetensors .*GGUF.*"
                                                  r"mistral_3_small_flux2_fp8\.safetensors"):
        P.load_unet(files["unet"], device="cpu", precision="fp32")
