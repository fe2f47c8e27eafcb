"""Flux.1 Fill (inpainting) on tiny random weights built by diffusers. The network's 384 input
features (the noisy latent, the masked image's latent, each latent cell's 8x8 pixel mask, all
packed 2x2) equal FluxFillPipeline's through img2img with a mask (pipeline, CLI, A1111 API) and
ComfyUI's InpaintModelConditioning; whole runs equal diffusers' where neither side keeps an area
aside (txt2img is Fill with everything masked, ComfyUI without a noise mask). Without
InpaintModelConditioning ComfyUI's graph feeds a blank latent and the noise mask (or all). A Fill
checkpoint loads as Fill from diffusers' folder and Black Forest Labs' files; Canny/Depth are one
error line."""
from __future__ import annotations

import base64
import io
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler, FluxFillPipeline
from diffusers.pipelines.flux import pipeline_flux_fill
from fastapi.testclient import TestClient
from PIL import Image
from server_live import BASE

from dit_fixtures import META_FLUX, flux_pair, write_single_file, write_split_files
from opensd.checkpoints.files import save_safetensors
from opensd.errors import CheckpointError
from opensd.families.flux import COMFY_SHIFT
from opensd.pipeline.pipeline import load
from opensd.server.app import create_app
from opensd.server.settings import Settings
from opensd.workflows import ksampler as K
from opensd.workflows.nodes_core import clip_text_encode, inpaint_model_conditioning, vae_encode
from opensd.workflows.nodes_image import set_noise_mask
from opensd.workflows.types import ClipRef, ModelRef, VaeRef
from reference import assert_close_scaled

PROMPT = "a photo of a cat sitting on a red chair"
STEPS, SEED, SIZE, GUIDANCE = 4, 7, 64, 3.5  # 4 steps: "simple" picks exact sigmas
pack = FluxFillPipeline._pack_latents


@pytest.fixture(scope="module")
def fill(tmp_path_factory):
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096, shift=3.0)
    return flux_pair(tmp_path_factory.mktemp("fill"), "fill", FluxFillPipeline, scheduler)


@pytest.fixture(autouse=True)
def posterior_mean(monkeypatch):
    """diffusers draws the masked image's latent from the VAE posterior; ours (and ComfyUI's) is its mean."""
    monkeypatch.setattr(pipeline_flux_fill, "retrieve_latents",
                        lambda out, generator=None, sample_mode="sample": out.latent_dist.mode())


def picture():
    """A random image and a random binary mask: any misplaced mask pixel or channel shows."""
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
    mask = Image.fromarray(np.where(rng.random((SIZE, SIZE)) > 0.6, 255, 0).astype(np.uint8))
    return image, mask


def record(module, packed: bool):
    """(inputs, outputs, remove) of every call of our network (`packed` False: (B, C, h, w), packed
    here) or diffusers' transformer (hidden_states, already packed)."""
    ins, outs = [], []

    def pre(m, args, kwargs):
        x = kwargs["hidden_states"] if packed else args[0]
        ins.append(x.detach().clone() if packed else pack(x.detach(), len(x), x.shape[1], *x.shape[2:]))

    def post(m, args, kwargs, out):
        y = out[0] if packed else out
        outs.append(y.detach().clone() if packed else pack(y.detach(), len(y), y.shape[1], *y.shape[2:]))

    hooks = (module.register_forward_pre_hook(pre, with_kwargs=True),
             module.register_forward_hook(post, with_kwargs=True))
    return ins, outs, lambda: [h.remove() for h in hooks]


