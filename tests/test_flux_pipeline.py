"""Flux.1 end to end on tiny random weights built by diffusers: our prompt encoding equals
FluxPipeline.encode_prompt, one Euler step and a whole run equal diffusers' (resolution-dependent
shift for dev, none for schnell; distilled guidance, CFG 1), and the same weights give the same image
from a diffusers folder, Black Forest Labs' bare file with separate encoders and VAE, and ComfyUI's
whole-model layout."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

from dit_fixtures import META_FLUX, flux_pair, packed_reference_run, spy_euler, write_single_file, write_split_files
from opensd.errors import CheckpointError
from opensd.pipeline.pipeline import load
from opensd.sampling.flow import flux_mu
from reference import assert_close_scaled

PROMPT = "a photo of a cat sitting on a red chair"
STEPS, SEED, SIZE = 4, 99, 64


def _scheduler(variant):
    if variant == "dev":
        return FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                               base_image_seq_len=256, max_image_seq_len=4096, shift=3.0)
    return FlowMatchEulerDiscreteScheduler(shift=1.0)


@pytest.fixture(scope="module", params=["dev", "schnell"])
def flux(request, tmp_path_factory):
    ours, ref = flux_pair(tmp_path_factory.mktemp(request.param), request.param, FluxPipeline,
                          _scheduler(request.param))
    return ours, ref, request.param


def test_detected_as_flux(flux):
    ours, _, variant = flux
    cfg = ours.config
    assert (cfg.family, cfg.prediction, cfg.flux.guidance_embed) == ("flux", "flow", variant == "dev")
    assert cfg.clip_l.projection_dim == 0 and cfg.t5_length == (512 if variant == "dev" else 256)
    assert ours.family.default_cfg == 1.0 and ours.family.default_scheduler == "simple"


def test_prompt_embeddings_equal_diffusers_encode_prompt(flux):
    ours, ref, _ = flux
    with torch.no_grad():
        embeds, pooled, _ = ref.encode_prompt(PROMPT, None, device=torch.device("cpu"),
                                              max_sequence_length=ours.config.t5_length)
    c = ours.conditioner().encode(PROMPT)
    assert c.context.shape == embeds.shape and c.pooled.shape == pooled.shape == (1, 32)
    assert_close_scaled(c.context, embeds)
    assert_close_scaled(c.pooled, pooled)


def _run_ours(pipe, monkeypatch, **kw):
    seen = spy_euler(monkeypatch)
    (image,) = pipe.txt2img(PROMPT, steps=STEPS, seed=SEED, width=SIZE, height=SIZE, **kw)
    return image, seen


def _run_ref(ref, pipe, guidance=3.5):
    return packed_reference_run(ref, pipe, SIZE, SEED, prompt=PROMPT, num_inference_steps=STEPS, guidance_scale=guidance,
                                max_sequence_length=pipe.config.t5_length)


@pytest.mark.parametrize("guidance", [None, 5.0])
def test_txt2img_equals_diffusers_step_by_step(flux, monkeypatch, guidance):
    ours, ref, variant = flux
    image, got = _run_ours(ours, monkeypatch, distilled_guidance=guidance)
    expected_image, steps = _run_ref(ref, ours, 3.5 if guidance is None else guidance)
    torch.testing.assert_close(got["sigmas"], ref.scheduler.sigmas, rtol=2e-6, atol=1e-6)
    if variant == "dev":  # the shift follows the image size: 16 tokens here
        assert not torch.allclose(got["sigmas"][1:-1], torch.tensor([0.75, 0.5, 0.25]))
    assert_close_scaled(got["steps"][0], steps[0], rel=1e-5)
    assert_close_scaled(got["steps"][-1], steps[-1], rel=1e-4)
    ours_8bit, ref_8bit = np.asarray(image).astype(int), np.round(expected_image * 255).astype(int)
    assert np.abs(ours_8bit - ref_8bit).max() <= 1 and ref_8bit.std() > 1


def test_flux_mu_is_diffusers_calculate_shift():
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift
    for tokens in (16, 256, 1024, 4096, 8192):
        assert flux_mu(tokens) == pytest.approx(calculate_shift(tokens, 256, 4096, 0.5, 1.15))


def _pixels(pipe):
    return np.asarray(pipe.txt2img(PROMPT, steps=2, seed=SEED, width=SIZE, height=SIZE)[0])


def test_bfl_and_comfyui_layouts_equal_the_diffusers_folder(flux, tmp_path):
    ours, _, _ = flux
    want = _pixels(ours)
    whole = write_single_file(tmp_path / "comfy" / "flux1-whole.safetensors", ours.model, META_FLUX)
    assert np.array_equal(_pixels(load(whole, precision="fp32", device="cpu")), want)
    files = write_split_files(tmp_path / "models", ours.model, "flux1", META_FLUX)  # BFL's bare keys
    split = load(files["unet"], vae=files["vae"], text_encoders=[files["t5xxl_fp16"], files["clip_l"]],
                 precision="fp32", device="cpu")
    assert np.array_equal(_pixels(split), want)
    for f in (files["clip_l"], files["t5xxl_fp16"]):
        f.unlink()
    with pytest.raises(CheckpointError, match=r"has no CLIP-L, T5-XXL"):
        load(files["unet"], vae=files["vae"], precision="fp32", device="cpu")


def test_dev_without_a_t5_vocabulary_is_refused_with_where_to_put_it(flux, tmp_path):
    ours, _, _ = flux
    path = write_single_file(tmp_path / "flux.safetensors", ours.model, META_FLUX)
    (tmp_path / "spiece.model").unlink()
    with pytest.raises(CheckpointError, match="no T5 vocabulary found"):
        load(path, precision="fp32", device="cpu")


def test_medvram_sends_the_text_encoders_away_once_the_prompt_is_encoded(flux, tmp_path):
    """The text encoders (T5-XXL alone is 9 GB in bf16) leave the device before the network comes
    in, and the image is the same (on the CPU the moves are to the same device: the log says when)."""
    ours, _, variant = flux
    if variant != "dev":
        pytest.skip("one variant is enough")
    pipe = load(ours.loaded.path, precision="fp32", device="cpu", memory="medvram")
    kw = dict(steps=2, seed=1, width=32, height=32)
    image = pipe.txt2img("a photo of a cat", **kw)[0]
    assert pipe.offload.log[:3] == [("text", "in"), ("text", "out"), ("unet", "in")]
    assert np.array_equal(np.asarray(image), np.asarray(ours.txt2img("a photo of a cat", **kw)[0]))
