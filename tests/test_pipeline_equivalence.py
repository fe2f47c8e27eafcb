"""End-to-end equivalence with diffusers: our txt2img equals diffusers' pipelines on the same weights.

Tiny random SD1-style and SDXL-style diffusers folders (tests/test_loader.py) are loaded by us from
disk and given to diffusers as the very modules that were saved. Diffusers runs
EulerDiscreteScheduler with "linspace" spacing: with 4 steps its timesteps are 999, 666, 333, 0,
integers, so its linear-in-sigma interpolation and our log-sigma one pick the same sigmas and the
two samplers walk the same path. Both sides start from our seed's noise.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.utils.torch_utils import randn_tensor

from opensd.pipeline.conditioning import encode_prompts, size_vector
from opensd.pipeline.pipeline import load
from opensd.sampling import samplers as S
from opensd.sampling.schedules import normal_sigmas
from reference import assert_close_scaled
from test_loader import make_diffusers_folder
from test_tokenizer import _hf_vocab_files

PROMPT = "a red apple on a wooden table, photo"
NEGATIVE = "blurry, lowres"  # non-empty: diffusers' SDXL zeroes an *absent* negative prompt instead
LONG = "a very long prompt " + " ".join(f"word{i}" for i in range(90))  # > 77 tokens: truncated
STEPS, CFG, SEED = 4, 7.0, 1234


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("clip_vocab")
    _hf_vocab_files(d)
    return d


def _hf_tokenizer(vocab_dir, **kw):
    return transformers.CLIPTokenizer.from_pretrained(str(vocab_dir), model_max_length=77, **kw)


def _scheduler():
    return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  timestep_spacing="linspace", prediction_type="epsilon")


@pytest.fixture(scope="module")
def sd1(tmp_path_factory, vocab_dir):
    root = tmp_path_factory.mktemp("sd1") / "model"
    parts = make_diffusers_folder(root, "sd1")
    ref = StableDiffusionPipeline(vae=parts["vae"], text_encoder=parts["text_encoder"],
                                  tokenizer=_hf_tokenizer(vocab_dir), unet=parts["unet"], scheduler=_scheduler(),
                                  safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    ref.set_progress_bar_config(disable=True)
    return load(root), ref


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory, vocab_dir):
    root = tmp_path_factory.mktemp("sdxl") / "model"
    parts = make_diffusers_folder(root, "sdxl")
    ref = StableDiffusionXLPipeline(
        vae=parts["vae"], text_encoder=parts["text_encoder"], text_encoder_2=parts["text_encoder_2"],
        tokenizer=_hf_tokenizer(vocab_dir),
        tokenizer_2=_hf_tokenizer(vocab_dir, pad_token="!"),  # open_clip pads with id 0, as SDXL's repo does
        unet=parts["unet"], scheduler=_scheduler(), force_zeros_for_empty_prompt=True, add_watermarker=False)
    ref.set_progress_bar_config(disable=True)
    ours = load(root)
    assert ours.config.family == "sdxl"
    return ours, ref


# --- conditioning ------------------------------------------------------------------------------

@pytest.mark.parametrize("prompt,negative", [(PROMPT, NEGATIVE), (LONG, "")])
def test_sdxl_prompt_embeddings_match_diffusers_encode_prompt(sdxl, prompt, negative):
    """An explicit "" negative is encoded by diffusers too; only negative_prompt=None is zeroed."""
    ours, ref = sdxl
    assert ref.tokenizer_2.pad_token_id == 0 and ref.tokenizer.pad_token_id == 49407
    with torch.no_grad():
        embeds, neg_embeds, pooled, neg_pooled = ref.encode_prompt(
            prompt, device=torch.device("cpu"), do_classifier_free_guidance=True, negative_prompt=negative)
    assert neg_pooled.abs().max() > 0  # really encoded, not force_zeros_for_empty_prompt
    for text, ref_ctx, ref_pooled in [(prompt, embeds, pooled), (negative, neg_embeds, neg_pooled)]:
        c = encode_prompts(ours.model, ours.tokenizer, [text], ours.device)
        assert c.context.shape == ref_ctx.shape == (1, 77, 64 + 32)
        assert_close_scaled(c.context, ref_ctx)
        assert c.pooled.shape == ref_pooled.shape == (1, 32)
        assert_close_scaled(c.pooled, ref_pooled)


def _ref_added_cond(ref, pooled, height, width):
    """diffusers' (text_embeds, time_ids) for one prompt, default original/target size, no crop."""
    time_ids = ref._get_add_time_ids((height, width), (0, 0), (height, width), dtype=pooled.dtype,
                                     text_encoder_projection_dim=ref.text_encoder_2.config.projection_dim)
    return {"text_embeds": pooled, "time_ids": time_ids}


