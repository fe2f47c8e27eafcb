"""Playground v2.5: continuous EDM with EDM's denoiser output ("edm" prediction, sigma_data 0.5,
sigmas 0.002..80) and latents normalised per channel (scale 0.5). A single file says so with the
"edm_mean"/"edm_std" marker tensors (what ComfyUI reads), a diffusers folder with an EDM scheduler
and latents_mean/latents_std in its VAE config. Proof: our txt2img of a tiny such folder equals
diffusers' StableDiffusionXLPipeline with EDMEulerScheduler on the same weights, latents and image."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, EDMEulerScheduler, StableDiffusionXLPipeline

from opensd.checkpoints import detect as D
from opensd.checkpoints import markers as M
from opensd.checkpoints.files import read_state_dict, save_safetensors
from opensd.errors import CheckpointError
from opensd.library.synthetic import random_state_dict
from opensd.pipeline.pipeline import load
from opensd.pipeline.previews import latent_preview
from reference import assert_close_scaled
from test_detect import full_size
from test_pipeline_equivalence import CFG, NEGATIVE, PROMPT, SEED, _hf_tokenizer, vocab_dir  # noqa: F401
from test_loader import make_diffusers_folder
from workflow_models import TINY_SDXL

MEAN, STD = (-1.6574, 1.886, -1.383, 2.5155), (8.4927, 5.9022, 6.5498, 5.2299)
MARKERS = {"edm_mean": torch.tensor(MEAN).view(1, 4, 1, 1), "edm_std": torch.tensor(STD).view(1, 4, 1, 1)}
STEPS = 4


def _shapes(sd):
    return {k: tuple(v.shape) for k, v in sd.items()}


def test_markers_make_a_playground_config():
    sd, _ = full_size("sdxl")
    cfg = D.detect(_shapes(sd | MARKERS))
    assert cfg.prediction == "edm"
    assert cfg.edm == M.C.ContinuousEDM(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5)
    assert (cfg.vae.scaling_factor, cfg.vae.latents_mean, cfg.vae.latents_std) == (0.5, MEAN, STD)
    half = {k: v.half() for k, v in MARKERS.items()}  # the published values, as ComfyUI, whatever the file holds
    assert D.detect(_shapes(sd | half), metadata=M.marker_metadata(half)) == cfg
    assert D.detect(_shapes(sd)).vae.latents_mean == ()  # a plain SDXL file is untouched


def test_bad_latent_statistics_are_clear_errors():
    sd = _shapes(full_size("sdxl")[0] | MARKERS)
    with pytest.raises(CheckpointError, match="3 means"):
        D.detect(sd, metadata={M.META_LATENTS_MEAN: "1,2,3", M.META_LATENTS_STD: "1,2,3"})
    with pytest.raises(CheckpointError, match="positive deviations"):
        D.detect(sd, metadata={M.META_LATENTS_MEAN: "0,0,0,0", M.META_LATENTS_STD: "1,0,1,1"})
    with pytest.raises(CheckpointError, match="not numbers"):
        D.detect(sd, metadata={M.META_LATENTS_MEAN: "a,b,c,d", M.META_LATENTS_STD: "1,1,1,1"})


def test_latent_format_is_comfyuis_and_round_trips():
    cfg = D.detect(_shapes(full_size("sdxl")[0] | MARKERS)).vae
    z = torch.randn(2, 4, 3, 5, generator=torch.Generator().manual_seed(0))
    mean, std = torch.tensor(MEAN).view(1, 4, 1, 1), torch.tensor(STD).view(1, 4, 1, 1)
    torch.testing.assert_close(cfg.scaled(z), (z - mean) * 0.5 / std)  # ComfyUI's process_in
    torch.testing.assert_close(cfg.unscaled(cfg.scaled(z)), z)


def test_our_metadata_round_trips_the_kind(tmp_path):
    """A file we write (no marker tensors) carries the same facts in metadata."""
    cfg = D.detect(_shapes(full_size("sdxl")[0] | MARKERS))
    again = D.detect(_shapes(full_size("sdxl")[0]), metadata=D.metadata_for(cfg))
    assert again == cfg


def test_single_file_loads_and_samples_with_no_flags(tmp_path):
    path = tmp_path / "playground.safetensors"
    save_safetensors(random_state_dict(TINY_SDXL) | MARKERS, path)
    pipe = load(path)
    assert (pipe.config.prediction, pipe.config.vae.scaling_factor) == ("edm", 0.5)
    sampling = pipe.family.sampling(pipe, 64, 64)
    assert (sampling.prediction, sampling.sigma_data, sampling.sigma_max) == ("edm", 0.5, 80.0)
    (image,) = pipe.txt2img("a cat", steps=2, seed=1, width=64, height=64)
    assert image.size == (64, 64)
    preview = latent_preview(torch.randn(1, 4, 8, 8), pipe.config)
    assert preview is not None and preview.size == (8, 8)


def test_comfyui_save_writes_the_markers_back(tmp_path):
    """CheckpointSave of a Playground model writes edm_mean/edm_std, so ComfyUI and we read it back as one."""
    from opensd.workflows.nodes_checkpoint_save import _extra
    path = tmp_path / "playground.safetensors"
    save_safetensors(random_state_dict(TINY_SDXL) | MARKERS, path)
    pipe = load(path)

    class Model:  # the MODEL a CheckpointLoaderSimple gives, with no sampling node applied
        sampling = None

    metadata, extra = _extra(Model(), pipe)
    assert set(extra) == {"edm_mean", "edm_std"} and metadata == {}
    torch.testing.assert_close(extra["edm_std"], MARKERS["edm_std"])
    save_safetensors(random_state_dict(TINY_SDXL) | extra, tmp_path / "saved.safetensors")
    assert load(tmp_path / "saved.safetensors").config == pipe.config
    assert set(MARKERS) <= set(read_state_dict(tmp_path / "saved.safetensors"))


# --- end to end against diffusers ---------------------------------------------------------------

@pytest.fixture(scope="module")
def playground(tmp_path_factory, vocab_dir):  # noqa: F811
    root = tmp_path_factory.mktemp("playground") / "model"
    parts = make_diffusers_folder(root, "sdxl")
    vae_json = json.loads((root / "vae" / "config.json").read_text())
    vae_json.update(scaling_factor=0.5, latents_mean=list(MEAN), latents_std=list(STD))
    (root / "vae" / "config.json").write_text(json.dumps(vae_json))
    scheduler = EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5, prediction_type="epsilon",
                                  sigma_schedule="karras")
    scheduler.save_config(root / "scheduler")
    ref = StableDiffusionXLPipeline(
        vae=AutoencoderKL.from_pretrained(root / "vae"), text_encoder=parts["text_encoder"],
        text_encoder_2=parts["text_encoder_2"], tokenizer=_hf_tokenizer(vocab_dir),
        tokenizer_2=_hf_tokenizer(vocab_dir, pad_token="!"), unet=parts["unet"], scheduler=scheduler,
        force_zeros_for_empty_prompt=True, add_watermarker=False)
    ref.set_progress_bar_config(disable=True)
    return load(root), ref


def test_folder_config_is_the_single_files(playground):
    ours, _ = playground
    cfg = ours.config
    assert (cfg.prediction, cfg.edm, cfg.vae.latents_mean, cfg.vae.latents_std, cfg.vae.scaling_factor) == (
        "edm", M.PLAYGROUND_EDM, MEAN, STD, 0.5)


def test_txt2img_equals_diffusers_edm_euler(playground):
    ours, ref = playground
    noise = ours.noise([SEED], 8, 8)
    seen = {}

    def on_step_end(pipe, i, t, kwargs):
        seen["latents"] = kwargs["latents"].clone()
        return {}

    ref.scheduler.set_timesteps(STEPS)
    sigmas = ref.scheduler.sigmas.clone()
    with torch.no_grad():  # diffusers scales given latents by init_noise_sigma: start both at noise * sigma_max
        out = ref(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=CFG, height=64, width=64,
                  latents=noise * sigmas[0] / ref.scheduler.init_noise_sigma, output_type="np",
                  callback_on_step_end=on_step_end)
    got = {}
    decode = ours.model.vae.decode

    def spy(z, *a, **k):
        got["latents"] = ours.config.vae.scaled(z)
        got["decoded"] = decode(z, *a, **k)
        return got["decoded"]

    ours.model.vae.decode = spy
    try:
        (image,) = ours.txt2img(PROMPT, NEGATIVE, steps=STEPS, cfg=CFG, seed=SEED, width=64, height=64,
                                sampler="euler", scheduler="karras")
    finally:
        del ours.model.vae.decode
    assert_close_scaled(got["latents"], seen["latents"], rel=1e-4)
    ours_float = (got["decoded"][0].float() / 2 + 0.5).clamp(0, 1).permute(1, 2, 0).numpy()
    expected = out.images[0]
    assert np.abs(ours_float - expected).max() <= 1e-3
    assert np.abs(np.asarray(image).astype(int) - np.round(expected * 255).astype(int)).max() <= 1
    assert np.round(expected * 255).std() > 1
