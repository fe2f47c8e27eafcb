"""A1111's img2img settings: initial_noise_multiplier, img2img_extra_noise, inpainting_mask_weight and
img2img_color_correction, in the pipeline (against hand-computed references), the A1111 API, the
infotext and the CLI's flags and --from."""
import base64
import io
import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from server_live import BASE, models_dir

from opensd.cli import build_parser, main
from opensd.cli.generate import generation_kwargs
from opensd.errors import InvalidArgument
from opensd.pipeline import color_correction as cc
from opensd.pipeline import images as I
from opensd.pipeline import img2img as i2i
from opensd.library.synthetic import write_random_checkpoint
from opensd.pipeline.infotext import parse_infotext, read_infotext
from opensd.pipeline.infotext_params import image_infotext, recorded
from opensd.pipeline.noise import ImageNoise
from opensd.pipeline.params import Hires, Params
from opensd.pipeline.pipeline import load
from opensd.server import a1111_run, a1111_unsupported
from opensd.server.a1111_models import Img2ImgRequest, Txt2ImgRequest
from opensd.server.a1111_option_table import DEFAULTS
from opensd.server.app import create_app
from opensd.server.settings import Settings
from test_modes import _mask, _picture, inpaint_pipe, pipe  # noqa: F401  (the same tiny models and pictures)

FIELDS = ("noise_multiplier", "extra_noise", "mask_weight", "color_correction")


def _passes(pipe, monkeypatch) -> list:
    """(start latent, inpainting channels) of every sampling pass from now on."""
    seen, inner = [], pipe._sample

    def recording(p, x, sigmas, noise, report, width, height, **kw):
        seen.append((x.clone(), kw.get("image_cond")))
        return inner(p, x, sigmas, noise, report, width, height, **kw)

    monkeypatch.setattr(pipe, "_sample", recording)
    return seen


# --- the pipeline ------------------------------------------------------------------------------

def test_noise_multiplier_and_extra_noise_add_exactly_that_much_noise(pipe, monkeypatch):
    seen = _passes(pipe, monkeypatch)
    init = _picture()
    for kw in ({}, {"noise_multiplier": 0.0}, {"noise_multiplier": 0.5, "extra_noise": 0.25}):
        pipe.img2img(init, "x", strength=0.5, steps=4, seed=7, **kw)
    plain, silent, both = (x for x, _ in seen)
    latent = pipe.encode(init)
    noise = ImageNoise(7, tuple(latent.shape), pipe.device).initial
    sigma = i2i.tail(pipe.sigmas(Params.of(steps=4, width=64, height=64), 4), i2i.steps_run(4, 0.5))[0]
    assert torch.equal(silent, latent)  # multiplier 0: the init latent, no noise
    assert torch.allclose(plain, latent + noise * sigma, atol=1e-5)
    # A1111: x = latent + (noise * m) * sigma, then + (noise * m) * extra
    assert torch.allclose(both, latent + noise * 0.5 * sigma + noise * 0.5 * 0.25, atol=1e-5)


def test_extra_noise_reaches_the_hires_pass_but_the_noise_multiplier_does_not(pipe, monkeypatch):
    seen = _passes(pipe, monkeypatch)
    hires = Hires(scale=1.5, upscaler="latent", denoise=0.5)
    for kw in ({}, {"extra_noise": 0.3}, {"noise_multiplier": 0.5}):
        pipe.txt2img("x", steps=3, seed=4, width=64, height=64, hires=hires, **kw)
    (first, _), (second, _), (first_x, _), (second_x, _), (first_m, _), (second_m, _) = seen
    assert torch.equal(first, first_x) and torch.equal(first, first_m)  # txt2img's pass has neither
    noise = ImageNoise(4, tuple(second.shape), pipe.device).initial  # the hires pass draws afresh
    assert torch.allclose(second_x - second, noise * 0.3, atol=1e-5)
    assert torch.equal(second_m, second)


@pytest.mark.parametrize("weight", [1.0, 0.0, 0.5])
def test_mask_weight_blanks_that_much_of_the_masked_area_in_the_conditioning(inpaint_pipe, monkeypatch, weight):
    seen = _passes(inpaint_pipe, monkeypatch)
    init, mask = _picture(), _mask()
    inpaint_pipe.img2img(init, "x", mask=mask, mask_blur=0, inpainting_fill="original", strength=0.5, steps=2,
                         seed=1, mask_weight=weight)
    cond = seen[0][1]
    binary = (I.mask_to_tensor(mask) > 0.5).float()
    want = inpaint_pipe.encode_tensor(I.to_tensor(init) * (1 - weight * binary))  # 0: the whole image
    assert torch.allclose(cond[:, 1:], want, atol=1e-5)
    assert torch.equal(cond[:, :1], torch.nn.functional.interpolate(binary, size=cond.shape[-2:]))


