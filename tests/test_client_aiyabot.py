"""AIYA (Kilvoctu/aiyabot), a Discord bot for A1111, against opensd, as its core/settings.py and
stablecog.py call it with a requests.Session:

startup: GET /sdapi/v1/cmd-flags (a 401 means --api-auth, a 404 means no --api; then
response['gradio_auth'] decides whether to POST /login with a username first; /login's answer is not
read); the names of /samplers, name/prompt/negative_prompt of /prompt-styles, /face-restorers,
/embeddings' loaded/skipped, /hypernetworks, /upscalers; filename/model_name/title/hash of
/sd-models; GET /config/ (Gradio's) parsed as JSON, its missing components only warned about.
/draw: POST /sdapi/v1/options {sd_model_checkpoint: title}, then /txt2img (or /img2img with
init_images as data URLs) with styles [the channel's style, "None" by default], seed_resize_from_*
-1, denoising_strength None, override_settings {CLIP_stop_at_last_layers}, and with high-res fix
hr_scale 1 and hr_second_pass_steps = steps / 2 (a float, with a fraction for odd steps)."""
from __future__ import annotations

import base64
import io
import json

import pytest
from client_replay import app_client
from PIL import Image

REQUESTS = {"User-Agent": "python-requests/2.31"}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with app_client(tmp_path_factory.mktemp("aiya")) as c:
        yield c


def get(client, path):
    r = client.get(path, headers=REQUESTS)
    assert r.status_code == 200, f"{path}: {r.text}"
    return r.json()


def test_startup(client):
    flags = client.get("/sdapi/v1/cmd-flags", headers=REQUESTS)
    assert flags.status_code not in (401, 404)
    assert not flags.json()["gradio_auth"]  # KeyError here stopped AIYA before it could start
    client.post("/login", headers=REQUESTS)  # answer not read
    assert "Euler a" in [s["name"] for s in get(client, "/sdapi/v1/samplers")]
    styles = {s["name"]: (s["prompt"], s["negative_prompt"]) for s in get(client, "/sdapi/v1/prompt-styles")}
    assert styles == {}
    assert all("name" in f for f in get(client, "/sdapi/v1/face-restorers"))
    embeddings = get(client, "/sdapi/v1/embeddings")
    assert isinstance(embeddings["loaded"], dict) and isinstance(embeddings["skipped"], dict)
    assert all("name" in h for h in get(client, "/sdapi/v1/hypernetworks"))
    assert "Lanczos" in [u["name"] for u in get(client, "/sdapi/v1/upscalers")]
    models = {m["model_name"]: (m["title"], m["filename"], m["hash"]) for m in get(client, "/sdapi/v1/sd-models")}
    assert models["tiny"][1].endswith("tiny.safetensors")  # matched against models.csv by file name
    config = client.get("/config/", headers=REQUESTS).json()  # a page that is not JSON would stop it
    assert "components" not in config


def draw(steps: int, style: str = "None") -> dict:
    return {"prompt": "a castle", "negative_prompt": "", "steps": steps, "width": 64, "height": 64,
            "cfg_scale": "7.0", "sampler_name": "Euler a", "seed": 77, "seed_resize_from_h": -1,
            "seed_resize_from_w": -1, "denoising_strength": None, "n_iter": 1, "batch_size": 1, "styles": [style],
            "override_settings": {"CLIP_stop_at_last_layers": 1}}


def test_draw_with_high_res_fix(client):
    title = next(m["title"] for m in get(client, "/sdapi/v1/sd-models") if m["model_name"] == "tiny")
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": title}, headers=REQUESTS).status_code == 200
    payload = {**draw(3), "enable_hr": True, "hr_upscaler": "Latent", "hr_scale": 1,
               "hr_second_pass_steps": 3 / 2, "denoising_strength": "0.75"}
    r = client.post("/sdapi/v1/txt2img", json=payload, headers=REQUESTS)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["sd_model_name"] == "tiny" and info["seed"] == 77
    assert "Hires steps: 1," in info["infotexts"][0]  # 1.5 taken as A1111 takes it: 1
    assert info["prompt"] == "a castle"  # the "None" style adds nothing
    plain = client.post("/sdapi/v1/txt2img", json={**draw(3), "styles": []}, headers=REQUESTS)
    assert plain.status_code == 200
    assert client.post("/sdapi/v1/txt2img", json=draw(3, "nope"), headers=REQUESTS).status_code == 422


def test_draw_from_an_image(client):
    picture = io.BytesIO()
    Image.new("RGB", (64, 64), (20, 160, 60)).save(picture, "PNG")
    payload = {**draw(2), "init_images": ["data:image/png;base64," + base64.b64encode(picture.getvalue()).decode()],
               "denoising_strength": 0.5}
    r = client.post("/sdapi/v1/img2img", json=payload, headers=REQUESTS)
    assert r.status_code == 200, r.text
    assert Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).size == (64, 64)
