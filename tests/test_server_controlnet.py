"""ControlNet through the A1111 API (alwayson_scripts.controlnet, as sd-webui-controlnet takes it),
driven by the real `webuiapi` client, plus the extension's /controlnet/* routes."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import requests
import torch
import webuiapi
from PIL import Image, ImageDraw
from reference import randomize_
from server_live import LiveServer, models_dir

from opensd.adapters.controlnet import ControlSpec, load_controlnet
from opensd.adapters.preprocessors import preprocess
from opensd.checkpoints.controlnet_files import save_controlnet
from opensd.library.synthetic import TINY
from opensd.models.controlnet import ControlNet, ControlNetConfig
from opensd.server import a1111_run
from opensd.server.a1111_models import Txt2ImgRequest
from opensd.server.settings import Settings

TINY_MODEL = {"sd_model_checkpoint": "tiny"}


def scene(size=64) -> Image.Image:
    im = Image.new("RGB", (size, size), (240, 240, 240))
    d = ImageDraw.Draw(im)
    d.rectangle((10, 12, 40, 50), fill=(20, 40, 200))
    d.ellipse((30, 5, 60, 35), fill=(200, 30, 30))
    return im


def b64png(im: Image.Image) -> str:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def arr(im) -> np.ndarray:
    return np.asarray(im.convert("RGB"), dtype=np.float32)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_cn")
    models = models_dir(root)
    cn = models / "ControlNet"
    cn.mkdir()
    net = randomize_(ControlNet(ControlNetConfig(TINY.unet)), seed=1)
    save_controlnet(net, cn / "control_tiny_canny.safetensors", "small", dtype=torch.float32)
    union = randomize_(ControlNet(ControlNetConfig(TINY.unet, union_types=6, union_width=TINY.unet.model_channels,
                                                   union_type_dim=16)), seed=2)
    save_controlnet(union, cn / "control_tiny_union.safetensors", "small", dtype=torch.float32)
    with LiveServer(Settings(models_dir=models, outputs_dir=root / "outputs")) as server:
        yield server


@pytest.fixture(scope="module")
def api(live):
    return webuiapi.WebUIApi(host="127.0.0.1", port=live.port, sampler="Euler", steps=3)


def gen(api, units=(), **kw):
    # a fresh alwayson_scripts each call: webuiapi adds the units to its mutable default dict, so
    # without it a later call without units would still send the last ones
    args = {"prompt": "a box", "width": 64, "height": 64, "seed": 11, "cfg_scale": 5,
            "override_settings": TINY_MODEL, "alwayson_scripts": {}}
    args.update(kw)
    return api.txt2img(controlnet_units=list(units), **args)


def unit(**kw):
    args = {"image": scene(), "module": "canny", "model": "control_tiny_canny [0123abcd]", "weight": 0.8,
            "resize_mode": "Just Resize", "processor_res": 64, "threshold_a": 50, "threshold_b": 150}
    args.update(kw)
    return webuiapi.ControlNetUnit(**args)


def test_unit_changes_the_image_and_equals_the_python_pipeline(api, live):
    plain = gen(api)
    steered = gen(api, [unit()])
    assert np.abs(arr(plain.image) - arr(steered.image)).mean() > 0.5
    assert steered.info["unsupported_fields"] == []
    # the same generation through the Python API
    path = live.state.cache.resolve("tiny")
    pipe = live.state.cache.get(path)
    req = Txt2ImgRequest(prompt="a box", width=64, height=64, seed=11, cfg_scale=5, steps=3, sampler_name="Euler")
    kw, _ = a1111_run.plan(req, False, 20_000, live.state.options.view())
    net = load_controlnet(live.state.folders.resolve("controlnet", "control_tiny_canny"), pipe)
    edges = preprocess("canny", scene(), low=50, high=150)
    direct = pipe.txt2img("a box", "", seed=11, controls=[ControlSpec(net, edges, weight=0.8)], **kw)[0]
    assert np.array_equal(arr(direct), arr(steered.image))


def test_weight_zero_disabled_and_model_none_equal_no_control(api):
    plain = arr(gen(api).image)
    for u in (unit(weight=0.0), unit(enabled=False), unit(model="None")):
        assert np.array_equal(plain, arr(gen(api, [u]).image))


def test_control_modes_and_guidance_window(api):
    balanced = arr(gen(api, [unit()]).image)
    more = arr(gen(api, [unit(control_mode=2)]).image)
    prompt_more = arr(gen(api, [unit(control_mode=1)]).image)
    assert not np.array_equal(balanced, more) and not np.array_equal(balanced, prompt_more)
    # a window that no step falls in equals no control
    assert np.array_equal(arr(gen(api).image), arr(gen(api, [unit(guidance_start=1.0, guidance_end=1.0)]).image))


def test_img2img_without_unit_image_uses_the_init_image(api):
    init = scene()
    kw = {"images": [init], "prompt": "a box", "width": 64, "height": 64, "seed": 3, "denoising_strength": 0.6,
          "override_settings": TINY_MODEL, "alwayson_scripts": {}}
    a = api.img2img(controlnet_units=[unit(image=None, module="none")], **kw)
    b = api.img2img(controlnet_units=[unit(image=init, module="none")], **dict(kw, alwayson_scripts={}))
    assert np.array_equal(arr(a.image), arr(b.image))


def post(live, body):
    base = {"prompt": "x", "width": 64, "height": 64, "steps": 2, "override_settings": TINY_MODEL}
    # json.dumps writes NaN as the bare token NaN, which the server's JSON parser reads
    return requests.post(f"{live.url}/sdapi/v1/txt2img", data=json.dumps(base | body), timeout=120,
                         headers={"content-type": "application/json"})


def cn(**kw):
    u = {"image": b64png(scene()), "module": "none", "model": "control_tiny_canny"} | kw
    return {"alwayson_scripts": {"controlnet": {"args": [u]}}}


@pytest.mark.parametrize("fields, named", [
    ({"module": "mystery_detector"}, "args[0].module"),
    ({"model": "nope_canny"}, "args[0].model"),
    ({"model": "../Stable-diffusion/tiny"}, "args[0].model"),
    ({"weight": float("nan")}, "args[0].weight"),
    ({"weight": 3.5}, "args[0].weight"),
    ({"guidance_start": 0.8, "guidance_end": 0.2}, "args[0].guidance_start"),
    ({"resize_mode": "Stretch"}, "args[0].resize_mode"),
    ({"control_mode": 7}, "args[0].control_mode"),
    ({"image": "not base64!"}, "args[0].image"),
    ({"image": ""}, "args[0].image"),  # txt2img needs an image
    ({"model": "opensd-emoji-canny"}, "args[0]"),  # made for the built-in model's family, not tiny's
    ({"model": "control_tiny_union", "union_control_type": "Sketch"}, "args[0].union_control_type"),
    ({"model": "control_tiny_union", "union_control_type": "Tile"}, "union_control_type: tile (6) is out of range"),
    ({"union_control_type": "Depth"}, "not a Union ControlNet"),
])
def test_bad_unit_fields_answer_4xx_naming_the_field(live, fields, named):
    r = post(live, cn(**fields))
    assert 400 <= r.status_code < 500, r.text
    assert named in r.text


def test_unsupported_unit_fields_are_reported(live):
    body = cn(module="depth_midas", mask=b64png(scene()), hr_option="Low res only")
    r = post(live, body)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    unit = "alwayson_scripts.controlnet.args[0]"
    assert {f"{unit}.module", f"{unit}.mask", f"{unit}.hr_option"} <= set(info["unsupported_fields"])
    assert any(w.startswith(f"{unit}.mask: ") for w in info["opensd_warnings"])
    body["alwayson_scripts"]["ADetailer"] = {"args": [1]}  # an extension this server lacks: A1111's 422
    r = post(live, body)
    assert r.status_code == 422 and r.json()["detail"] == "Script 'ADetailer' not found", r.text


def test_union_control_type_selects_the_union_controlnets_type(live):
    """The extension's union_control_type ("Hard Edge" = type 3) reaches the network: the image equals
    the Python pipeline's with control_type=3 and differs from the unset ("Unknown") one."""
    def run(kind):
        r = post(live, cn(model="control_tiny_union", union_control_type=kind) | {"seed": 5, "sampler_name": "Euler"})
        assert r.status_code == 200, r.text
        return arr(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))))

    hard, unset = run("Hard Edge"), run("Unknown")
    assert np.abs(hard - unset).mean() > 0.1
    pipe = live.state.cache.get(live.state.cache.resolve("tiny"))
    req = Txt2ImgRequest(prompt="x", width=64, height=64, seed=5, steps=2, sampler_name="Euler")
    kw, _ = a1111_run.plan(req, False, 20_000, live.state.options.view())
    net = load_controlnet(live.state.folders.resolve("controlnet", "control_tiny_union"), pipe)
    direct = pipe.txt2img("x", "", seed=5, controls=[ControlSpec(net, scene(), control_type=3)], **kw)[0]
    assert np.array_equal(arr(direct), hard)