def test_mask_weight_in_the_hires_pass_conditions_on_the_upscaled_image(inpaint_pipe, monkeypatch):
    seen = _passes(inpaint_pipe, monkeypatch)
    hires = Hires(scale=1.5, upscaler="latent", denoise=0.5)
    for weight in (1.0, 0.0):
        inpaint_pipe.txt2img("x", steps=2, seed=4, width=64, height=64, hires=hires, mask_weight=weight)
    (_, empty), (upscaled_x, shown) = seen[1], seen[3]
    assert torch.equal(empty, inpaint_pipe.inpainting_cond(None, None, 96, 96))  # weight 1: as txt2img
    # weight 0: A1111 decodes the upscaled latents and conditions on them, unblanked
    noise = ImageNoise(4, tuple(upscaled_x.shape), inpaint_pipe.device).initial
    sigma = i2i.tail(inpaint_pipe.sigmas(Params.of(steps=2, width=96, height=96), 4), 2)[0]  # A1111: 2 of 2 / 0.5
    upscaled = upscaled_x - noise * sigma
    want = inpaint_pipe.encode_tensor(inpaint_pipe.decode_tensor(upscaled))
    assert torch.allclose(shown[:, 1:], want, atol=1e-3)


def test_mask_weight_after_an_image_upscaler_conditions_on_its_image_in_0_to_1_as_a1111(inpaint_pipe, monkeypatch):
    seen, upscaled, resize = _passes(inpaint_pipe, monkeypatch), [], inpaint_pipe.upscalers.resize

    def recording(*args, **kw):
        upscaled.append(resize(*args, **kw))
        return upscaled[-1]

    monkeypatch.setattr(inpaint_pipe.upscalers, "resize", recording)
    inpaint_pipe.txt2img("x", steps=2, seed=4, width=64, height=64, mask_weight=0.25,
                         hires=Hires(scale=1.5, upscaler="lanczos", denoise=0.5))
    pixels01 = (I.to_tensor(upscaled[0]) + 1) / 2  # A1111 hands the upscaled image over unscaled
    want = inpaint_pipe.encode_tensor(pixels01 * (1 - 0.25))
    assert torch.allclose(seen[1][1][:, 1:], want, atol=1e-5)


def test_histogram_matching_is_scikit_images_by_hand():
    source = np.array([[0, 0, 10, 20]], np.uint8)
    template = np.array([[100, 100, 100, 200]], np.uint8)
    # source quantiles 0.5, 0.75, 1.0; template's 0.75 at 100, 1.0 at 200: np.interp clamps below
    assert cc.match_channel(source, template).tolist() == [[100.0, 100.0, 100.0, 200.0]]
    halves = cc.match_channel(np.array([[0, 1]], np.uint8), np.array([[0, 255]], np.uint8))
    assert halves.tolist() == [[0.0, 255.0]]


def test_luminosity_blend_keeps_the_generated_luminosity_by_hand():
    red = np.full((1, 1, 3), (255, 0, 0), np.uint8)
    grey = np.full((1, 1, 3), 128, np.uint8)
    # SetLum(red, 128/255): (1.20296, .20296, .20296) clipped above: l + (c - l)(1 - l)/(max - l)
    l = 128 / 255
    d = l - 0.299  # red's luminosity is 0.299: every channel moves up by d, red past 1
    g = l + (d - l) * (1 - l) / (1 + d - l)
    # blendmodes 2022 truncates when it goes back to uint8 (73.83 -> 73)
    assert cc._luminosity_blend(red, grey)[0, 0].tolist() == [255, int(g * 255), int(g * 255)] == [255, 73, 73]


def test_color_correction_matches_the_results_to_the_init_image(pipe):
    init = _picture()
    plain = pipe.img2img(init, "x", strength=0.8, steps=3, seed=2)[0]
    corrected = pipe.img2img(init, "x", strength=0.8, steps=3, seed=2, color_correction=True)[0]
    assert np.array_equal(np.asarray(corrected), np.asarray(cc.correct(cc.correction_target(init), plain)))
    # a result with red and blue swapped gets the init's hues back, at its own luminosity
    swapped = Image.fromarray(np.ascontiguousarray(np.asarray(init)[..., ::-1]))
    fixed = np.asarray(cc.correct(cc.correction_target(init), swapped))
    assert fixed[0, 0].tolist() == [171, 10, 10] and fixed[20, 20].tolist() == [26, 187, 67]  # (200,40,40), (20,180,60)
    # an image corrected to its own colours comes back within LAB's rounding
    same = np.asarray(cc.correct(cc.correction_target(init), init)).astype(int)
    assert np.abs(same - np.asarray(init).astype(int)).max() <= 3


