"""Soft inpainting through the faces: the A1111 API's always-on "soft inpainting" script (args in
A1111's order, checked: 422 naming the arg), A1111's infotext keys written and read back by
`opensd generate --from`, and the CLI's --soft-inpainting flags."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import requests
from PIL import Image, ImageDraw
from server_live import LiveServer, models_dir

from opensd.cli import main
from opensd.pipeline.infotext import parse_infotext, read_infotext
from opensd.server.settings import Settings

ARGS = [True, 1.5, 0.75, 4, 0.25, 1, 2.5]  # enabled, schedule bias, preservation strength, ...
KEYS = {"Soft inpainting enabled": "True", "Soft inpainting schedule bias": "1.5",
        "Soft inpainting preservation strength": "0.75", "Soft inpainting transition contrast boost": "4",
        "Soft inpainting mask influence": "0.25", "Soft inpainting difference threshold": "1",
        "Soft inpainting difference contrast": "2.5"}


def _picture():
    image = Image.new("RGB", (64, 64), (200, 40, 40))
    ImageDraw.Draw(image).rectangle((6, 6, 40, 50), fill=(20, 180, 60))
    return image


def _mask():
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).ellipse((16, 16, 48, 48), fill=255)
    return mask


def _b64(image):
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("soft")
    with LiveServer(Settings(models_dir=models_dir(root), outputs_dir=root / "outputs")) as server:
        yield server


def img2img(live, **kw):
    body = {"prompt": "x", "steps": 3, "width": 64, "height": 64, "seed": 5, "denoising_strength": 0.8,
            "init_images": [_b64(_picture())], "mask": _b64(_mask()), "mask_blur": 8,
            "override_settings": {"sd_model_checkpoint": "tiny"}, **kw}
    return requests.post(f"{live.url}/sdapi/v1/img2img", json=body, timeout=120)


def test_the_always_on_script_runs_and_is_recorded(live):
    r = img2img(live, alwayson_scripts={"Soft Inpainting": {"args": ARGS}})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    _, _, params = parse_infotext(info["infotexts"][0])
    assert {k: params.get(k) for k in KEYS} == KEYS
    assert info["unsupported_fields"] == []
    plain = img2img(live)
    assert not any(k in json.loads(plain.json()["info"])["infotexts"][0] for k in KEYS)
    assert plain.json()["images"][0] != r.json()["images"][0]
    off = img2img(live, alwayson_scripts={"soft inpainting": {"args": [False, 1.5]}})
    assert off.json()["images"][0] == plain.json()["images"][0]
    # args left out take the UI defaults, as A1111 fills them
    short = img2img(live, alwayson_scripts={"soft inpainting": {"args": [True]}})
    _, _, params = parse_infotext(json.loads(short.json()["info"])["infotexts"][0])
    assert params["Soft inpainting schedule bias"] == "1" and params["Soft inpainting difference contrast"] == "2"


@pytest.mark.parametrize("args,field", [
    ([True, 1, 0.5, 0.5], "alwayson_scripts.soft inpainting.args[3]"),   # contrast boost below 1
    ([True, "1"], "alwayson_scripts.soft inpainting.args[1]"),
    ([True, 1, 0.5, 4, 2], "alwayson_scripts.soft inpainting.args[4]"),   # mask influence above 1
    (["yes"], "alwayson_scripts.soft inpainting.args[0]"),
    ({"enabled": True}, "alwayson_scripts.soft inpainting.args"),
])
def test_bad_args_are_a_422_naming_the_arg(live, args, field):
    r = img2img(live, alwayson_scripts={"soft inpainting": {"args": args}})
    assert r.status_code == 422 and field in r.text, r.text


def test_txt2img_has_no_soft_inpainting_script(live):
    r = requests.post(f"{live.url}/sdapi/v1/txt2img", timeout=60, json={
        "prompt": "x", "steps": 2, "width": 64, "height": 64,
        "alwayson_scripts": {"soft inpainting": {"args": [True]}}})
    assert r.status_code == 422 and "soft inpainting" in r.text  # A1111 shows it on img2img only


def test_cli_writes_a1111s_keys_and_from_reads_them_back(tmp_path):
    ckpt = models_dir(tmp_path) / "Stable-diffusion" / "tiny.safetensors"
    _picture().save(tmp_path / "init.png")
    _mask().save(tmp_path / "mask.png")
    first, again, plain = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    common = ["-m", str(ckpt), "--steps", "3", "--seed", "5", "--init-image", str(tmp_path / "init.png"),
              "--mask", str(tmp_path / "mask.png"), "--mask-blur", "8"]
    assert main(["generate", "x", *common, "--soft-inpainting", "--soft-schedule-bias", "1.5",
                 "--soft-preservation-strength", "0.75", "--soft-mask-influence", "0.25",
                 "--soft-difference-threshold", "1", "--soft-difference-contrast", "2.5", "-o", str(first)]) == 0
    _, _, params = parse_infotext(read_infotext(first))
    assert {k: params.get(k) for k in KEYS} == KEYS
    assert main(["generate", "--from", str(first), *common[:2], *common[6:10], "-o", str(again)]) == 0
    assert read_infotext(again) == read_infotext(first)
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(first)))
    assert main(["generate", "x", *common, "-o", str(plain)]) == 0
    assert not np.array_equal(np.asarray(Image.open(plain)), np.asarray(Image.open(first)))
    assert main(["generate", "x", *common, "--soft-difference-threshold", "1", "-o", str(plain)]) != 0


def test_the_generate_flags_load_without_torch():
    """The --soft-* flags come from the settings table, which does not pull in torch (CLI start-up)."""
    import subprocess
    import sys

    code = "import sys, opensd.cli.generate; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
