"""SD3 end to end on tiny random weights built by diffusers: our prompt encoding equals
StableDiffusion3Pipeline.encode_prompt (with and without T5), one Euler step and a whole run equal
diffusers' FlowMatchEulerDiscreteScheduler from the same noise on the same sigmas, and the same
weights give the same image from a diffusers folder, an original single file (with its encoders,
or without them plus text_encoders/ files) and ComfyUI's split files."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

from dit_fixtures import (META_SD3, assert_same_pixels, hf_tokenizers, sd3_parts, write_diffusers_folder,
                          write_single_file, write_split_files)
from opensd.errors import CheckpointError
from opensd.pipeline.pipeline import load
from opensd.sampling import samplers as S
from reference import assert_close_scaled

PROMPT = "a photo of a cat sitting on a red chair"
NEGATIVE = "blurry, lowres"
STEPS, CFG, SEED, SIZE = 4, 5.0, 1234, 64


def _reference(parts, tokenizers, t5=True):
    return StableDiffusion3Pipeline(
        transformer=parts["transformer"], scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=parts["vae"],
        text_encoder=parts["text_encoder"], tokenizer=tokenizers["clip"], text_encoder_2=parts["text_encoder_2"],
        tokenizer_2=tokenizers["clip_g"], text_encoder_3=parts["text_encoder_3"] if t5 else None,
        tokenizer_3=tokenizers["t5"] if t5 else None)


@pytest.fixture(scope="module", params=["sd3", "sd35"])
def sd3(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    parts = sd3_parts(request.param)
    folder = write_diffusers_folder(root / "model", "sd3", parts)
    ours = load(folder, precision="fp32", device="cpu")
    ref = _reference(parts, hf_tokenizers(root))
    ref.set_progress_bar_config(disable=True)
    return ours, ref, parts, root


def test_detected_as_sd3_with_its_encoders_and_t5_vocabulary(sd3):
    ours, _, parts, _ = sd3
    cfg = ours.config
    assert (cfg.family, cfg.prediction, cfg.shift, cfg.latent_channels) == ("sd3", "flow", 3.0, 16)
    assert cfg.clip_l.width == 32 and cfg.clip_g.width == 64 and cfg.clip_g.act == "gelu" and cfg.t5.d_model == 128
    assert cfg.mmdit.qk_norm == (parts["transformer"].config.qk_norm == "rms_norm")
    assert "t5" in ours.loaded.tokenizers


@pytest.mark.parametrize("prompt,negative", [(PROMPT, NEGATIVE), ("a red apple " * 40, "")])
def test_prompt_embeddings_equal_diffusers_encode_prompt(sd3, prompt, negative):
    ours, ref, _, _ = sd3
    with torch.no_grad():
        embeds, neg_embeds, pooled, neg_pooled = ref.encode_prompt(
            prompt, None, None, device=torch.device("cpu"), negative_prompt=negative)
    for text, ctx, pool in [(prompt, embeds, pooled), (negative, neg_embeds, neg_pooled)]:
        c = ours.conditioner().encode(text)
        assert c.context.shape == ctx.shape == (1, 77 + 256, 128)
        assert_close_scaled(c.context, ctx)
        assert c.pooled.shape == pool.shape == (1, 96)
        assert_close_scaled(c.pooled, pool)


def _run_ours(pipe, monkeypatch, **kw):
    seen = {}
    euler = S.SAMPLERS["euler"]

    def spy(denoise, x, sigmas, callback=None, **kwargs):
        seen["x0"], seen["sigmas"] = x.clone(), sigmas.clone()

        def step(i, xi, denoised):
            seen.setdefault("steps", []).append(xi.clone())
            callback(i, xi, denoised)
        seen["latents"] = euler(denoise, x, sigmas, step, **kwargs)
        return seen["latents"]

    monkeypatch.setitem(S.SAMPLERS, "euler", spy)
    (image,) = pipe.txt2img(PROMPT, NEGATIVE, steps=STEPS, cfg=CFG, seed=SEED, width=SIZE, height=SIZE, **kw)
    return image, seen


def _run_ref(ref, noise, **kw):
    steps = []

    def on_step_end(pipe, i, t, kwargs):
        steps.append(kwargs["latents"].clone())
        return {}

    with torch.no_grad():
        out = ref(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=CFG, height=SIZE,
                  width=SIZE, latents=noise, output_type="np", callback_on_step_end=on_step_end, **kw)
    return out.images[0], steps


def test_txt2img_equals_diffusers_step_by_step(sd3, monkeypatch):
    ours, ref, _, _ = sd3
    image, got = _run_ours(ours, monkeypatch)
    noise = ours.noise([SEED], SIZE // 8, SIZE // 8)
    expected_image, steps = _run_ref(ref, noise)
    # The schedule: diffusers' shifted linspace (from 1 to shift(1/1000)), our "normal" on the flow table.
    torch.testing.assert_close(got["sigmas"], ref.scheduler.sigmas, rtol=1e-6, atol=1e-7)
    assert torch.equal(got["x0"], noise)  # sigma 1: the start is the noise itself
    assert_close_scaled(got["steps"][0], steps[0], rel=1e-5)  # one scheduler step
    assert_close_scaled(got["latents"], steps[-1], rel=1e-4)
    ours_8bit, ref_8bit = np.asarray(image).astype(int), np.round(expected_image * 255).astype(int)
    assert np.abs(ours_8bit - ref_8bit).max() <= 1 and ref_8bit.std() > 1


def test_a_run_without_t5_equals_diffusers_without_t5(sd3, monkeypatch, tmp_path):
    ours, _, parts, root = sd3
    path = write_single_file(tmp_path / "sd3_no_t5.safetensors", ours.model, META_SD3)
    from opensd.checkpoints.files import read_state_dict, save_safetensors
    sd = {k: v for k, v in read_state_dict(path).items() if not k.startswith("text_encoders.t5xxl.")}
    save_safetensors(sd, path, META_SD3)
    no_t5 = load(path, precision="fp32", device="cpu")
    assert no_t5.config.t5 is None
    ref = _reference(parts, hf_tokenizers(root), t5=False)
    ref.set_progress_bar_config(disable=True)
    with torch.no_grad():
        embeds, _, pooled, _ = ref.encode_prompt(PROMPT, None, None, device=torch.device("cpu"), negative_prompt="")
    c = no_t5.conditioner().encode(PROMPT)
    assert_close_scaled(c.context, embeds)
    assert c.context[:, 77:].abs().max() == 0
    image, got = _run_ours(no_t5, monkeypatch)
    expected_image, steps = _run_ref(ref, no_t5.noise([SEED], SIZE // 8, SIZE // 8))
    assert_close_scaled(got["latents"], steps[-1], rel=1e-4)


def _pixels(pipe, **kw):
    return np.asarray(pipe.txt2img(PROMPT, NEGATIVE, steps=2, cfg=CFG, seed=SEED, width=SIZE, height=SIZE, **kw)[0])


def test_single_file_and_split_files_equal_the_diffusers_folder(sd3, tmp_path):
    ours, _, _, _ = sd3
    want = _pixels(ours)
    whole = load(write_single_file(tmp_path / "one" / "sd3.safetensors", ours.model, META_SD3), precision="fp32",
                 device="cpu")
    assert_same_pixels(_pixels(whole), want)
    bare = write_single_file(tmp_path / "two" / "sd3_medium.safetensors", ours.model, META_SD3, encoders=False)
    files = write_split_files(tmp_path / "models", ours.model, "sd3", META_SD3)
    encoders = [files["clip_g"], files["t5xxl_fp16"], files["clip_l"]]  # any order
    assert_same_pixels(_pixels(load(bare, text_encoders=encoders, precision="fp32", device="cpu")), want)
    split = load(files["unet"], vae=files["vae"], text_encoders=encoders, precision="fp32", device="cpu")
    assert_same_pixels(_pixels(split), want)


def test_a_file_without_its_vae_names_what_is_missing(sd3, tmp_path):
    ours, _, _, _ = sd3
    files = write_split_files(tmp_path / "models", ours.model, "sd3", META_SD3)
    files["vae"].unlink()
    with pytest.raises(CheckpointError, match=r"this Stable Diffusion 3 file has no VAE \(--vae\)"):
        load(files["unet"], precision="fp32", device="cpu")


def test_shift_changes_the_schedule_as_sd3_defines_it(sd3):
    ours, _, _, _ = sd3
    s = ours.model_sampling(shift=6.0).schedule.sigmas
    t = torch.arange(1, 1001, dtype=torch.float64) / 1000
    torch.testing.assert_close(s, (6 * t / (1 + 5 * t)).float())
    p = ours._params(PROMPT, "", {"steps": 3, "shift": 1.0, "width": SIZE, "height": SIZE})
    torch.testing.assert_close(ours.sigmas(p, 3), torch.tensor([1.0, 0.5005, 0.001, 0.0]))


def test_fp8_text_encoder_files_are_upcast_on_load(sd3, tmp_path):
    """t5xxl_fp8_e4m3fn.safetensors: stored in float8, computed in the model's dtype (its Linears
    keep float8 and cast per call, the embedding is upcast on load); the same as the dequantised
    weights, and close to the full-precision encoder."""
    from opensd.models.stored_weights import StoredLinear
    from opensd.checkpoints.files import read_state_dict, save_safetensors
    ours, _, _, _ = sd3
    bare = write_single_file(tmp_path / "sd3.safetensors", ours.model, META_SD3, encoders=False)
    files = write_split_files(tmp_path / "models", ours.model, "sd3", META_SD3)
    t5 = read_state_dict(files["t5xxl_fp16"])
    fp8, dequantised = tmp_path / "t5xxl_fp8_e4m3fn.safetensors", tmp_path / "t5xxl_dequantised.safetensors"
    save_safetensors({k: v.to(torch.float8_e4m3fn) for k, v in t5.items()}, fp8)
    save_safetensors({k: v.to(torch.float8_e4m3fn).float() for k, v in t5.items()}, dequantised)
    assert read_state_dict(fp8)["shared.weight"].dtype == torch.float8_e4m3fn
    encoders = [files["clip_l"], files["clip_g"]]
    a = load(bare, text_encoders=encoders + [fp8], precision="fp32", device="cpu")
    b = load(bare, text_encoders=encoders + [dequantised], precision="fp32", device="cpu")
    assert next(a.model.encoder("t5xxl").parameters()).dtype == torch.float32
    kinds = {m.kind for m in a.model.encoder("t5xxl").modules() if isinstance(m, StoredLinear)}
    assert kinds == {"float8_e4m3fn"}
    ca, cb, full = (p.conditioner().encode(PROMPT).context for p in (a, b, ours))
    assert torch.equal(ca, cb)
    assert_close_scaled(ca, full, rel=0.1)


def test_unet_only_add_ons_are_refused_in_one_line(sd3):
    from opensd.errors import InvalidArgument
    ours, _, _, _ = sd3
    with pytest.raises(InvalidArgument, match="^controls: expected a list of ControlSpec"):  # SD3 takes ControlNets
        ours.txt2img(PROMPT, steps=1, width=SIZE, height=SIZE, controls=[object()])
    from opensd.pipeline.speedups import HyperTile
    for kw, name in (({"token_merging": 0.5}, "token_merging"), ({"hypertile": HyperTile(unet=True)}, "hypertile")):
        with pytest.raises(InvalidArgument, match=f"^{name}: token merging / Hypertile .* not available for Stable "
                                                  "Diffusion 3"):
            ours.txt2img(PROMPT, steps=1, width=SIZE, height=SIZE, **kw)


def test_a_network_alone_takes_its_parts_from_the_models_folder(sd3, tmp_path):
    """models/diffusion_models/sd3.safetensors with text_encoders/ and vae/ beside it, as ComfyUI keeps
    them: loaded with no --vae or --text-encoder, it finds them (by their headers) and equals the
    whole model."""
    ours, _, _, _ = sd3
    files = write_split_files(tmp_path / "models", ours.model, "sd3", META_SD3)
    (tmp_path / "models" / "vae" / "unrelated.safetensors").write_bytes(files["vae"].read_bytes()[:0])  # unreadable
    found = load(files["unet"], precision="fp32", device="cpu")
    assert set(found.loaded.part_paths) == {files["clip_l"], files["clip_g"], files["t5xxl_fp16"], files["vae"]}
    assert np.array_equal(_pixels(found), _pixels(ours))


def test_img2img_starts_from_the_flow_mix_of_image_and_noise(sd3, monkeypatch):
    """Rectified flow's noising: x = (1 - sigma) image + sigma noise, not image + sigma noise."""
    ours, _, _, _ = sd3
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8))
    seen = {}
    euler = S.SAMPLERS["euler"]

    def spy(denoise, x, sigmas, *args, **kwargs):
        seen["x"], seen["sigma"] = x.clone(), float(sigmas[0])
        return euler(denoise, x, sigmas, *args, **kwargs)

    monkeypatch.setitem(S.SAMPLERS, "euler", spy)
    ours.img2img(image, PROMPT, steps=4, seed=SEED, strength=0.5, cfg=CFG)
    init, noise = ours.encode(image), ours.noise([SEED], SIZE // 8, SIZE // 8)
    s = seen["sigma"]
    assert 0 < s < 1
    torch.testing.assert_close(seen["x"], (1 - s) * init + s * noise)
