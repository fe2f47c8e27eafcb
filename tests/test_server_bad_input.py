"""Bad input answers 4xx with a message naming the problem, and the server keeps serving."""
from __future__ import annotations

import base64
import io
import struct
import zlib

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from server_live import BASE, COMFY_GRAPH, models_dir

from opensd.server.app import create_app
from opensd.server.settings import Settings


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png(size=(64, 64)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(buf, "PNG")
    return b64(buf.getvalue())


def bomb_png(w=20000, h=20000) -> str:
    """A tiny file whose header claims w x h pixels (the data is not even there)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b64(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
               + chunk(b"IEND", b""))


def graph(changes):
    g = {k: {"class_type": v["class_type"], "inputs": dict(v["inputs"])} for k, v in COMFY_GRAPH.items()}
    for (node, name), value in changes.items():
        g[node]["inputs"][name] = value
    return g


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    settings = Settings(models_dir=models_dir(root), outputs_dir=root / "out", max_body_bytes=1 << 20)
    with TestClient(create_app(settings), base_url=BASE) as c:
        yield c


T2I = "/sdapi/v1/txt2img"
I2I = "/sdapi/v1/img2img"
OK = {"prompt": "x", "steps": 1, "width": 64, "height": 64}
RAW = {"content-type": "application/json"}

CASES = [  # (id, method, path, request kwargs, expected status, text the message must contain)
    ("negative steps", "post", T2I, {"json": {**OK, "steps": -1}}, 422, "steps"),
    ("too many steps", "post", T2I, {"json": {**OK, "steps": 100000}}, 422, "steps"),
    ("huge width", "post", T2I, {"json": {**OK, "width": 100000}}, 422, "width"),
    ("NaN cfg", "post", T2I, {"content": b'{"prompt": "x", "cfg_scale": NaN}', "headers": RAW}, 422, "cfg_scale"),
    ("inf cfg", "post", T2I, {"content": b'{"prompt": "x", "cfg_scale": Infinity}', "headers": RAW}, 422, "cfg_scale"),
    ("unknown sampler", "post", T2I, {"json": {**OK, "sampler_name": "Nope 3000"}}, 422, "sampler"),
    ("unknown scheduler", "post", T2I, {"json": {**OK, "scheduler": "wobbly"}}, 422, "scheduler"),
    ("too-long prompt", "post", T2I, {"json": {**OK, "prompt": "a" * 20001}}, 422, "prompt"),
    ("wrong type steps", "post", T2I, {"json": {**OK, "steps": "many"}}, 422, "steps"),
    ("wrong type width", "post", T2I, {"json": {**OK, "width": [64]}}, 422, "width"),
    ("zero batch", "post", T2I, {"json": {**OK, "batch_size": 0}}, 422, "batch_size"),
    ("seed too big", "post", T2I, {"json": {**OK, "seed": 2**40}}, 422, "seed"),
    ("hr scale", "post", T2I, {"json": {**OK, "enable_hr": True, "hr_scale": 100}}, 422, "hr_scale"),
    ("unknown model", "post", T2I, {"json": {**OK, "override_settings": {"sd_model_checkpoint": "nope"}}},
     422, "nope"),
    ("model path traversal", "post", T2I,
     {"json": {**OK, "override_settings": {"sd_model_checkpoint": "../../../etc/passwd"}}}, 422, "checkpoints"),
    ("options traversal", "post", "/sdapi/v1/options", {"json": {"sd_model_checkpoint": "/etc/passwd"}},
     422, "checkpoints"),
    ("clip skip", "post", T2I, {"json": {**OK, "override_settings": {"CLIP_stop_at_last_layers": 99}}},
     422, "CLIP_stop_at_last_layers"),
    ("lora traversal", "post", T2I, {"json": {**OK, "prompt": "x <lora:../../etc/passwd:1>"}}, 422, "lora"),
    ("unknown lora", "post", T2I, {"json": {**OK, "prompt": "x <lora:nothere:0.5>"}}, 422, "nothere"),
    ("invalid json", "post", T2I, {"content": b'{"prompt": ', "headers": RAW}, 422, "json"),
    ("body not an object", "post", T2I, {"json": [1, 2]}, 422, "body"),
    ("no init image", "post", I2I, {"json": {**OK, "init_images": []}}, 422, "init_images"),
    ("invalid base64", "post", I2I, {"json": {**OK, "init_images": ["!!not base64!!"]}}, 422, "init_images"),
    ("not an image", "post", I2I, {"json": {**OK, "init_images": [b64(b"hello world")]}}, 422, "init_images"),
    ("20000x20000 png", "post", I2I, {"json": {**OK, "init_images": [bomb_png()]}}, 422, "too large"),
    ("5000x5000 png (our cap)", "post", I2I, {"json": {**OK, "init_images": [bomb_png(5000, 5000)]}},
     422, "5000x5000"),
    ("bad mask", "post", I2I, {"json": {**OK, "init_images": [png()], "mask": "%%%"}}, 422, "mask"),
    ("inpainting_fill", "post", I2I, {"json": {**OK, "init_images": [png()], "inpainting_fill": 7}},
     422, "inpainting_fill"),
    ("denoising", "post", I2I, {"json": {**OK, "init_images": [png()], "denoising_strength": 2}},
     422, "denoising_strength"),
    ("png-info base64", "post", "/sdapi/v1/png-info", {"json": {"image": "@@@"}}, 422, "image"),
    ("png-info bomb", "post", "/sdapi/v1/png-info", {"json": {"image": bomb_png()}}, 422, "image"),
    ("body too large", "post", T2I, {"content": b"{" + b" " * (2 << 20) + b"}", "headers": RAW}, 413, "body"),
    ("chunked body too large", "post", T2I,
     {"content": (b" " * (64 << 10) for _ in range(40)), "headers": RAW}, 413, "body"),
    ("bad origin", "post", T2I, {"json": OK, "headers": {"Origin": "https://evil.example"}}, 403, "Origin"),
    ("rebinding host", "get", "/sdapi/v1/options", {"headers": {"Host": "evil.example:7860"}}, 403, "Host"),
    ("view traversal", "get", "/view", {"params": {"filename": "../opensd-jobs.sqlite3"}}, 422, "filename"),
    ("view subfolder traversal", "get", "/view", {"params": {"filename": "passwd", "subfolder": "../../etc"}},
     422, "subfolder"),
    ("view absolute", "get", "/view", {"params": {"filename": "x.png", "subfolder": "/etc"}}, 422, "subfolder"),
    ("view type", "get", "/view", {"params": {"filename": "x.png", "type": "secret"}}, 422, "type"),
    ("view missing", "get", "/view", {"params": {"filename": "nothere.png"}}, 404, "filename"),
    ("comfy no prompt", "post", "/prompt", {"json": {"client_id": "x"}}, 400, "prompt"),
    ("comfy ckpt traversal", "post", "/prompt", {"json": {"prompt": graph({("4", "ckpt_name"): "../../x"})}},
     400, "ckpt_name"),
    ("comfy unknown node", "post", "/prompt",
     {"json": {"prompt": {"1": {"class_type": "RunShell", "inputs": {}}}}}, 400, "RunShell"),
    ("comfy NaN cfg", "post", "/prompt",
     {"content": b'{"prompt": {"1": {"class_type": "KSampler", "inputs": {"cfg": NaN}}}}', "headers": RAW},
     400, "error"),
    ("upload not image", "post", "/upload/image", {"files": {"image": ("a.png", b"not a png", "image/png")}},
     422, "image"),
    ("upload traversal", "post", "/upload/image",
     {"files": {"image": ("a.png", base64.b64decode(png()), "image/png")}, "data": {"subfolder": "../.."}},
     422, "subfolder"),
    ("unknown job", "get", "/opensd/v1/jobs/nope", {}, 404, "job_id"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_a_message(client, case):
    _, method, path, kwargs, status, needle = case
    r = getattr(client, method)(path, **kwargs) if method == "get" else client.request("POST", path, **kwargs)
    assert r.status_code == status, r.text
    assert needle.lower() in r.text.lower(), r.text
    assert client.get("/internal/ping").json()["status"] == "ok"


def test_still_generates_after_the_bad_inputs(client):
    assert len(CASES) >= 20
    r = client.post(T2I, json={**OK, "steps": 2, "foo": {"bar": 1}})
    assert r.status_code == 200 and len(r.json()["images"]) == 1
    assert "foo" in r.json()["info"]


@pytest.fixture(scope="module")
def token_client(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    settings = Settings(host="0.0.0.0", api_token="s3cret", outputs_dir=root / "out", start_worker=False)
    with TestClient(create_app(settings), base_url="http://192.168.1.5:7860") as c:
        yield c


def basic(user_pass: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(user_pass.encode()).decode()}


@pytest.mark.parametrize("headers,status", [
    ({}, 401), ({"Authorization": "Bearer wrong"}, 401), ({"Authorization": "Bearer s3cret"}, 200),
    (basic("me:s3cret"), 200), (basic("me:nope"), 401), ({"Authorization": "Basic %%%"}, 401),
])
def test_token_required_when_configured(token_client, headers, status):
    r = token_client.get("/sdapi/v1/samplers", headers=headers)
    assert r.status_code == status, r.text
    if status == 401:
        assert "token" in r.json()["detail"]
    assert token_client.get("/internal/ping").status_code == 200  # health stays open


def test_websocket_needs_the_token_too(token_client):
    from starlette.websockets import WebSocketDisconnect

    with pytest.raises(WebSocketDisconnect), \
            token_client.websocket_connect("ws://192.168.1.5:7860/ws?clientId=a") as ws:
        ws.receive_json()
    with token_client.websocket_connect("ws://192.168.1.5:7860/ws?clientId=a&token=s3cret") as ws:
        assert ws.receive_json()["type"] == "status"


def test_same_origin_and_ip_literal_hosts_are_fine(client):
    assert client.get("/sdapi/v1/samplers", headers={"Origin": BASE}).status_code == 200
    assert client.get("/sdapi/v1/samplers", headers={"Host": "10.1.2.3:7860"}).status_code == 200
    assert client.get("/sdapi/v1/samplers", headers={"Host": "localhost:7860"}).status_code == 200


def test_allowed_origin_gets_cors_and_preflight_without_token(tmp_path):
    settings = Settings(outputs_dir=tmp_path, api_token="t", allow_origins=("http://ui.local:3000",),
                        start_worker=False)
    with TestClient(create_app(settings), base_url=BASE) as c:
        pre = c.options("/sdapi/v1/txt2img", headers={"Origin": "http://ui.local:3000",
                                                      "Access-Control-Request-Method": "POST"})
        assert pre.status_code == 200
        assert pre.headers["access-control-allow-origin"] == "http://ui.local:3000"
        r = c.get("/sdapi/v1/samplers", headers={"Origin": "http://ui.local:3000", "Authorization": "Bearer t"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://ui.local:3000"
        assert c.get("/sdapi/v1/samplers", headers={"Origin": "http://ui.local:3000"}).status_code == 401
        assert c.get("/sdapi/v1/samplers", headers={"Origin": "http://other:3000",
                                                    "Authorization": "Bearer t"}).status_code == 403
