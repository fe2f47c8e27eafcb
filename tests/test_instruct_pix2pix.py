"""InstructPix2Pix (8-channel "edit") models: detection, the three-way image guidance against
diffusers' formula on diffusers' own UNet, txt2img without an image, the image CFG scale on other
models (ignored, as A1111), and its infotext."""
from dataclasses import replace

import pytest
import torch
from PIL import Image, ImageDraw
from transformers import CLIPTokenizer

from opensd.library.model_catalog import _checkpoint
from opensd.library.synthetic import TINY, write_random_checkpoint
from opensd.pipeline import images as I
from opensd.pipeline.infotext_params import image_infotext, recorded
from opensd.pipeline.pipeline import load
from opensd.sampling import samplers as S
from test_loader import make_diffusers_folder
from test_tokenizer import _hf_vocab_files

PROMPT, NEGATIVE = "make it a watercolor painting", "blurry"


def _picture(w=64, h=64):
    image = Image.new("RGB", (w, h), (200, 40, 40))
    ImageDraw.Draw(image).rectangle((10, 10, 40, 50), fill=(20, 180, 60))
    return image


@pytest.fixture(scope="module")
def edit(tmp_path_factory):
    """(our pipeline, diffusers' parts, tokenizer) of a tiny random 8-channel diffusers folder."""
    root = tmp_path_factory.mktemp("ip2p")
    parts = make_diffusers_folder(root / "model", "sd1", unet={"in_channels": 8})
    _hf_vocab_files(root)
    return load(root / "model", precision="fp32"), parts, CLIPTokenizer.from_pretrained(str(root), model_max_length=77)


@pytest.fixture(scope="module")
def tiny_edit(tmp_path_factory):
    cfg = replace(TINY, unet=replace(TINY.unet, in_channels=8))
    return load(write_random_checkpoint(tmp_path_factory.mktemp("e") / "tiny-edit.safetensors", cfg))


def test_an_8_channel_unet_is_an_edit_model(edit, tiny_edit, tmp_path):
    assert edit[0].config.edit and tiny_edit.config.edit
    assert not tiny_edit.config.inpainting
    assert "instruct-pix2pix" in _checkpoint(tiny_edit.loaded.path)[1]
    plain = write_random_checkpoint(tmp_path / "plain.safetensors")
    assert "instruct-pix2pix" not in _checkpoint(plain)[1]


@pytest.mark.parametrize("name", ["sd15", "sdxl"])
def test_full_size_edit_checkpoints_are_detected_and_load(name):
    """timbrooks' instruct-pix2pix (SD1.5 shapes) and an SDXL edit model: an 8-channel conv_in."""
    from opensd.checkpoints import detect as D
    from opensd.pipeline.loader import build
    from test_detect import full_size
    sd, expected = full_size(name)
    key = D.UNET + "input_blocks.0.0.weight"
    with torch.device("meta"):
        sd[key] = torch.empty(sd[key].shape[0], 8, *sd[key].shape[2:])
    cfg = D.detect({k: tuple(v.shape) for k, v in sd.items()}, name)
    assert cfg.edit and cfg.family == expected.family and cfg == replace(
        expected, unet=replace(expected.unet, in_channels=8))
    model, unknown = build(cfg, sd, name, torch.float16, "meta")
    assert unknown == []


def _captured_denoiser(pipe, monkeypatch, **params):
    seen = {}

    def spy(denoise, x, sigmas, *args, **kwargs):
        seen.update(denoise=denoise, x=x.clone(), sigmas=sigmas.clone())
        return x

    monkeypatch.setitem(S.SAMPLERS, "euler", spy)
    pipe.img2img(_picture(), PROMPT, NEGATIVE, steps=4, cfg=7.0, seed=3, sampler="Euler", **params)
    return seen


