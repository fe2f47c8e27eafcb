"""The A1111 API's seed resize fields and its prompt settings (emphasis, comma_padding_backtrack,
SDXL crop and CLIP-L skip): acted on, written to the infotext as A1111 writes them, refused in one
line naming the field when out of range, and no longer reported as unsupported."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from server_live import BASE, models_dir

from opensd.server.app import create_app
from opensd.server.settings import Settings

TINY = {"sd_model_checkpoint": "tiny"}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("seedemph")
    with TestClient(create_app(Settings(models_dir=models_dir(root), outputs_dir=root / "out")), base_url=BASE) as c:
        yield c


def txt2img(client, settings=None, **fields):
    body = {"prompt": "noise", "steps": 2, "width": 64, "height": 64, "seed": 5, "sampler_name": "Euler",
            "override_settings": {**TINY, **(settings or {})}, **fields}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    image = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).convert("RGB")
    return np.asarray(image, dtype=np.int16), info


def test_seed_resize_fields(client):
    plain, info = txt2img(client)
    resized, rinfo = txt2img(client, seed_resize_from_w=96, seed_resize_from_h=48)
    assert (plain != resized).any()
    assert "Seed resize from: 96x48, " in rinfo["infotexts"][0] and "Seed resize from" not in info["infotexts"][0]
    assert (rinfo["seed_resize_from_w"], rinfo["seed_resize_from_h"]) == (96, 48)
    assert rinfo["unsupported_fields"] == []
    same, sinfo = txt2img(client, seed_resize_from_w=0, seed_resize_from_h=48)  # off unless both are set
    assert (same == plain).all() and "Seed resize from" not in sinfo["infotexts"][0]


@pytest.mark.parametrize("field,value", [("seed_resize_from_w", -2), ("seed_resize_from_h", 100_000),
                                         ("seed_resize_from_w", "wide")])
def test_bad_seed_resize_is_a_422_naming_the_field(client, field, value):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1, field: value, "override_settings": TINY})
    assert r.status_code == 422 and field in r.text


def test_emphasis_setting(client):
    weighted, info = txt2img(client, prompt="a (cat:1.8)")
    ignored, iinfo = txt2img(client, {"emphasis": "Ignore"}, prompt="a (cat:1.8)")
    plain, _ = txt2img(client, prompt="a cat")
    assert (ignored == plain).all() and (weighted != plain).any()
    assert "Emphasis: Ignore" in iinfo["infotexts"][0] and "Emphasis" not in info["infotexts"][0]
    no_norm, ninfo = txt2img(client, {"emphasis": "No norm"}, prompt="a (cat:1.8)")
    assert (no_norm != weighted).any() and ninfo["unsupported_fields"] == []
    old, oinfo = txt2img(client, {"use_old_emphasis_implementation": True}, prompt="a (cat:1.8)")
    assert (old != weighted).any() and oinfo["unsupported_fields"] == []


def test_comma_padding_backtrack_and_sdxl_settings_are_acted_on(client):
    text = " ".join(["a"] * 70) + ", " + " ".join(["b"] * 10)
    default, _ = txt2img(client, prompt=text)
    cut, info = txt2img(client, {"comma_padding_backtrack": 0}, prompt=text)
    assert (default != cut).any() and info["unsupported_fields"] == []
    # SD1: the SDXL settings change nothing (as in A1111) and are not reported
    plain, _ = txt2img(client)
    xl, xinfo = txt2img(client, {"sdxl_crop_top": 64, "sdxl_crop_left": 32, "sdxl_clip_l_skip": True})
    assert (plain == xl).all() and xinfo["unsupported_fields"] == []


@pytest.mark.parametrize("setting,value", [("emphasis", "Loud"), ("comma_padding_backtrack", 75),
                                           ("sdxl_crop_top", -1), ("sdxl_crop_left", "left"),
                                           ("sdxl_clip_l_skip", 1), ("use_old_emphasis_implementation", "on")])
def test_bad_setting_is_a_422_naming_it(client, setting, value):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1,
                                               "override_settings": {**TINY, setting: value}})
    assert r.status_code == 422 and f"override_settings.{setting}" in r.text, r.text