def run_ref(ours, ref, image, mask, **kw):
    """diffusers' Fill from our seed's noise; (its output, the transformer's inputs, its outputs)."""
    noise = pack(ours.noise([SEED], SIZE // 8, SIZE // 8), 1, 16, SIZE // 8, SIZE // 8)
    ins, outs, remove = record(ref.transformer, packed=True)
    try:
        with torch.no_grad():
            out = ref(PROMPT, image=image, mask_image=mask, height=SIZE, width=SIZE, num_inference_steps=STEPS,
                      guidance_scale=GUIDANCE, latents=noise, max_sequence_length=ours.config.t5_length, **kw)
    finally:
        remove()
    return out.images, ins, outs


def test_detected_as_flux_fill(fill):
    ours, _ = fill
    cfg = ours.config
    assert (cfg.family, cfg.inpainting, cfg.flux.in_channels, cfg.flux.out_channels) == ("flux", True, 384, 64)
    assert cfg.flux.guidance_embed and cfg.t5_length == 512


def test_img2img_with_a_mask_feeds_the_network_as_diffusers(fill):
    """A1111's inpainting at strength 1: every input feature of the first call and its output equal
    diffusers' (later steps differ by design: A1111 keeps the unmasked latent on the image's path),
    and the 320 extra features stay the same at every step."""
    ours, ref = fill
    image, mask = picture()
    ins, outs, remove = record(ours.family.network(ours.model), packed=False)
    try:
        ours.img2img(image, PROMPT, mask=mask, steps=STEPS, seed=SEED, strength=1.0, mask_blur=0,
                     width=SIZE, height=SIZE)
    finally:
        remove()
    _, ref_ins, ref_outs = run_ref(ours, ref, image, mask, output_type="latent")
    assert len(ins) == len(ref_ins) == STEPS and ins[0].shape == (1, 16, 384)
    assert_close_scaled(ins[0], ref_ins[0], rel=1e-5)
    assert_close_scaled(outs[0], ref_outs[0], rel=1e-4)
    for x in ins[1:]:
        torch.testing.assert_close(x[..., 64:], ins[0][..., 64:], rtol=0, atol=0)
    masked = ref_ins[0][..., 128:]  # the mask's features are 0 or 1, as many as the mask's white pixels
    assert set(masked.unique().tolist()) == {0.0, 1.0}
    assert masked.sum().item() == (np.asarray(mask) > 127).sum()


def test_txt2img_is_fill_with_everything_masked(fill):
    """Without an image, the network sees the whole picture masked over a blank (mid-grey) image:
    the whole run equals diffusers' Fill with a white mask, whatever the image."""
    ours, ref = fill
    image = ours.txt2img(PROMPT, steps=STEPS, seed=SEED, width=SIZE, height=SIZE)[0]
    white = Image.new("L", (SIZE, SIZE), 255)
    expected, _, _ = run_ref(ours, ref, picture()[0], white, output_type="np")
    ours_8bit, ref_8bit = np.asarray(image).astype(int), np.round(expected[0] * 255).astype(int)
    assert np.abs(ours_8bit - ref_8bit).max() <= 1 and ref_8bit.std() > 1


def _comfy(ours):
    clip = ClipRef(ours, "tiny")
    return ModelRef(ours, "tiny"), VaeRef(ours, "tiny"), clip_text_encode(None, PROMPT, clip)[0], \
        clip_text_encode(None, "", clip)[0]


def _tensors(image, mask):
    return (torch.from_numpy(np.asarray(image, np.float32) / 255)[None],
            torch.from_numpy(np.asarray(mask, np.float32) / 255)[None])


@pytest.mark.parametrize("noise_mask", [False, True])
def test_comfyui_inpaint_model_conditioning_feeds_what_diffusers_does(fill, noise_mask):
    """InpaintModelConditioning's greyed image and mask reach the network as diffusers' masked image
    latent and packed mask, at every call. Without a noise mask nothing is kept aside and the whole
    sampling (ComfyUI's constant shift 1.15) equals diffusers' with that shift."""
    ours, ref = fill
    image, mask = picture()
    model, vae, pos, neg = _comfy(ours)
    pos2, neg2, latent = inpaint_model_conditioning(None, pos, neg, vae, *_tensors(image, mask), noise_mask)
    ins, _, remove = record(ours.family.network(ours.model), packed=False)
    try:
        res = K.sample(model, pos2, neg2, latent, seed=SEED, steps=STEPS, cfg=1.0, sampler_name="euler",
                       scheduler="simple")["samples"]
    finally:
        remove()
    comfy_ref = FluxFillPipeline(**{**ref.components,
                                    "scheduler": FlowMatchEulerDiscreteScheduler(shift=math.exp(COMFY_SHIFT))})
    comfy_ref.set_progress_bar_config(disable=True)
    noise = K.prepare_noise(latent["samples"], SEED)
    packed = pack(noise, 1, 16, SIZE // 8, SIZE // 8)
    ref_ins, _, remove = record(ref.transformer, packed=True)
    try:
        with torch.no_grad():
            out = comfy_ref(PROMPT, image=image, mask_image=mask, height=SIZE, width=SIZE, num_inference_steps=STEPS,
                            guidance_scale=GUIDANCE, latents=packed, max_sequence_length=ours.config.t5_length,
                            output_type="latent").images
    finally:
        remove()
    assert len(ins) == STEPS
    for x in ins:
        assert_close_scaled(x[..., 64:], ref_ins[0][..., 64:], rel=1e-5)
    if not noise_mask:
        assert_close_scaled(ins[0], ref_ins[0], rel=1e-5)
        unpacked = FluxFillPipeline._unpack_latents(out, SIZE, SIZE, 8)
        assert_close_scaled(res, ours.config.vae.unscaled(unpacked), rel=1e-4)


def comfyui_mask_features(mask: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """ComfyUI's Flux concat_cond for a mask: channels averaged, bilinear to 8x the latent, each
    latent cell's 8x8 pixels as 64 channels by view/permute."""
    mask = F.interpolate(mask.mean(dim=1, keepdim=True), size=(h * 8, w * 8), mode="bilinear")
    return mask.view(len(mask), h, 8, w, 8).permute(0, 2, 4, 1, 3).reshape(len(mask), 64, h, w)


def test_comfyui_without_inpaint_model_conditioning_feeds_a_blank_latent_and_the_noise_mask(fill):
    """ComfyUI's Flux Fill without a concat image: the blank latent (zeros through the latent
    format) and the noise mask at the pixels' size, or everything masked without one."""
    ours, _ = fill
    image, mask = picture()
    model, vae, pos, neg = _comfy(ours)
    pixels, m = _tensors(image, mask)
    h = w = SIZE // 8
    blank = ours.config.vae.scaled(torch.zeros(1, 16, h, w))
    empty = {"samples": torch.zeros(1, 16, h, w)}
    (noised,) = set_noise_mask(None, vae_encode(None, pixels, vae)[0], m)
    latent_mask = F.interpolate(m[:, None], size=(h, w), mode="bilinear")
    for latent, want_mask, denoise in ((empty, torch.ones(1, 1, h, w), 1.0), (noised, latent_mask, 0.6)):
        ins, _, remove = record(ours.family.network(ours.model), packed=False)
        try:
            K.sample(model, pos, neg, latent, seed=SEED, steps=STEPS, cfg=1.0, sampler_name="euler",
                     scheduler="simple", denoise=denoise)
        finally:
            remove()
        want = torch.cat([blank, comfyui_mask_features(want_mask, h, w)], dim=1)
        for x in ins:
            assert_close_scaled(x[..., 64:], pack(want, 1, 80, h, w), rel=1e-5)


def _pixels(pipe):
    return np.asarray(pipe.txt2img(PROMPT, steps=2, seed=SEED, width=SIZE, height=SIZE)[0])


def test_bfl_files_load_as_fill_and_canny_depth_are_refused(fill, tmp_path):
    ours, _ = fill
    want = _pixels(ours)
    whole = write_single_file(tmp_path / "flux1-fill-dev.safetensors", ours.model, META_FLUX)
    pipe = load(whole, precision="fp32", device="cpu")
    assert pipe.config.inpainting and np.array_equal(_pixels(pipe), want)
    files = write_split_files(tmp_path / "models", ours.model, "flux1-fill-dev", META_FLUX)  # BFL's bare keys
    split = load(files["unet"], vae=files["vae"], text_encoders=[files["t5xxl_fp16"], files["clip_l"]],
                 precision="fp32", device="cpu")
    assert split.config.inpainting and np.array_equal(_pixels(split), want)
    sd = {k: v[:, :128].contiguous() if k.endswith("img_in.weight") else v.contiguous()
          for k, v in ours.model.state_dict().items()}
    save_safetensors(sd, tmp_path / "flux1-depth-dev.safetensors", META_FLUX)
    with pytest.raises(CheckpointError, match=r"Flux.1 Canny/Depth network \(128 input features\): not supported"):
        load(tmp_path / "flux1-depth-dev.safetensors", precision="fp32", device="cpu")


def test_cli_inpaints_with_a_fill_model(fill, tmp_path):
    """`opensd generate --init-image --mask` on a Fill model is the pipeline's img2img with that mask."""
    ours, _ = fill
    image, mask = picture()
    image.save(tmp_path / "init.png")
    mask.save(tmp_path / "mask.png")
    out = tmp_path / "out.png"
    r = subprocess.run([sys.executable, "-m", "opensd.cli", "generate", PROMPT, "--model", str(ours.loaded.path),
                        "--precision", "fp32", "--device", "cpu", "--steps", "2", "--seed", str(SEED),
                        "--init-image", str(tmp_path / "init.png"), "--mask", str(tmp_path / "mask.png"),
                        "--mask-blur", "0", "--strength", "1", "-o", str(out)], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})  # one thread, as here: same sums
    assert r.returncode == 0, r.stderr
    want = ours.img2img(image, PROMPT, mask=mask, steps=2, seed=SEED, strength=1.0, mask_blur=0)[0]
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), np.asarray(want))


def _data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_a1111_api_inpaints_with_a_fill_model(fill, tmp_path):
    """/sdapi/v1/img2img with a mask on a Fill checkpoint in the models folder is the pipeline's
    img2img with that mask."""
    ours, _ = fill
    image, mask = picture()
    models = tmp_path / "models"
    write_single_file(models / "Stable-diffusion" / "flux1-fill-dev.safetensors", ours.model, META_FLUX)
    request = {"prompt": PROMPT, "steps": 2, "seed": SEED, "cfg_scale": 1, "width": SIZE, "height": SIZE,
               "sampler_name": "Euler", "denoising_strength": 1.0, "init_images": [_data_url(image)],
               "mask": _data_url(mask), "mask_blur": 0, "inpainting_fill": 1, "inpaint_full_res": False,
               "override_settings": {"sd_model_checkpoint": "flux1-fill-dev.safetensors"}}
    with TestClient(create_app(Settings(models_dir=models, outputs_dir=tmp_path / "out")), base_url=BASE) as client:
        r = client.post("/sdapi/v1/img2img", json=request)
    assert r.status_code == 200, r.text
    got = np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).convert("RGB")).astype(int)
    want = ours.img2img(image, PROMPT, mask=mask, steps=2, seed=SEED, strength=1.0, mask_blur=0)[0]
    assert np.abs(got - np.asarray(want).astype(int)).max() <= 1
    kept = np.asarray(mask) < 128
    assert np.array_equal(got[kept], np.asarray(image).astype(int)[kept])
