"""A1111's extras and upscaler routes, and the hires fix with a model upscaler, through the real
`webuiapi` client against a live server whose models folder holds two tiny random upscalers."""
from __future__ import annotations

import pytest
import webuiapi
from PIL import Image
from server_live import LiveServer, models_dir
from upscaler_files import rrdbnet, srvgg, write_pth, write_safetensors

from opensd.server.settings import Settings


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("extras")
    models = models_dir(root)
    write_pth(models / "ESRGAN" / "4x_tiny.pth", rrdbnet(nf=8, nb=1), "params_ema")
    write_safetensors(models / "upscale_models" / "2x-compact.safetensors", srvgg(scale=2))
    settings = Settings(models_dir=models, outputs_dir=root / "outputs", max_image_pixels=512 * 512)
    with LiveServer(settings) as server:
        yield server


@pytest.fixture(scope="module")
def api(live):
    return webuiapi.WebUIApi(host="127.0.0.1", port=live.port, sampler="Euler", steps=2)


def _image(w=40, h=30):
    image = Image.new("RGB", (w, h), (200, 40, 40))
    image.paste((20, 90, 220), (0, 0, w // 2, h))
    return image


def test_the_lists_show_what_is_installed(api):
    assert [u["name"] for u in api.get_upscalers()] == ["None", "Lanczos", "Nearest", "2x-compact", "4x_tiny"]
    tiny = api.get_upscalers()[-1]
    assert tiny["model_name"] == "4x_tiny.pth" and tiny["model_path"].endswith("ESRGAN/4x_tiny.pth")
    assert [m["name"] for m in api.get_latent_upscale_modes()] == [
        "Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)", "Latent (nearest)",
        "Latent (nearest-exact)"]
    assert api.get_face_restorers() == []


def test_extra_single_image_upscales_with_a_model(api):
    r = api.extra_single_image(_image(), upscaler_1="4x_tiny", upscaling_resize=2)
    assert r.image.size == (80, 56)  # A1111 rounds the target down to a multiple of 8
    assert r.info == "<p>Postprocess upscale by: 2.0, Postprocess upscaler: 4x_tiny</p>"
    assert r.image.info["postprocessing"] == "Postprocess upscale by: 2.0, Postprocess upscaler: 4x_tiny"


def test_scale_to_a_size_with_crop_and_a_second_upscaler(api):
    r = api.extra_single_image(_image(), resize_mode=1, upscaling_resize_w=100, upscaling_resize_h=60,
                               upscaling_crop=True, upscaler_1="2x-compact", upscaler_2="Nearest",
                               extras_upscaler_2_visibility=0.5)
    assert r.image.size == (100, 60)
    assert "Postprocess upscale to: 100x60" in r.info and "Postprocess crop to: 100x60" in r.info
    assert "Postprocess upscaler 2: Nearest" in r.info


def test_upscaler_none_returns_the_image_as_it_was(api):
    r = api.extra_single_image(_image(33, 17), upscaler_1="None", upscaling_resize=3)
    assert r.image.size == (33, 17) and r.info == "<p></p>"


def test_extra_batch_images(api):
    r = api.extra_batch_images([_image(), _image(16, 24)], upscaler_1="Lanczos", upscaling_resize=2,
                               show_extras_results=False)  # A1111 still answers with the images
    assert [im.size for im in r.images] == [(80, 56), (32, 48)]


def test_face_restoration_is_reported_not_silently_ignored(api):
    r = api.extra_single_image(_image(), upscaler_1="Lanczos", gfpgan_visibility=0.8, codeformer_visibility=0.5)
    assert r.image.size == (80, 56)
    assert r.json["unsupported_fields"] == ["codeformer_visibility", "gfpgan_visibility"]
    assert "no face restoration model here" in r.json["opensd_warnings"][0]


@pytest.mark.parametrize("kwargs,message", [
    ({"upscaler_1": "R-ESRGAN 4x+"}, "upscaler_1: no upscaler named 'R-ESRGAN 4x+'"),
    ({"upscaler_1": "Lanczos", "upscaler_2": "Latent"}, "upscaler_2: 'Latent' is a latent upscale mode"),
    ({"upscaler_1": "Lanczos", "upscaling_resize": 8}, "upscaling_resize: image would become 800x640, over the "
                                                       "262144-pixel limit"),
])
def test_mistakes_are_422_naming_the_field(api, kwargs, message):
    with pytest.raises(RuntimeError) as e:
        api.extra_single_image(_image(100, 80), **kwargs)
    assert e.value.args[0] == 422 and message in e.value.args[1]


def test_hires_fix_with_a_model_upscaler(api):
    r = api.txt2img(prompt="a cat", width=64, height=64, steps=1, seed=3, enable_hr=True, hr_scale=2,
                    hr_second_pass_steps=1, hr_upscaler="2X-Compact", denoising_strength=0.5)
    assert r.images[0].size == (128, 128)
    assert "Hires upscaler: 2x-compact" in r.info["infotexts"][0]  # the model's own spelling
    assert "hr_upscaler" not in r.info["unsupported_fields"]
    with pytest.raises(RuntimeError) as e:
        api.txt2img(prompt="a cat", width=64, height=64, steps=1, enable_hr=True, hr_upscaler="R-ESRGAN 4x+")
    assert e.value.args[0] == 422 and "hr_upscaler: no upscaler named 'R-ESRGAN 4x+'" in e.value.args[1]
