"""A1111's token_merging_ratio* and hypertile_* settings over the A1111 API (the real `webuiapi`
client): applied to the pass A1111 applies them to, written to the infotext under A1111's keys,
no longer reported as unsupported, and bad values refused naming the setting."""
from __future__ import annotations

import json

import numpy as np
import pytest
import requests
import webuiapi
from PIL import Image
from server_live import LiveServer, models_dir

from opensd.pipeline.infotext import parse_infotext
from opensd.server.settings import Settings

TINY = {"sd_model_checkpoint": "tiny"}


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("speedups")
    with LiveServer(Settings(models_dir=models_dir(root), outputs_dir=root / "outputs")) as server:
        yield server


@pytest.fixture(scope="module")
def api(live):
    return webuiapi.WebUIApi(host="127.0.0.1", port=live.port, sampler="Euler", steps=2)


def gen(api, settings=None, **kw):
    args = dict(prompt="noise", width=128, height=128, seed=5, override_settings={**TINY, **(settings or {})})
    return api.txt2img(**{**args, **kw})


def edit(api, settings=None, **kw):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8))
    args = dict(images=[image], prompt="noise", width=128, height=128, seed=5, denoising_strength=0.8,
                override_settings={**TINY, **(settings or {})})
    return api.img2img(**{**args, **kw})


def pixels(result) -> np.ndarray:
    return np.asarray(result.image.convert("RGB"), dtype=np.int16)


def params(result) -> dict:
    return parse_infotext(result.info["infotexts"][0])[2]


def test_token_merging_ratio_applies_to_txt2img_and_is_recorded(api):
    off, on = gen(api), gen(api, {"token_merging_ratio": 0.5})
    assert np.abs(pixels(on) - pixels(off)).mean() > 0.01
    assert params(on)["Token merging ratio"] == "0.5" and "Token merging ratio" not in params(off)
    assert on.info["unsupported_fields"] == [] and on.info["opensd_warnings"] == []
    assert np.array_equal(pixels(gen(api, {"token_merging_ratio": 0.0})), pixels(off))
    # the img2img setting is for img2img only
    assert np.array_equal(pixels(gen(api, {"token_merging_ratio_img2img": 0.5})), pixels(off))


def test_img2img_ratio_is_a1111s_choice(api):
    off, own = edit(api), edit(api, {"token_merging_ratio_img2img": 0.5})
    assert params(own)["Token merging ratio"] == "0.5" and np.abs(pixels(own) - pixels(off)).mean() > 0.01
    # without its own, img2img takes the txt2img ratio; a token_merging_ratio in override_settings wins
    assert params(edit(api, {"token_merging_ratio": 0.3}))["Token merging ratio"] == "0.3"
    both = {"token_merging_ratio": 0.3, "token_merging_ratio_img2img": 0.5}
    assert params(edit(api, both))["Token merging ratio"] == "0.3"


def test_hires_ratio_applies_to_the_second_pass(api):
    hires = dict(enable_hr=True, hr_scale=1.5, hr_second_pass_steps=2, denoising_strength=0.95)
    off, on = gen(api, **hires), gen(api, {"token_merging_ratio_hr": 0.3}, **hires)
    assert params(on)["Token merging ratio hr"] == "0.3" and "Token merging ratio" not in params(on)
    assert np.abs(pixels(on) - pixels(off)).mean() > 0.01
    both = params(gen(api, {"token_merging_ratio": 0.5}, **hires))
    assert both["Token merging ratio"] == "0.5" and both["Token merging ratio hr"] == "0.5"


def test_hypertile_settings_tile_the_unet_and_the_vae(api):
    size = dict(width=256, height=256)
    # max tile 128 px is 16 latent px: the 32x32 latent splits, always in 2x2 with swap size 1
    tiles = {"hypertile_max_tile_unet": 128, "hypertile_swap_size_unet": 1, "hypertile_swap_size_vae": 1}
    off = pixels(gen(api, tiles, **size))
    unet = gen(api, {**tiles, "hypertile_enable_unet": True}, **size)
    vae = gen(api, {**tiles, "hypertile_enable_vae": True}, **size)
    for result in (unet, vae):
        assert np.abs(pixels(result) - off).mean() > 0.01 and result.info["unsupported_fields"] == []
    # the second-pass switch alone leaves a run without hires fix as it is
    assert np.array_equal(pixels(gen(api, {**tiles, "hypertile_enable_unet_secondpass": True}, **size)), off)
    # its always-on script takes no arguments; naming it is accepted and changes nothing
    named = gen(api, tiles, alwayson_scripts={"Hypertile": {"args": []}}, **size)
    assert np.array_equal(pixels(named), off) and named.info["unsupported_fields"] == []
    assert "hypertile" in api.get_scripts()["txt2img"]


@pytest.mark.parametrize("body, named", [
    ({"token_merging_ratio": 1.5}, "token_merging_ratio"), ({"token_merging_ratio_hr": -0.1}, "token_merging_ratio_hr"),
    ({"token_merging_ratio_img2img": "half"}, "token_merging_ratio_img2img"),
    ({"hypertile_swap_size_unet": 0}, "hypertile_swap_size_unet"), ({"hypertile_max_depth_unet": 4}, "hypertile_max_depth_unet"),
    ({"hypertile_max_tile_vae": 1024}, "hypertile_max_tile_vae"), ({"hypertile_enable_vae": "yes"}, "hypertile_enable_vae"),
])
def test_bad_values_are_refused_naming_the_setting(live, body, named):
    r = requests.post(f"{live.url}/sdapi/v1/txt2img", timeout=30, data=json.dumps(
        {"prompt": "x", "steps": 1, "width": 64, "height": 64, "override_settings": {**TINY, **body}}),
        headers={"content-type": "application/json"})
    assert r.status_code == 422 and f"override_settings.{named}" in r.json()["detail"], r.text


def test_xyz_token_merging_axis_cells_are_the_single_generations(api):
    from test_server_a1111_xyz import xyz_args
    r = gen(api, script_name="X/Y/Z plot", script_args=xyz_args("Token merging ratio", "0, 0.5"))
    assert len(r.images) == 3
    cells = [np.asarray(i.convert("RGB"), dtype=np.int16) for i in r.images[1:]]
    assert np.array_equal(cells[0], pixels(gen(api)))
    assert np.array_equal(cells[1], pixels(gen(api, {"token_merging_ratio": 0.5})))
    assert "Token merging ratio: 0.5" in r.info["infotexts"][2]


def test_an_images_token_merging_ratios_become_its_settings_again():
    from opensd.server.infotext_request import request_from_infotext
    request, notes = request_from_infotext(
        "a cat\nSteps: 2, Seed: 1, Size: 64x64, Token merging ratio: 0.3, Token merging ratio hr: 0.5, "
        "Hires upscale: 2", [])
    assert request["override_settings"]["token_merging_ratio"] == 0.3
    assert request["override_settings"]["token_merging_ratio_hr"] == 0.5 and notes == []
    _, notes = request_from_infotext("a cat\nSteps: 2, Seed: 1, Token merging ratio: half", [])
    assert notes == ["Token merging ratio: 'half' is not a number; not applied"]
