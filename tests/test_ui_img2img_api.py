"""The web UI's queued img2img/inpaint route (/opensd/v1/img2img) without a browser: the same A1111
request model and runner as /sdapi/v1/img2img, answered at once with a job id."""
from __future__ import annotations

import base64
import io
import time

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw
from server_live import BASE

from opensd.server.app import create_app
from opensd.server.settings import Settings
from opensd.server.store import DONE, FINAL


def data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def source() -> Image.Image:
    im = Image.new("RGB", (64, 64), (230, 220, 40))
    ImageDraw.Draw(im).ellipse((8, 8, 56, 56), fill=(200, 40, 60))
    return im


def test_queued_inpaint_keeps_pixels_outside_the_mask_and_refuses_bad_input_first(tmp_path):
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((24, 24, 40, 40), fill=255)
    body = {"prompt": "red heart", "steps": 4, "seed": 3, "width": 64, "height": 64, "denoising_strength": 0.9,
            "init_images": [data_url(source())], "mask": data_url(mask), "mask_blur": 2, "inpainting_fill": 1,
            "inpaint_full_res": False}
    with TestClient(create_app(Settings(outputs_dir=tmp_path / "out")), base_url=BASE) as c:
        bad = c.post("/opensd/v1/img2img", json={**body, "init_images": []})
        assert bad.status_code == 422 and "init_images" in bad.json()["detail"]
        queued = c.post("/opensd/v1/img2img", json=body)
        assert queued.status_code == 202
        job_id = queued.json()["job_id"]
        deadline = time.time() + 120
        while (job := c.get(f"/opensd/v1/jobs/{job_id}").json())["status"] not in FINAL:
            assert time.time() < deadline, "the img2img job did not finish"
            time.sleep(0.1)
        assert job["status"] == DONE
        out = np.asarray(Image.open(io.BytesIO(c.get(f"/opensd/v1/jobs/{job_id}/images/0").content)).convert("RGB"))
    src = np.asarray(source()).astype(int)
    far = np.ones((64, 64), bool)
    far[16:49, 16:49] = False  # the mask plus its blur
    assert np.array_equal(out[far], src[far])
    assert np.abs(out[~far].astype(int) - src[~far]).max() > 0
    assert "Mask blur: 2" in job["result"]["info"]["infotexts"][0]