def test_color_correction_when_inpainting_targets_the_filled_image_before_pasting_back(pipe):
    init, mask = _picture(), _mask()
    kw = dict(mask=mask, mask_blur=0, inpainting_fill="fill", strength=0.8, steps=2, seed=2)
    corrected = np.asarray(pipe.img2img(init, "x", color_correction=True, **kw)[0])
    keep = np.asarray(mask) == 0
    assert np.array_equal(corrected[keep], np.asarray(init)[keep])  # pasted back over the original
    plain = np.asarray(pipe.img2img(init, "x", **kw)[0])
    assert not np.array_equal(corrected[~keep], plain[~keep])


def test_defaults_leave_the_images_as_they_were(pipe, inpaint_pipe):
    init, mask = _picture(), _mask()
    off = dict(noise_multiplier=1.0, extra_noise=0.0, mask_weight=1.0, color_correction=False)
    for p in (pipe, inpaint_pipe):
        a = p.img2img(init, "x", mask=mask, strength=0.6, steps=2, seed=3)[0]
        b = p.img2img(init, "x", mask=mask, strength=0.6, steps=2, seed=3, **off)[0]
        assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("name,value", [("noise_multiplier", -0.1), ("noise_multiplier", 2.0),
                                        ("extra_noise", float("nan")), ("mask_weight", 1.5),
                                        ("color_correction", "yes"), ("extra_noise", True)])
def test_bad_values_are_refused_naming_them(pipe, name, value):
    with pytest.raises(InvalidArgument, match=f"^{name}: "):
        pipe.img2img(_picture(), "x", steps=1, **{name: value})


# --- infotext, --from, CLI ----------------------------------------------------------------------

def test_infotext_writes_a1111s_keys_and_reads_them_back(pipe, inpaint_pipe):
    image = pipe.img2img(_picture(), "x", strength=0.5, steps=2, seed=1, noise_multiplier=0.5, extra_noise=0.25)[0]
    text = image_infotext(pipe, image, img2img=True)
    assert "Noise multiplier: 0.5, Extra noise: 0.25" in text and "Conditional mask weight" not in text
    settings = recorded(*parse_infotext(text)).settings
    assert settings["noise_multiplier"] == 0.5 and settings["extra_noise"] == 0.25
    plain = image_infotext(pipe, pipe.img2img(_picture(), "x", strength=0.5, steps=1, seed=1)[0], img2img=True)
    assert "Noise multiplier" not in plain and "Extra noise" not in plain
    hires = pipe.txt2img("x", steps=1, seed=1, width=64, height=64, extra_noise=0.25, noise_multiplier=0.5,
                         hires=Hires(scale=1.5, denoise=0.5))[0]
    text = image_infotext(pipe, hires)
    assert "Extra noise: 0.25" in text and "Noise multiplier" not in text  # A1111: img2img's only
    inpainted = inpaint_pipe.img2img(_picture(), "x", mask=_mask(), steps=1, seed=1, mask_weight=0.5)[0]
    text = image_infotext(inpaint_pipe, inpainted, img2img=True, mask=True)
    assert ", Conditional mask weight: 0.5, " in text
    assert recorded(*parse_infotext(text)).settings["mask_weight"] == 0.5
    default = inpaint_pipe.txt2img("x", steps=1, seed=1, width=64, height=64)[0]
    assert ", Conditional mask weight: 1, " in image_infotext(inpaint_pipe, default)  # A1111 writes it always


def test_cli_flags():
    args = build_parser().parse_args(["generate", "x", "--init-image", "a.png", "--noise-multiplier", "0.5",
                                      "--extra-noise", "0.1", "--mask-weight", "0.3", "--color-correction"])
    kw = generation_kwargs(args)
    assert [kw[name] for name in FIELDS] == [0.5, 0.1, 0.3, True]
    plain = generation_kwargs(build_parser().parse_args(["generate", "x", "--init-image", "a.png"]))
    assert not set(FIELDS) & set(plain)


def test_cli_generate_from_an_image_repeats_its_noise_settings(tmp_path):
    ckpt = write_random_checkpoint(tmp_path / "m.safetensors")
    _picture().save(tmp_path / "init.png")
    first, again, plain = tmp_path / "first.png", tmp_path / "again.png", tmp_path / "plain.png"
    image = ["-m", str(ckpt), "--init-image", str(tmp_path / "init.png"), "--steps", "2", "--seed", "3"]
    assert main(["generate", "x", *image, "--noise-multiplier", "0.5", "--extra-noise", "0.25", "-o", str(first)]) == 0
    assert "Noise multiplier: 0.5, Extra noise: 0.25" in read_infotext(first)
    assert main(["generate", "--from", str(first), *image, "-o", str(again)]) == 0
    assert main(["generate", "x", *image, "-o", str(plain)]) == 0
    made = [np.asarray(Image.open(f)) for f in (first, again, plain)]
    assert np.array_equal(made[0], made[1]) and not np.array_equal(made[0], made[2])
    assert read_infotext(again) == read_infotext(first)


