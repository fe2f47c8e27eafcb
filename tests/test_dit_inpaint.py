"""Masked inpainting with the flow families (SD3, Flux), through the pipeline (A1111's fill modes,
only-masked) and ComfyUI's VAEEncodeForInpaint / SetLatentNoiseMask: the kept area stays the
image's own (in pixels after A1111's paste-back; in the latent, where ComfyUI keeps it, before any
decode), the masked area is repainted, and each fill mode reaches the flow path."""
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from dit_fixtures import flux_parts, load_tiny, sd3_parts
from opensd.pipeline import img2img as i2i
from opensd.pipeline import images as I
from opensd.workflows import ksampler as K
from opensd.workflows.nodes_core import clip_text_encode, vae_encode, vae_encode_for_inpaint
from opensd.workflows.nodes_image import set_noise_mask
from opensd.workflows.types import ClipRef, ModelRef, VaeRef

SIZE = 64
FILLS = ("fill", "original", "latent noise", "latent nothing")


@pytest.fixture(scope="module", params=["flux", "sd3"])
def pipe(request, tmp_path_factory):
    parts = flux_parts() if request.param == "flux" else sd3_parts()
    return load_tiny(tmp_path_factory.mktemp(request.param), request.param, parts)


def _image_and_mask():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8))
    mask = Image.new("L", (SIZE, SIZE), 0)
    ImageDraw.Draw(mask).rectangle((16, 16, 39, 39), fill=255)
    return image, mask


@pytest.mark.parametrize("only_masked", [False, True])
def test_pixels_outside_the_mask_are_unchanged(pipe, only_masked):
    image, mask = _image_and_mask()
    kept = np.asarray(mask) == 0
    outs = {}
    for fill in FILLS:
        out = pipe.img2img(image, "a cat", mask=mask, steps=8, seed=1, strength=0.6, inpainting_fill=fill,
                           mask_blur=0, inpaint_full_res=only_masked, width=SIZE, height=SIZE)[0]
        a, b = np.asarray(out).astype(int), np.asarray(image).astype(int)
        assert np.array_equal(a[kept], b[kept]), fill
        assert np.abs(a - b)[~kept].mean() > 5, fill
        outs[fill] = a
    assert not np.array_equal(outs["original"], outs["latent noise"])
    assert not np.array_equal(outs["original"], outs["latent nothing"])
    assert not np.array_equal(outs["original"], outs["fill"])


def test_the_kept_latent_stays_on_the_images_path(pipe, monkeypatch):
    """Before decoding (no paste-back yet), the latent outside the mask is the image's encoding."""
    image, mask = _image_and_mask()
    decoded = []
    monkeypatch.setattr(pipe, "decode", lambda latents: decoded.append(latents) or [image])
    pipe.img2img(image, "a cat", mask=mask, steps=6, seed=2, strength=0.7, mask_blur=0, width=SIZE, height=SIZE)
    m = i2i.latent_mask(I.prepare_mask(mask, image.size, 0, False), (SIZE // 8, SIZE // 8), pipe.device)
    init = pipe.encode(image)
    torch.testing.assert_close(decoded[0] * (1 - m), init * (1 - m), rtol=0, atol=1e-6)
    assert (decoded[0] - init)[..., 3:4, 3:4].abs().mean() > 1e-2


def _comfy(pipe, latent, cfg, denoise=1.0):
    clip = ClipRef(pipe, "tiny")
    pos, neg = clip_text_encode(None, "a cat", clip)[0], clip_text_encode(None, "", clip)[0]
    return K.sample(ModelRef(pipe, "tiny"), pos, neg, latent, seed=3, steps=4, cfg=cfg, sampler_name="euler",
                    scheduler="simple", denoise=denoise)["samples"]


def test_comfyui_inpaint_nodes_keep_the_unmasked_latent(pipe):
    image, mask = _image_and_mask()
    pixels = torch.from_numpy(np.asarray(image, np.float32) / 255)[None]
    m = torch.from_numpy(np.asarray(mask, np.float32) / 255)[None]
    cfg = 1.0 if pipe.config.family == "flux" else 4.0
    outside = torch.ones(SIZE // 8, SIZE // 8, dtype=torch.bool)
    outside[2:5, 2:5] = False  # latent cells 2..4 are pixels 16..39
    (latent,) = vae_encode_for_inpaint(None, pixels, VaeRef(pipe, "tiny"), m, 0)
    res = _comfy(pipe, latent, cfg)
    torch.testing.assert_close(res[..., outside], latent["samples"][..., outside], rtol=1e-5, atol=1e-5)
    assert (res[..., 2:5, 2:5] - latent["samples"][..., 2:5, 2:5]).abs().mean() > 1e-2
    (plain,) = vae_encode(None, pixels, VaeRef(pipe, "tiny"))
    (noised,) = set_noise_mask(None, plain, m)
    res = _comfy(pipe, noised, cfg, denoise=0.6)
    torch.testing.assert_close(res[..., outside], plain["samples"][..., outside], rtol=1e-5, atol=1e-5)
