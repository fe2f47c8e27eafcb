"""Foundry VTT's "stable-images" module against opensd. It runs in the browser, on the Foundry page's
origin, so the server needs `--allow-origin` for that page; each call is a cross-site fetch
(scripts/localA1111ApiClient.js): HEAD <server URL> to see the server is up (response.ok); GET
/sdapi/v1/loras, /sd-models, /prompt-styles, /options, /samplers; POST /options {sd_model_checkpoint:
title}; POST /sdapi/v1/txt2img/ (with a trailing slash) {prompt, seed, height, width,
negative_prompt, n_iter, face_restoration, steps, cfg_scale} as application/json; charset=utf-8,
reading `images`; GET /progress while it runs; POST /skip and /interrupt with a JSON type and no
body. A browser reads an answer only when it carries Access-Control-Allow-Origin for the page, and
sends a CORS preflight before each JSON POST."""
from __future__ import annotations

import base64
import io
import json

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from server_live import BASE, models_dir

from opensd.server.app import create_app
from opensd.server.settings import Settings

FOUNDRY = "http://localhost:30000"
BROWSER = {"Origin": FOUNDRY, "Referer": FOUNDRY + "/", "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors",
           "Sec-Fetch-Dest": "empty", "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0"}
JSON = {"Content-Type": "application/json; charset=utf-8"}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("foundry")
    settings = Settings(models_dir=models_dir(root), outputs_dir=root / "out", allow_origins=(FOUNDRY,))
    with TestClient(create_app(settings), base_url=BASE) as c:
        yield c


def readable(r):
    """The browser hands the page this answer (else a CORS error, whatever the status)."""
    assert r.headers.get("access-control-allow-origin") == FOUNDRY, (r.status_code, dict(r.headers))
    return r


def fetch(client, method, path, body=None):
    if method == "POST":  # a JSON POST is preflighted
        pre = client.options(path, headers={**BROWSER, "Access-Control-Request-Method": "POST",
                                            "Access-Control-Request-Headers": "content-type"})
        assert readable(pre).status_code == 200
    headers = {**BROWSER, **(JSON if method == "POST" else {})}
    return readable(client.request(method, path, headers=headers, content=None if body is None else json.dumps(body)))


def test_connect_and_settings(client):
    assert fetch(client, "HEAD", "/").status_code == 200  # initConnexion: was 405, "not accessible"
    for path in ("/sdapi/v1/loras", "/sdapi/v1/sd-models", "/sdapi/v1/prompt-styles", "/sdapi/v1/options",
                 "/sdapi/v1/samplers"):
        assert fetch(client, "GET", path).status_code == 200, path
    title = next(m["title"] for m in fetch(client, "GET", "/sdapi/v1/sd-models").json() if m["model_name"] == "tiny")
    assert fetch(client, "POST", "/sdapi/v1/options", {"sd_model_checkpoint": title}).status_code == 200
    assert fetch(client, "GET", "/sdapi/v1/options").json()["sd_model_checkpoint"] == title


def test_text_to_image(client):
    body = {"prompt": "fantasy map, a dragon, ", "seed": -1, "height": 64, "width": 64,
            "negative_prompt": "blurry", "n_iter": 1, "face_restoration": False, "steps": 2, "cfg_scale": 7}
    r = fetch(client, "POST", "/sdapi/v1/txt2img/", body)  # the redirect to /txt2img is readable too
    assert r.status_code == 200, r.text
    assert Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).size == (64, 64)
    assert fetch(client, "GET", "/sdapi/v1/progress").json()["progress"] == 0
    for path in ("/sdapi/v1/skip", "/sdapi/v1/interrupt"):
        assert fetch(client, "POST", path).status_code == 200, path