# --- the A1111 API ------------------------------------------------------------------------------

def _plan(req, img2img=True, **settings):
    return a1111_run.plan(req, img2img, 10_000, {**DEFAULTS, "randn_source": "CPU", **settings})


def test_a1111_settings_and_the_request_field_reach_the_job():
    i2i_req = Img2ImgRequest(prompt="x", init_images=["x"])
    kw, gaps = _plan(i2i_req)
    assert not set(FIELDS) & set(kw)  # the defaults: the job is as before
    settings = dict(initial_noise_multiplier=0.8, img2img_extra_noise=0.2, inpainting_mask_weight=0.5,
                    img2img_color_correction=True)
    kw, _ = _plan(i2i_req, **settings)
    assert [kw[name] for name in FIELDS] == [0.8, 0.2, 0.5, True]
    kw, _ = _plan(Img2ImgRequest(prompt="x", init_images=["x"], initial_noise_multiplier=0.6), **settings)
    assert kw["noise_multiplier"] == 0.6  # the request's field wins, as in A1111
    kw, _ = _plan(Txt2ImgRequest(prompt="x", enable_hr=True), img2img=False, **settings)
    assert kw["extra_noise"] == 0.2 and kw["mask_weight"] == 0.5  # the hires pass's
    assert "noise_multiplier" not in kw and "color_correction" not in kw
    with pytest.raises(InvalidArgument, match="^initial_noise_multiplier: "):
        _plan(Img2ImgRequest(prompt="x", init_images=["x"], initial_noise_multiplier=-1))
    assert not a1111_unsupported.setting_gaps({**DEFAULTS, **settings}, settings, DEFAULTS)
    assert not a1111_unsupported.request_gaps(Img2ImgRequest(prompt="x", initial_noise_multiplier=0.5))


def test_a1111_api_img2img_with_the_settings(tmp_path):
    models = models_dir(tmp_path)
    buf = io.BytesIO()
    _picture().save(buf, "PNG")
    settings = {"sd_model_checkpoint": "tiny", "img2img_extra_noise": 0.1, "initial_noise_multiplier": 0.9,
                "img2img_color_correction": True}
    request = {"prompt": "x", "steps": 2, "seed": 3, "width": 64, "height": 64, "sampler_name": "Euler",
               "denoising_strength": 0.6, "init_images": [base64.b64encode(buf.getvalue()).decode()],
               "override_settings": settings}
    with TestClient(create_app(Settings(models_dir=models, outputs_dir=tmp_path / "out")), base_url=BASE) as client:
        r = client.post("/sdapi/v1/img2img", json=request)
        bad = client.post("/sdapi/v1/img2img", json={**request, "override_settings": {
            **settings, "inpainting_mask_weight": 1.5}})
        worse = client.post("/sdapi/v1/img2img", json={**request, "initial_noise_multiplier": 9})
    assert r.status_code == 200, r.text
    assert bad.status_code == 422 and "override_settings.inpainting_mask_weight" in bad.text
    assert worse.status_code == 422 and "initial_noise_multiplier" in worse.text
    info = json.loads(r.json()["info"])
    assert "Noise multiplier: 0.9, Extra noise: 0.1" in info["infotexts"][0] and not info["unsupported_fields"]
    got = np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).convert("RGB"))
    tiny = load(models / "Stable-diffusion" / "tiny.safetensors")
    want = tiny.img2img(_picture(), "x", steps=2, seed=3, strength=0.6, noise_multiplier=0.9, extra_noise=0.1,
                        color_correction=True)[0]
    assert np.array_equal(got, np.asarray(want))


def test_xyz_axes_set_the_settings_and_refuse_bad_values():
    from opensd.scripts import xyz
    from opensd.scripts.spec import Spec

    base = Spec("x", "", {"steps": 2, "width": 64, "height": 64, "batch_size": 1}, seed=1)

    class Face:
        img2img = True

    for label, name in (("Initial noise multiplier", "noise_multiplier"), ("Extra noise", "extra_noise"),
                        ("Cond. Image Mask Weight", "mask_weight")):
        axis = xyz.read_axis(label, "0, 0.5", None, False, base, True, "X")
        cells = xyz.cells(base, (axis, xyz.NOTHING, xyz.NOTHING), xyz.GridOptions(), Face())
        assert [c.kwargs[name] for c in cells] == [0.0, 0.5]
        bad = xyz.read_axis(label, "2", None, False, base, True, "X")
        refused = f"^X/Y/Z cell {label}: 2.0 / - / -: {name}: 2.0 must be a number in 0..1"
        with pytest.raises(InvalidArgument, match=refused):
            xyz.cells(base, (bad, xyz.NOTHING, xyz.NOTHING), xyz.GridOptions(), Face())
