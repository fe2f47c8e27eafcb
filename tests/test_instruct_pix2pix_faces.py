"""InstructPix2Pix's image CFG scale through the faces: the A1111 API's image_cfg_scale (acts on
edit models, written as 'Image CFG scale', None: plain CFG and no key, as A1111's API; other
models ignore it) and the CLI's --image-cfg-scale (default 1.5 on edit models)."""
import base64
import io
import json
from dataclasses import replace

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from server_live import BASE, models_dir

from opensd.cli import main
from opensd.library.synthetic import TINY, write_random_checkpoint
from opensd.pipeline.infotext import parse_infotext, read_infotext
from opensd.server.app import create_app
from opensd.server.settings import Settings

EDIT = replace(TINY, unet=replace(TINY.unet, in_channels=8))


def _png(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("ip2p_api")
    models = models_dir(root)
    write_random_checkpoint(models / "Stable-diffusion" / "tiny-edit.safetensors", EDIT)
    with TestClient(create_app(Settings(models_dir=models, outputs_dir=root / "out")), base_url=BASE) as c:
        yield c


def _img2img(client, model, **body):
    req = {"prompt": "make it blue", "negative_prompt": "fog", "steps": 3, "seed": 3, "width": 64, "height": 64,
           "sampler_name": "Euler", "denoising_strength": 1.0,
           "init_images": [_png(Image.new("RGB", (64, 64), (200, 40, 40)))],
           "override_settings": {"sd_model_checkpoint": model}, **body}
    r = client.post("/sdapi/v1/img2img", json=req)
    assert r.status_code == 200, r.text
    pixels = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).tobytes()
    return pixels, json.loads(r.json()["info"])


def test_a1111_image_cfg_scale_acts_on_edit_models_and_is_written(client):
    guided, info = _img2img(client, "tiny-edit", image_cfg_scale=2.5)
    assert "Image CFG scale: 2.5" in info["infotexts"][0] and info["unsupported_fields"] == []
    plain, info = _img2img(client, "tiny-edit")  # None: plain CFG, no key (A1111's API)
    assert "Image CFG scale" not in info["infotexts"][0]
    assert plain == _img2img(client, "tiny-edit", image_cfg_scale=1.0)[0] and plain != guided


def test_a1111_image_cfg_scale_is_ignored_by_other_models(client):
    image, info = _img2img(client, "tiny", image_cfg_scale=2.5)
    assert "Image CFG scale" not in info["infotexts"][0] and image == _img2img(client, "tiny")[0]


def test_cli_image_cfg_scale(tmp_path):
    ckpt = write_random_checkpoint(tmp_path / "edit.safetensors", EDIT)
    Image.new("RGB", (64, 64), (200, 40, 40)).save(tmp_path / "in.png")
    fast = ["-m", str(ckpt), "--steps", "2", "--seed", "3", "--init-image", str(tmp_path / "in.png")]
    assert main(["generate", "make it blue", *fast, "--image-cfg-scale", "2", "-o", str(tmp_path / "a.png")]) == 0
    assert parse_infotext(read_infotext(tmp_path / "a.png"))[2]["Image CFG scale"] == "2"
    assert main(["generate", "make it blue", *fast, "-o", str(tmp_path / "b.png")]) == 0
    assert parse_infotext(read_infotext(tmp_path / "b.png"))[2]["Image CFG scale"] == "1.5"
