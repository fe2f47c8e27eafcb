"""Reference images over HTTP (opensd's `reference_images` in the A1111 request bodies): a tiny
FLUX.2 [klein] in a models folder edits with them through the web UI's queued route; the image
equals the pipeline's txt2img with the same references and differs from one without; the checkpoint
list says which models take them; too many, a model that takes none and an unreadable image are
refused before queueing, each in one line."""
from __future__ import annotations

import base64
import io
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from server_live import BASE

from flux2_fixtures import klein_models
from opensd.server.a1111_references import MAX_REFERENCES
from opensd.server.app import create_app
from opensd.server.settings import Settings
from opensd.server.store import DONE, FINAL

KLEIN, SD = "flux-2-klein-4b.safetensors", "tiny.safetensors"


def picture(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("refs")
    models, pipe = klein_models(root, sd=SD)
    with TestClient(create_app(Settings(models_dir=models, outputs_dir=root / "out")), base_url=BASE) as c:
        yield c, pipe


def body(model: str, refs: list[Image.Image], **extra) -> dict:
    return {"prompt": "make it blue", "steps": 3, "seed": 11, "width": 32, "height": 32, "cfg_scale": 1.0,
            "send_images": False, "override_settings": {"sd_model_checkpoint": model},
            "reference_images": [data_url(r) for r in refs], **extra}


def run(c, route: str, req: dict):
    queued = c.post(route, json=req)
    assert queued.status_code == 202, queued.text
    job_id = queued.json()["job_id"]
    deadline = time.time() + 300
    while (job := c.get(f"/opensd/v1/jobs/{job_id}").json())["status"] not in FINAL:
        assert time.time() < deadline, "the job did not finish"
        time.sleep(0.1)
    assert job["status"] == DONE, job.get("error")
    image = Image.open(io.BytesIO(c.get(f"/opensd/v1/jobs/{job_id}/images/0").content))
    return job, np.asarray(image.convert("RGB")).astype(int)


def test_the_checkpoint_list_says_which_models_take_references(served):
    c, _ = served
    items = {m["name"]: m for m in c.get("/opensd/v1/checkpoints").json()["items"]}
    assert items[KLEIN]["references"] is True and items[KLEIN]["family"] == "flux2"
    assert items[SD]["references"] is False


def test_references_reach_the_pipeline_in_order(served):
    c, pipe = served
    refs = [picture(40, 48, 1), picture(36, 36, 2)]
    job, got = run(c, "/opensd/v1/txt2img", body(KLEIN, refs))
    (want,) = pipe.txt2img("make it blue", "", references=refs, seed=11, steps=3, width=32, height=32, cfg=1.0,
                           sampler="euler")
    assert np.abs(got - np.asarray(want).astype(int)).max() <= 1
    info = job["result"]["info"]
    assert "Reference images: 2" in info["infotexts"][0]
    assert "base64" not in info["infotexts"][0]
    _, plain = run(c, "/opensd/v1/txt2img", body(KLEIN, []))
    assert np.abs(plain - got).max() > 8  # the references change the image
    png = c.get(f"/opensd/v1/jobs/{job['id']}/images/0").content  # reused, it says what to add again
    reused = c.post("/opensd/v1/image-info", json={"image": base64.b64encode(png).decode()}).json()
    assert "reference_images" not in reused["request"]
    assert ("Reference images: it was made with 2, which the image does not hold; add them again"
            in reused["notes"])
    _, swapped = run(c, "/opensd/v1/txt2img", body(KLEIN, refs[::-1]))
    assert np.abs(swapped - got).max() > 0  # each reference has its own place: the order counts


def test_img2img_takes_them_too(served):
    c, pipe = served
    init, ref = picture(32, 32, 5), picture(40, 40, 6)
    job, got = run(c, "/opensd/v1/img2img", body(KLEIN, [ref], init_images=[data_url(init)], denoising_strength=0.8))
    _, plain = run(c, "/opensd/v1/img2img", body(KLEIN, [], init_images=[data_url(init)], denoising_strength=0.8))
    assert np.abs(plain - got).max() > 8
    assert "Reference images: 1" in job["result"]["info"]["infotexts"][0]


def test_bad_references_are_refused_before_queueing(served):
    c, _ = served
    ref = picture(16, 16, 3)
    too_many = c.post("/opensd/v1/txt2img", json=body(KLEIN, [ref] * (MAX_REFERENCES + 1)))
    assert too_many.status_code == 422
    assert too_many.json()["detail"] == f"reference_images: {MAX_REFERENCES + 1} images; at most {MAX_REFERENCES} are taken"
    sd = c.post("/sdapi/v1/txt2img", json=body(SD, [ref]))
    assert sd.status_code == 422
    assert sd.json()["detail"] == (f"reference_images: {SD} takes no reference images; only "
                                   "FLUX.2, Qwen-Image (Edit), Flux.1 (Kontext) models do")
    broken = body(KLEIN, [ref])
    broken["reference_images"].append("data:image/png;base64,bm90IGFuIGltYWdl")
    bad = c.post("/opensd/v1/txt2img", json=broken)
    assert bad.status_code == 422 and bad.json()["detail"].startswith("reference_images[1]: ")
    assert not c.get("/opensd/v1/queue").json()["pending"]


def test_a1111_route_answers_without_echoing_them(served):
    c, _ = served
    answer = c.post("/sdapi/v1/txt2img", json=body(KLEIN, [picture(32, 32, 4)], send_images=True))
    assert answer.status_code == 200, answer.text
    assert answer.json()["parameters"]["reference_images"] is None and len(answer.json()["images"]) == 1


def test_a_reference_too_thin_once_fitted_is_refused(served):
    """Hostile input: klein scales a reference past 1 MP down, then crops to whole steps; 400000x4
    became 323816x0 and the VAE failed on the empty image (a 500 naming a RuntimeError)."""
    c, _ = served
    answer = c.post("/sdapi/v1/txt2img", json=body(KLEIN, [Image.new("RGB", (400000, 4))]))
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"] == "reference-image: 400000x4 is too narrow for the model (fitted to 323816x0)"
    assert c.post("/sdapi/v1/txt2img", json=body(KLEIN, [picture(32, 32, 4)])).status_code == 200