@pytest.mark.parametrize("width,height", [(64, 48), (48, 64)])  # non-square: catches h/w order
def test_sdxl_size_vector_matches_diffusers_add_time_ids(sdxl, width, height):
    ours, ref = sdxl
    with torch.no_grad():
        _, neg_embeds, pooled, neg_pooled = ref.encode_prompt(
            PROMPT, device=torch.device("cpu"), do_classifier_free_guidance=True, negative_prompt=NEGATIVE)
        uncond = encode_prompts(ours.model, ours.tokenizer, [NEGATIVE], ours.device)
        for text, p in [(PROMPT, pooled), (NEGATIVE, neg_pooled)]:
            c = encode_prompts(ours.model, ours.tokenizer, [text], ours.device)
            added = _ref_added_cond(ref, p, height, width)
            assert added["time_ids"].tolist() == [[height, width, 0, 0, height, width]]
            # The UNet Fourier-embeds each id into 256 values (flip_sin_to_cos) and concatenates.
            fourier = ref.unet.add_time_proj(added["time_ids"].flatten()).reshape(1, -1)
            y = size_vector(ours.config, c.pooled, width, height)
            assert y.shape == (1, ref.unet.add_embedding.linear_1.in_features)
            assert_close_scaled(y[:, :32], p)
            assert_close_scaled(y[:, 32:], fourier)

        # And where it matters: both UNets on the same latent, each with its own conditioning.
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, 4, height // 8, width // 8, generator=g)
        t = torch.tensor([666.0])
        expected = ref.unet(x, t, encoder_hidden_states=neg_embeds,
                            added_cond_kwargs=_ref_added_cond(ref, neg_pooled, height, width)).sample
        got = ours.model.unet(x, t, uncond.context, size_vector(ours.config, uncond.pooled, width, height))
        assert_close_scaled(got, expected)


# --- full txt2img ------------------------------------------------------------------------------

def _run_ours(pipe, monkeypatch, width, height, **kw):
    """txt2img through the public entry point (`kw`: more of its arguments), catching the sampler's
    input and output latents and the VAE's output (in [-1, 1], before 8-bit rounding)."""
    seen = {}
    euler, vae_decode = S.SAMPLERS["euler"], pipe.model.vae.decode

    def spy_sampler(denoise, x, sigmas, *args, **kwargs):
        seen["x0"], seen["sigmas"] = x.clone(), sigmas.clone()
        seen["latents"] = euler(denoise, x, sigmas, *args, **kwargs)
        return seen["latents"]

    def spy_decode(z, *args, **kwargs):
        seen["decoded"] = vae_decode(z, *args, **kwargs)
        return seen["decoded"]

    monkeypatch.setitem(S.SAMPLERS, "euler", spy_sampler)
    monkeypatch.setattr(pipe.model.vae, "decode", spy_decode)
    (image,) = pipe.txt2img(PROMPT, NEGATIVE, steps=STEPS, cfg=CFG, seed=SEED, width=width, height=height, **kw)
    return image, seen


def _run_ref(ref, ours, width, height, **kw):
    down = ours.config.vae.downscale
    noise = ours.noise([SEED], height // down, width // down)
    # Same seed, same noise: diffusers' randn_tensor on a CPU generator draws the same numbers.
    assert torch.equal(noise, randn_tensor(noise.shape, generator=torch.Generator("cpu").manual_seed(SEED)))
    sigmas = normal_sigmas(ours.schedule, STEPS)
    ref.scheduler.set_timesteps(STEPS)
    # diffusers multiplies given latents by init_noise_sigma; undo it so both start from noise * sigmas[0].
    latents = noise * sigmas[0] / ref.scheduler.init_noise_sigma
    seen = {}

    def on_step_end(pipe, i, t, kwargs):
        seen["latents"] = kwargs["latents"].clone()
        return {}

    with torch.no_grad():
        out = ref(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=CFG,
                  height=height, width=width, latents=latents, output_type="np",
                  callback_on_step_end=on_step_end, **kw)
    seen["sigmas"] = ref.scheduler.sigmas.clone()
    seen["timesteps"] = ref.scheduler.timesteps.clone()
    return out.images[0], seen


def _check_equal(ours, image, got, expected_image, expected):
    # The schedule: same sigmas. diffusers takes the cumulative product of alphas in float32, we
    # (as LDM did) in float64: up to 1.3e-5 apart relatively, at the smallest sigma.
    assert expected["timesteps"].tolist() == [999.0, 666.0, 333.0, 0.0]
    assert got["sigmas"].shape == expected["sigmas"].shape
    torch.testing.assert_close(got["sigmas"], expected["sigmas"], rtol=3e-5, atol=0)
    torch.testing.assert_close(got["x0"] / got["sigmas"][0], ours.noise([SEED], *got["x0"].shape[-2:]))
    # The sampled latents.
    assert_close_scaled(got["latents"], expected["latents"], rel=1e-4)
    # The decoded image in [0, 1], before and after our 8-bit rounding.
    ours_float = ((got["decoded"][0].float() / 2 + 0.5).clamp(0, 1)).permute(1, 2, 0).numpy()
    assert ours_float.shape == expected_image.shape
    assert np.abs(ours_float - expected_image).max() <= 1e-3
    ours_8bit = np.asarray(image).astype(np.int16)
    ref_8bit = np.round(expected_image * 255).astype(np.int16)
    assert np.abs(ours_8bit - ref_8bit).max() <= 1
    assert ref_8bit.std() > 1  # not a flat image that would match anything


def test_sd1_txt2img_equals_diffusers(sd1, monkeypatch):
    ours, ref = sd1
    assert ours.config.prediction == "eps"
    image, got = _run_ours(ours, monkeypatch, 64, 64)
    expected_image, expected = _run_ref(ref, ours, 64, 64)
    _check_equal(ours, image, got, expected_image, expected)


@pytest.mark.parametrize("width,height", [(64, 64), (64, 48)])
def test_sdxl_txt2img_equals_diffusers(sdxl, monkeypatch, width, height):
    ours, ref = sdxl
    image, got = _run_ours(ours, monkeypatch, width, height)
    expected_image, expected = _run_ref(ref, ours, width, height)
    _check_equal(ours, image, got, expected_image, expected)