def test_extension_routes(live):
    assert requests.get(f"{live.url}/controlnet/version", timeout=10).json() == {"version": 2}
    models = requests.get(f"{live.url}/controlnet/model_list", timeout=60).json()["model_list"]
    assert any(m.startswith("control_tiny_canny [") for m in models)
    modules = requests.get(f"{live.url}/controlnet/module_list", timeout=10).json()["module_list"]
    assert "canny" in modules and "none" in modules
    r = requests.post(f"{live.url}/controlnet/detect", timeout=60,
                      json={"controlnet_module": "canny", "controlnet_input_images": [b64png(scene())],
                            "controlnet_processor_res": 64, "controlnet_threshold_a": 50, "controlnet_threshold_b": 150})
    assert r.status_code == 200, r.text
    got = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))
    assert np.array_equal(arr(got), arr(preprocess("canny", scene(), low=50, high=150)))
    bad = requests.post(f"{live.url}/controlnet/detect", timeout=10,
                        json={"controlnet_module": "nope", "controlnet_input_images": [b64png(scene())]})
    assert bad.status_code == 422 and "controlnet_module" in bad.text


def test_more_units_than_the_extension_allows_are_refused(live):
    """Units were not counted: each runs its ControlNet at every step, outside the work budget, so
    one request of hundreds of units held the server for as many generations."""
    from opensd.server.a1111_controlnet import MAX_UNITS

    unit_ = cn()["alwayson_scripts"]["controlnet"]["args"][0]
    many = {"alwayson_scripts": {"controlnet": {"args": [unit_] * (MAX_UNITS + 1)}}}
    r = post(live, many)
    assert r.status_code == 422, r.text
    assert f"args[{MAX_UNITS}]: more than {MAX_UNITS} enabled ControlNet units" in r.text
    off = {"alwayson_scripts": {"controlnet": {"args": [unit_] * 2 + [{**unit_, "enabled": False}] * 50}}}
    assert post(live, off).status_code == 200
    listed = {"alwayson_scripts": {"controlnet": {"args": [{"enabled": False}] * 500_000}}}
    r = post(live, listed)  # went through every one (23 s), then stored them all with the job
    assert r.status_code == 422 and "controlnet.args: 500,000 units; at most 100" in r.text, r.text[:300]
