"""The refiner through the A1111 API: `refiner_checkpoint` / `refiner_switch_at` and the always-on
"Refiner" script's args, recorded in the infotext as A1111 does; unknown checkpoints and bad
fractions are 422s; the model cache holds the main model beside its refiner whatever its budget; the
X/Y/Z plot's "Refiner checkpoint" and "Refiner switch at" axes make the same pixels as single requests."""
from __future__ import annotations

import json

import numpy as np
import pytest
import requests
import torch
from server_live import LiveServer
from test_refiner import TINY_REFINER
from workflow_models import TINY_SDXL

from opensd.library.hashes import model_hash
from opensd.library.synthetic import write_random_checkpoint
from opensd.pipeline.infotext import parse_infotext
from opensd.server.images_io import decode_b64
from opensd.server.settings import Settings


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("srv_refiner")
    ckpts = root / "models" / "Stable-diffusion"
    ckpts.mkdir(parents=True)
    write_random_checkpoint(ckpts / "base.safetensors", TINY_SDXL, dtype=torch.float32)
    write_random_checkpoint(ckpts / "ref.safetensors", TINY_REFINER, seed=1, dtype=torch.float32)
    settings = Settings(models_dir=root / "models", outputs_dir=root / "outputs", model_budget_bytes=1,
                        device="cpu", precision="fp32")
    with LiveServer(settings) as server:
        yield server


def txt2img(live, **kw):
    body = {"prompt": "a kite", "negative_prompt": "blur", "steps": 5, "width": 64, "height": 64, "seed": 2,
            "cfg_scale": 5, "sampler_name": "Euler", "override_settings": {"sd_model_checkpoint": "base"}, **kw}
    return requests.post(f"{live.url}/sdapi/v1/txt2img", json=body, timeout=120)


def test_refiner_fields_refine_and_are_recorded(live):
    r = txt2img(live, refiner_checkpoint="ref", refiner_switch_at=0.6)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    _, _, params = parse_infotext(info["infotexts"][0])
    path = live.settings.models_dir / "Stable-diffusion" / "ref.safetensors"
    assert params["Refiner"] == f"ref [{model_hash(path)}]" and params["Refiner switch at"] == "0.6"
    assert "refiner_checkpoint" not in info["unsupported_fields"]
    # both models stay loaded for the run although the budget is 1 byte
    assert sorted(p.name for p, _ in live.state.cache.loaded()) == ["base.safetensors", "ref.safetensors"]
    plain = txt2img(live)
    assert "Refiner" not in json.loads(plain.json()["info"])["infotexts"][0]
    assert plain.json()["images"][0] != r.json()["images"][0]


def test_the_always_on_refiner_script(live):
    r = txt2img(live, alwayson_scripts={"Refiner": {"args": [True, "ref", 0.5]}})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert "Refiner switch at: 0.5" in info["infotexts"][0]
    assert not any("refiner" in f.lower() for f in info["unsupported_fields"])
    off = txt2img(live, alwayson_scripts={"Refiner": {"args": [False, "ref", 0.5]}})
    assert "Refiner" not in json.loads(off.json()["info"])["infotexts"][0]
    listed = requests.get(f"{live.url}/sdapi/v1/scripts", timeout=10).json()
    assert "refiner" in listed["txt2img"] and "refiner" in listed["img2img"]


@pytest.mark.parametrize("kw, field", [
    ({"refiner_checkpoint": "missing"}, "refiner_checkpoint"),
    ({"refiner_checkpoint": "ref", "refiner_switch_at": 1.5}, "refiner_switch_at"),
    ({"alwayson_scripts": {"Refiner": {"args": [True, "missing", 0.8]}}}, "alwayson_scripts.Refiner.args[1]"),
])
def test_refusals_are_422s_naming_the_field(live, kw, field):
    r = txt2img(live, **kw)
    assert r.status_code == 422
    assert field in r.text


def pixels(r, index: int = 0):
    return np.asarray(decode_b64(r.json()["images"][index], "image", 1 << 20).convert("RGB"))


def xyz(live, x_type: int, x_values: str, **kw):
    # A1111 1.10's X/Y/Z script_args with every cell's image returned; txt2img axis 38 is "Refiner
    # checkpoint", 39 "Refiner switch at"
    args = [x_type, x_values, [], 0, "", [], 0, "", [], True, True, False, False, False, False, False, 0, False]
    return txt2img(live, **kw, script_name="X/Y/Z plot", script_args=args)


def test_xyz_refiner_switch_cells_are_the_single_generations(live):
    r = xyz(live, 39, "1.0, 0.5", refiner_checkpoint="ref")
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["index_of_first_image"] == 1 and len(r.json()["images"]) == 3
    for cell, switch in ((1, 1.0), (2, 0.5)):
        single = txt2img(live, refiner_checkpoint="ref", refiner_switch_at=switch)
        assert np.array_equal(pixels(r, cell), pixels(single))
    assert "Refiner switch at: 0.5" in info["infotexts"][2]
    assert np.array_equal(pixels(r, 1), pixels(txt2img(live)))  # switching at 1.0 never happens
    assert not np.array_equal(pixels(r, 1), pixels(r, 2))


def test_xyz_refiner_checkpoint_cells_and_none(live):
    r = xyz(live, 38, "None, ref")  # no refiner in the request: the axis brings its own, at the default 0.8
    assert r.status_code == 200, r.text
    assert np.array_equal(pixels(r, 1), pixels(txt2img(live)))
    assert np.array_equal(pixels(r, 2), pixels(txt2img(live, refiner_checkpoint="ref")))
    off = xyz(live, 38, "None", refiner_checkpoint="ref", refiner_switch_at=0.5)  # "None" turns the request's off
    assert np.array_equal(pixels(off, 1), pixels(txt2img(live)))


@pytest.mark.parametrize("x_type, values, message", [
    (38, "ref, missing", "X values: Refiner checkpoint: "),
    (39, "0.5, 1.5", "X values: Refiner switch at: 1.5 is not a fraction in 0..1"),
])
def test_xyz_refiner_axis_refusals_name_the_axis(live, x_type, values, message):
    r = xyz(live, x_type, values, refiner_checkpoint="ref")
    assert r.status_code == 422 and message in r.text


def test_the_refiner_axes_are_listed_as_available(live):
    axes = requests.get(f"{live.url}/opensd/v1/xyz-axes", timeout=10).json()
    for mode in ("txt2img", "img2img"):
        found = {a["label"]: a for a in axes[mode]}
        assert found["Refiner switch at"]["available"] and found["Refiner checkpoint"]["available"]
        assert found["Refiner checkpoint"]["choices"] == ["None", *found["Checkpoint name"]["choices"]]
        assert {"base.safetensors", "ref.safetensors"} <= set(found["Checkpoint name"]["choices"])
