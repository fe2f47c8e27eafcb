"""Z-Image end to end on tiny random weights built by diffusers and transformers: detected from a
ZImagePipeline folder; our prompt encoding equals ZImagePipeline.encode_prompt (Qwen3's hidden
state -2 of the chat-templated prompt, the prompt's tokens only); txt2img equals ZImagePipeline step
by step, without CFG (Z-Image-Turbo's default) and with CFG against a negative prompt (their
guidance_scale g is our CFG g + 1), on its shift-3 schedule; ComfyUI's split files (network alone,
qwen_3_4b, ae) found in the models folder give the same image, and a missing part is named."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline
from transformers import AutoTokenizer

from dit_fixtures import assert_same_pixels, spy_euler
from opensd.errors import CheckpointError
from opensd.families.chroma import text_mask
from opensd.pipeline.pipeline import load
from reference import assert_close_scaled
from z_image_fixtures import write_z_image_folder, write_z_image_split_files, z_image_parts

PROMPT, NEGATIVE = "A photograph of an astronaut riding a horse on the moon", "blurry, lowres"
STEPS, SEED, SIZE = 4, 99, 64


@pytest.fixture(scope="module")
def z_image(tmp_path_factory):
    root = tmp_path_factory.mktemp("z_image")
    parts = z_image_parts()
    folder = write_z_image_folder(root / "model", parts)
    ours = load(folder, precision="fp32", device="cpu")
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
    ref = ZImagePipeline(scheduler=scheduler, vae=parts["vae"], text_encoder=parts["text_encoder"],
                         tokenizer=AutoTokenizer.from_pretrained(str(folder / "tokenizer")),
                         transformer=parts["transformer"])
    ref.set_progress_bar_config(disable=True)
    return ours, ref, parts


def test_detected_as_z_image(z_image, tmp_path):
    ours, _, parts = z_image
    cfg = ours.config
    assert (cfg.family, cfg.prediction, cfg.shift, cfg.text_length) == ("z_image", "flow", 3.0, 512)
    assert cfg.z_image.n_layers == 2 and cfg.z_image.cap_feat_dim == cfg.qwen3.hidden_size == 32
    assert ours.family.default_cfg == 1.0 and ours.family.default_scheduler == "simple"
    folder = write_z_image_folder(tmp_path / "shifted", parts)  # a folder's scheduler config sets the shift
    FlowMatchEulerDiscreteScheduler(shift=6.0, use_dynamic_shifting=False).save_pretrained(folder / "scheduler")
    assert load(folder, precision="fp32", device="cpu").config.shift == 6.0


@pytest.mark.parametrize("text", [PROMPT, NEGATIVE, "", "a (cat:1.3) on a [red] chair"])
def test_prompt_embeddings_equal_z_image_encode_prompt(z_image, text):
    ours, ref, _ = z_image
    with torch.no_grad():
        (want,), _ = ref.encode_prompt(text.replace("(", "").replace(":1.3)", "").replace("[", "").replace("]", ""),
                                       device=torch.device("cpu"), do_classifier_free_guidance=False)
    c = ours.conditioner().encode(text)
    n = len(want)
    assert c.context.shape == (1, 512, 32) and c.pooled.shape == (1, 0)
    assert int(text_mask(c.context).sum()) == n and bool(text_mask(c.context)[0, :n].all())
    assert_close_scaled(c.context[0, :n], want, rel=1e-5)


def _run_ref(ref, pipe, negative, guidance_scale):
    noise = pipe.noise([SEED], SIZE // 8, SIZE // 8)
    steps = []

    def on_step_end(p, i, t, kwargs):
        steps.append(kwargs["latents"].clone())
        return {}

    with torch.no_grad():
        out = ref(PROMPT, height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=guidance_scale,
                  negative_prompt=negative, latents=noise, output_type="np", callback_on_step_end=on_step_end)
    return out.images[0], steps


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_txt2img_equals_z_image_pipeline_step_by_step(z_image, monkeypatch, cfg):
    """cfg 1: the family's default (no CFG, the pipeline's guidance_scale 0); 3: CFG against the
    negative prompt, the pipeline's guidance_scale 2. Sigmas are 3 t / (1 + 2 t) of 1, 3/4, 1/2,
    1/4, then 0."""
    ours, ref, _ = z_image
    seen = spy_euler(monkeypatch)
    negative = NEGATIVE if cfg > 1 else None
    (image,) = ours.txt2img(PROMPT, negative or "", steps=STEPS, seed=SEED, width=SIZE, height=SIZE, cfg=cfg)
    want, steps = _run_ref(ref, ours, negative, cfg - 1)
    t = torch.tensor([1.0, 0.75, 0.5, 0.25])
    torch.testing.assert_close(seen["sigmas"], torch.cat([3 * t / (1 + 2 * t), torch.zeros(1)]), rtol=2e-6, atol=1e-6)
    torch.testing.assert_close(seen["sigmas"], ref.scheduler.sigmas, rtol=2e-6, atol=1e-6)
    assert len(seen["steps"]) == len(steps) == STEPS
    for got, expected in zip(seen["steps"], steps):
        assert_close_scaled(got, expected, rel=1e-4)
    ours_8bit, ref_8bit = np.asarray(image).astype(int), np.round(want * 255).astype(int)
    assert np.abs(ours_8bit - ref_8bit).max() <= 1 and ref_8bit.std() > 1


def _pixels(pipe):
    return pipe.txt2img(PROMPT, "", steps=2, seed=SEED, width=SIZE, height=SIZE)[0]


def test_comfyui_split_files_found_in_the_models_folder(z_image, tmp_path):
    ours, _, parts = z_image
    want = _pixels(ours)
    files = write_z_image_split_files(tmp_path / "models", ours.model, parts["tokenizer"])
    split = load(files["unet"], precision="fp32", device="cpu")  # qwen_3_4b and ae found beside it
    assert split.config.family == "z_image" and sorted(p.name for p in split.loaded.part_paths) == [
        "ae.safetensors", "qwen_3_4b.safetensors"]
    assert_same_pixels(_pixels(split), want)
    files["qwen3"].unlink()
    with pytest.raises(CheckpointError, match=r"this Z-Image file has no Qwen3-4B text encoder"):
        load(files["unet"], precision="fp32", device="cpu")
    files["vae"].unlink()
    with pytest.raises(CheckpointError, match=r"no VAE .* and no Qwen3-4B text encoder"):
        load(files["unet"], precision="fp32", device="cpu")


def test_a_float8_network_file_keeps_its_linears_stored(z_image, tmp_path):
    """A network file with its Linear weights in float8_e4m3fn (as the fp8 releases are) loads with
    them stored (cast per call) and computes what the fp32 network with those rounded weights does."""
    from opensd.checkpoints.files import save_safetensors
    from opensd.models.stored_weights import StoredLinear
    from opensd.models.z_image import ZImage
    ours, _, parts = z_image
    files = write_z_image_split_files(tmp_path / "models", ours.model, parts["tokenizer"])
    net = ours.model.network
    linears = {name + ".weight" for name, m in net.named_modules() if isinstance(m, torch.nn.Linear)}
    fp8 = {k: (v.to(torch.float8_e4m3fn) if k in linears else v).contiguous() for k, v in net.state_dict().items()}
    save_safetensors(fp8, files["unet"])
    pipe = load(files["unet"], precision="fp32", device="cpu")
    stored = pipe.model.network
    assert isinstance(stored.t_embedder.mlp[0], StoredLinear) and isinstance(stored.layers[1].attention.qkv,
                                                                              StoredLinear)
    rounded = ZImage(net.cfg).eval()
    rounded.load_state_dict({k: v.float() for k, v in fp8.items()})
    g = torch.Generator().manual_seed(5)
    x, ctx = torch.randn(2, 16, 8, 6, generator=g), torch.randn(2, 9, 32, generator=g)
    t = torch.tensor([0.2, 0.7])
    with torch.no_grad():
        assert_close_scaled(stored(x, t, ctx), rounded(x, t, ctx), rel=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("prefix", ["transformer.", "diffusion_model."])
def test_a_diffusers_z_image_lora_patches_our_weights(tmp_path, prefix):
    """A PEFT LoRA on diffusers' ZImageTransformer2DModel (q, k, v, out, the MLPs, the modulation and
    the embedders), saved by ZImagePipeline (transformer.) or with diffusers' paths under
    diffusion_model. as ai-toolkit writes them, patches our fused weights: our network equals
    diffusers' with the LoRA active."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    from opensd.adapters.lora import LoraSpec
    parts = z_image_parts(seed=6)
    ours = load(write_z_image_folder(tmp_path / "model", parts), precision="fp32", device="cpu")
    ref = parts["transformer"]
    torch.manual_seed(7)
    ref.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=(
        r".*(to_q|to_k|to_v|to_out\.0|w1|w2|w3|(layers|refiner)\.\d+\.adaLN_modulation\.0|adaLN_modulation\.1"
        r"|cap_embedder\.1|all_x_embedder\.2-1|t_embedder\.mlp\.0|linear)$")))
    lora = {k: v.detach().clone() for k, v in get_peft_model_state_dict(ref).items()}
    ZImagePipeline.save_lora_weights(tmp_path / "lora", transformer_lora_layers=lora, safe_serialization=True)
    path = tmp_path / "lora" / "pytorch_lora_weights.safetensors"
    if prefix != "transformer.":
        saved = load_file(path)
        assert all(k.startswith("transformer.") for k in saved)
        save_file({prefix + k[len("transformer."):]: v for k, v in saved.items()}, path)
    ours.set_loras([LoraSpec(path)])
    ours.apply_loras("")
    assert ours.lora_reports[0].patched == len(lora) // 2 and ours.lora_reports[0].unmatched == []
    g = torch.Generator().manual_seed(8)
    x, ctx, t = torch.randn(1, 16, 8, 6, generator=g), torch.randn(1, 9, 32, generator=g), torch.tensor([0.6])
    want = ref(list(x.unsqueeze(2).unbind(0)), t, [ctx[0]], return_dict=False)[0][0].squeeze(1)
    assert_close_scaled(ours.model.network(x, t, ctx)[0], want, 1e-5)


def test_a_gguf_text_encoder_file(z_image, tmp_path):
    """Qwen3 as a llama.cpp GGUF (Q8_0 projections, as ComfyUI-GGUF users keep it) given as the text
    encoder: its blocks stay stored and the prompt's features are those of the float encoder within
    Q8_0's error."""
    from opensd.models.stored_weights import StoredLinear
    from qwen_fixtures import write_gguf
    ours, _, parts = z_image
    files = write_z_image_split_files(tmp_path / "models", ours.model, parts["tokenizer"])
    gguf_path = write_gguf(tmp_path / "models" / "text_encoders" / "Qwen3-4B-Q8_0.gguf", parts["text_encoder"])
    files["qwen3"].unlink()
    pipe = load(files["unet"], text_encoders=[gguf_path], precision="fp32", device="cpu")
    assert isinstance(pipe.model.encoder("qwen3_4b").transformer.model.layers[0].self_attn.q_proj, StoredLinear)
    got, want = pipe.conditioner().encode(PROMPT).context, ours.conditioner().encode(PROMPT).context
    assert torch.equal(text_mask(got), text_mask(want))
    assert float((got - want).norm() / want.norm()) < 0.02