def _embeds(parts, tokenizer, text):
    ids = tokenizer(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    return parts["text_encoder"](ids)[0]


@pytest.mark.parametrize("image_cfg", [1.5, 1.0, 2.5])
def test_guided_prediction_equals_diffusers_formula(edit, monkeypatch, image_cfg):
    """One denoiser call equals diffusers' StableDiffusionInstructPix2PixPipeline step: rows
    (prompt, image), (negative, image), (negative, zeros) through diffusers' UNet, eps =
    u + cfg (c - i) + image_cfg (i - u), the image latent the VAE's unscaled mode."""
    pipe, parts, tokenizer = edit
    seen = _captured_denoiser(pipe, monkeypatch, strength=1.0, image_cfg_scale=image_cfg)
    sigma = seen["sigmas"][1]
    x = torch.randn(seen["x"].shape, generator=torch.Generator().manual_seed(5))
    ours = seen["denoise"](x, sigma)
    with torch.no_grad():
        image = parts["vae"].encode(I.to_tensor(_picture())).latent_dist.mode()
        mine = pipe.config.vae.unscaled(pipe.encode_tensor(I.to_tensor(_picture())))
        torch.testing.assert_close(mine, image, atol=5e-4, rtol=1e-3)  # unscaled, the mode
        image = mine  # (the VAE's own float noise, amplified by the CFG scale, kept out)
        t = pipe.model_sampling().timestep(sigma.reshape(1)).float()
        x_in = x / (sigma ** 2 + 1).sqrt()
        unet = parts["unet"]
        pos, neg = _embeds(parts, tokenizer, PROMPT), _embeds(parts, tokenizer, NEGATIVE)
        c = unet(torch.cat([x_in, image], 1), t, pos).sample
        i = unet(torch.cat([x_in, image], 1), t, neg).sample
        u = unet(torch.cat([x_in, torch.zeros_like(image)], 1), t, neg).sample
        eps = u + 7.0 * (c - i) + image_cfg * (i - u)
    torch.testing.assert_close(ours, x - sigma * eps, atol=2e-4, rtol=1e-4)


def test_default_image_cfg_is_a1111s(tiny_edit):
    (image,) = tiny_edit.img2img(_picture(), PROMPT, steps=2, seed=1)
    assert image.info["params"].image_cfg_scale == 1.5
    assert "CFG scale: 7, Image CFG scale: 1.5, " in image_infotext(tiny_edit, image, img2img=True)


def test_txt2img_on_an_edit_model_sees_zero_image_channels(tiny_edit, monkeypatch):
    seen = []
    net = tiny_edit.family.network(tiny_edit.model)
    forward = net.forward

    def spy(x, *args, **kwargs):
        seen.append(x[:, 4:].clone())
        return forward(x, *args, **kwargs)

    monkeypatch.setattr(net, "forward", spy)
    (image,) = tiny_edit.txt2img(PROMPT, steps=2, seed=1, width=64, height=64)
    assert image.size == (64, 64) and seen and all(not s.any() for s in seen)


def test_image_cfg_is_ignored_by_other_models(tmp_path):
    pipe = load(write_random_checkpoint(tmp_path / "plain.safetensors"))
    a = pipe.img2img(_picture(), PROMPT, steps=2, seed=1)[0]
    b = pipe.img2img(_picture(), PROMPT, steps=2, seed=1, image_cfg_scale=3.0)[0]
    assert a.tobytes() == b.tobytes()


def test_image_cfg_scale_out_of_range_is_refused(tiny_edit):
    from opensd.errors import InvalidArgument
    with pytest.raises(InvalidArgument, match="image_cfg_scale"):
        tiny_edit.img2img(_picture(), PROMPT, steps=2, image_cfg_scale=-1)


def test_image_cfg_scale_reads_back_from_infotext():
    rec = recorded(PROMPT, "", {"Steps": "4", "Image CFG scale": "1.25"})
    assert rec.settings["image_cfg_scale"] == 1.25


def test_whole_edit_equals_diffusers_pipeline_from_the_same_start(edit, monkeypatch):
    """Four Euler steps at strength 1 (all of the schedule, as A1111) end where diffusers'
    StableDiffusionInstructPix2PixPipeline ends from the same starting latent (diffusers starts
    from noise alone; ours, as A1111's img2img, from the init latent plus noise: it is handed ours)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionInstructPix2PixPipeline
    from reference import assert_close_scaled
    pipe, parts, tokenizer = edit
    seen = {}
    euler = S.SAMPLERS["euler"]

    def spy(denoise, x, sigmas, *args, **kwargs):
        seen["x"] = x.clone()
        seen["out"] = euler(denoise, x, sigmas, *args, **kwargs)
        return seen["out"]

    monkeypatch.setitem(S.SAMPLERS, "euler", spy)
    pipe.img2img(_picture(), PROMPT, NEGATIVE, steps=4, cfg=7.0, seed=3, sampler="Euler", strength=1.0,
                 image_cfg_scale=1.5)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="linspace", prediction_type="epsilon")
    ref = StableDiffusionInstructPix2PixPipeline(vae=parts["vae"], text_encoder=parts["text_encoder"],
                                                 tokenizer=tokenizer, unet=parts["unet"], scheduler=scheduler,
                                                 safety_checker=None, feature_extractor=None,
                                                 requires_safety_checker=False)
    ref.set_progress_bar_config(disable=True)
    scheduler.set_timesteps(4)
    with torch.no_grad():
        out = ref(PROMPT, image=_picture(), negative_prompt=NEGATIVE, num_inference_steps=4, guidance_scale=7.0,
                  image_guidance_scale=1.5, latents=seen["x"] / scheduler.init_noise_sigma, output_type="latent")
    assert_close_scaled(seen["out"], out.images, rel=2e-3)
