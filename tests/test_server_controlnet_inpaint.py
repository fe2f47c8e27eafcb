"""sd-webui-controlnet's inpaint units through the A1111 API (server/a1111_cn_inpaint.py): modules
inpaint (inpaint_global_harmonious), inpaint_only and inpaint_only+lama with their masks, end to end on
a live server with a tiny random ControlNet and a random LaMa written as the extension's
ControlNetLama.pth."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import requests
import torch
from PIL import Image
from reference import randomize_
from server_live import LiveServer, models_dir

from lama_files import lama_state_dict, random_lama
from opensd.adapters.controlnet import ControlSpec, load_controlnet
from opensd.adapters.controlnet_inpaint import fit_mask, paste_mask
from opensd.checkpoints.controlnet_files import save_controlnet
from opensd.library.synthetic import TINY
from opensd.models.controlnet import ControlNet, ControlNetConfig
from opensd.server import a1111_run
from opensd.server.a1111_models import Txt2ImgRequest
from opensd.server.settings import Settings
from test_controlnet_inpaint import hole, scene

MODEL = "control_v11p_sd15_inpaint [0123abcd]"


def b64png(im: Image.Image) -> str:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def px(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")).astype(np.int16)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_cn_inpaint")
    models = models_dir(root)
    (models / "ControlNet").mkdir()
    net = randomize_(ControlNet(ControlNetConfig(TINY.unet)), seed=4, std=0.1)
    save_controlnet(net, models / "ControlNet" / "control_v11p_sd15_inpaint.safetensors", "small",
                    dtype=torch.float32)
    with LiveServer(Settings(models_dir=models, outputs_dir=root / "outputs")) as server:
        yield server


def post(live, unit: dict, mode="txt2img", **body):
    base = {"prompt": "x", "width": 64, "height": 64, "steps": 3, "seed": 9, "sampler_name": "Euler",
            "override_settings": {"sd_model_checkpoint": "tiny"},
            "alwayson_scripts": {"controlnet": {"args": [{"model": MODEL, **unit}]}}}
    return requests.post(f"{live.url}/sdapi/v1/{mode}", data=json.dumps(base | body), timeout=300,
                         headers={"content-type": "application/json"})


def _far(mask):  # beyond the final paste's dilation and blur
    return paste_mask(fit_mask(mask, 64, 64))[0, 0].numpy() == 0


def test_inpaint_only_keeps_the_image_outside_the_unit_mask(live):
    image, mask = scene(), hole()
    r = post(live, {"module": "inpaint_only", "image": b64png(image), "mask": b64png(mask)})
    assert r.status_code == 200, r.text
    out, far = px(r.json()["images"][0]), _far(mask)
    assert np.abs(out - np.asarray(image, dtype=np.int16))[far].max() <= 1
    assert np.abs(out - np.asarray(image, dtype=np.int16))[np.asarray(mask) > 127].mean() > 5
    # the mask in the image dict, and mask_image (the Forge alias), are the same mask
    same = post(live, {"module": "inpaint_only", "image": {"image": b64png(image), "mask": b64png(mask)}})
    alias = post(live, {"module": "inpaint_only", "image": b64png(image), "mask_image": b64png(mask)})
    pair = post(live, {"module": "inpaint_only", "image": [b64png(image), b64png(mask)]})
    for other in (same, alias, pair):
        assert np.array_equal(px(other.json()["images"][0]), out)
    # inpaint_global_harmonious: the same hint, nothing kept
    g = post(live, {"module": "inpaint_global_harmonious", "image": b64png(image), "mask": b64png(mask)})
    assert g.status_code == 200, g.text
    assert np.abs(px(g.json()["images"][0]) - np.asarray(image, dtype=np.int16))[far].mean() > 5
    assert json.loads(r.json()["info"])["unsupported_fields"] == []
    # the same generation through the Python API
    pipe = live.state.cache.get(live.state.cache.resolve("tiny"))
    req = Txt2ImgRequest(prompt="x", width=64, height=64, seed=9, steps=3, sampler_name="Euler")
    kw, _ = a1111_run.plan(req, False, 20_000, live.state.options.view())
    net = load_controlnet(live.state.folders.resolve("controlnet", "control_v11p_sd15_inpaint"), pipe)
    direct = pipe.txt2img("x", "", seed=9, controls=[ControlSpec(net, image, mask=mask, inpaint="only")], **kw)[0]
    assert np.array_equal(np.asarray(direct, dtype=np.int16), out)


def test_module_list_names_the_inpaint_modules(live):
    names = requests.get(f"{live.url}/controlnet/module_list", timeout=10).json()["module_list"]
    assert {"inpaint", "inpaint_only", "inpaint_only+lama"} <= set(names)
    assert "inpaint_global_harmonious" not in names
    labels = requests.get(f"{live.url}/controlnet/module_list?alias_names=true", timeout=10).json()["module_list"]
    assert "inpaint_global_harmonious" in labels and "inpaint" not in labels


@pytest.mark.parametrize("unit, named", [
    ({"module": "inpaint_only", "image": b64png(scene())}, "args[0].mask: inpaint_only needs a mask"),
    ({"module": "inpaint_only", "image": b64png(scene()), "mask": b64png(Image.new("L", (64, 64)))},
     "the mask marks no pixel"),
    ({"module": "inpaint_only", "image": b64png(scene()), "mask": b64png(hole(32))}, "32x32 does not match"),
    ({"module": "inpaint_only", "image": b64png(scene()), "mask": b64png(hole()), "mask_image": b64png(hole())},
     "not both"),
    ({"module": "inpaint_only+lama", "image": b64png(scene()), "mask": b64png(hole())},
     "ControlNetLama.pth is not installed"),
])
def test_bad_inpaint_units_are_refused_naming_the_field(live, unit, named):
    r = post(live, unit)
    assert r.status_code == 422, r.text
    assert named in r.text


def test_img2img_mask_feeds_the_unit_and_inpaint_only_falls_back(live):
    image, mask = scene(), hole()
    body = {"init_images": [b64png(image)], "mask": b64png(mask), "denoising_strength": 0.9}
    r = post(live, {"module": "inpaint_only"}, mode="img2img", **body)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert "alwayson_scripts.controlnet.args[0].module" in info["unsupported_fields"]  # fell back, said so
    g = post(live, {"module": "inpaint"}, mode="img2img", **body)
    assert np.array_equal(px(r.json()["images"][0]), px(g.json()["images"][0]))


def test_inpaint_only_lama_fills_with_the_extensions_lama_file(live):
    lama_dir = live.settings.models_dir / "ControlNetPreprocessor" / "lama"
    lama_dir.mkdir(parents=True)
    torch.save({"state_dict": {k: v.half() for k, v in lama_state_dict(random_lama()).items()}},
               lama_dir / "ControlNetLama.pth")
    image, mask = scene(), hole()
    r = post(live, {"module": "inpaint_only+lama", "image": b64png(image), "mask": b64png(mask)})
    assert r.status_code == 200, r.text
    out, far = px(r.json()["images"][0]), _far(mask)
    assert np.abs(out - np.asarray(image, dtype=np.int16))[far].max() <= 1
    only = post(live, {"module": "inpaint_only", "image": b64png(image), "mask": b64png(mask)})
    assert not np.array_equal(px(only.json()["images"][0]), out)
    # /controlnet/detect shows LaMa's fill: the image outside the mask, painted inside
    d = requests.post(f"{live.url}/controlnet/detect", timeout=120, json={
        "controlnet_module": "inpaint_only+lama", "controlnet_input_images": [b64png(image)],
        "controlnet_masks": [b64png(mask)]})
    assert d.status_code == 200, d.text
    filled = px(d.json()["images"][0])
    keep = np.asarray(mask) == 0
    assert np.array_equal(filled[keep], np.asarray(image, dtype=np.int16)[keep])
    assert np.abs(filled - np.asarray(image, dtype=np.int16))[~keep].mean() > 1
    missing = requests.post(f"{live.url}/controlnet/detect", timeout=60, json={
        "controlnet_module": "inpaint_only", "controlnet_input_images": [b64png(image)]})
    assert missing.status_code == 422 and "controlnet_masks" in missing.text
