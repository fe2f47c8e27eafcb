"""The ComfyUI API: the default txt2img graph via POST /prompt, its image in /history and /view,
progress and executed (and binary preview frames) on /ws."""
from __future__ import annotations

import io
import json
import struct

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from server_live import BASE, COMFY_GRAPH

from opensd.server.app import create_app
from opensd.server.settings import Settings

WS = "ws://127.0.0.1:7860/ws"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = Settings(outputs_dir=tmp_path_factory.mktemp("comfy") / "out")
    with TestClient(create_app(settings), base_url=BASE) as c:
        yield c


def run_and_collect(client, prompt, sid="me"):
    messages, previews = [], []
    with client.websocket_connect(f"{WS}?clientId={sid}") as ws:
        first = ws.receive_json()
        assert first["type"] == "status" and first["data"]["sid"] == sid
        r = client.post("/prompt", json={"prompt": prompt, "client_id": sid})
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == {"prompt_id", "number", "node_errors"} and body["node_errors"] == {}
        pid = body["prompt_id"]
        while True:
            m = ws.receive()
            if m.get("bytes"):
                previews.append(m["bytes"])
                continue
            msg = json.loads(m["text"])
            messages.append(msg)
            if msg["type"] == "executing" and msg["data"]["node"] is None and msg["data"]["prompt_id"] == pid:
                return pid, messages, previews


def test_default_graph_runs_and_reports(client):
    pid, messages, previews = run_and_collect(client, COMFY_GRAPH)
    kinds = [m["type"] for m in messages if m["type"] != "status"]
    assert kinds[0] == "execution_start" and kinds[-2:] == ["execution_success", "executing"]
    progress = [m["data"] for m in messages if m["type"] == "progress"]
    assert [p["value"] for p in progress] == [1, 2] and progress[0]["max"] == 2 and progress[0]["node"] == "3"
    assert all(p["prompt_id"] == pid for p in progress)
    executed = [m["data"] for m in messages if m["type"] == "executed"]
    assert executed and executed[0]["node"] == "9"
    image = executed[0]["output"]["images"][0]
    assert image["type"] == "output" and image["filename"].endswith(".png")
    assert previews, "binary preview frames"
    event, kind = struct.unpack(">II", previews[0][:8])
    assert (event, kind) == (1, 1) and Image.open(io.BytesIO(previews[0][8:])).format == "JPEG"

    history = client.get(f"/history/{pid}").json()[pid]
    assert history["status"]["status_str"] == "success" and history["status"]["completed"]
    assert history["outputs"]["9"]["images"][0] == image
    assert history["prompt"][1] == pid and history["prompt"][4] == ["9"]
    assert pid in client.get("/history").json()
    r = client.get("/view", params=image)
    assert r.status_code == 200
    saved = Image.open(io.BytesIO(r.content))
    assert saved.format == "PNG" and saved.width == saved.height > 0  # EmptyLatentImage is /8, as in ComfyUI
    assert client.get("/queue").json() == {"queue_running": [], "queue_pending": []}


def test_upload_then_load_image(client):
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (0, 128, 255)).save(buf, "PNG")
    r = client.post("/upload/image", files={"image": ("blue.png", buf.getvalue(), "image/png")})
    assert r.json() == {"name": "blue.png", "subfolder": "", "type": "input"}
    again = client.post("/upload/image", files={"image": ("blue.png", buf.getvalue(), "image/png")})
    assert again.json()["name"] == "blue (1).png"
    assert client.get("/view", params={"filename": "blue.png", "type": "input"}).status_code == 200
    info = client.get("/object_info/LoadImage").json()
    if info:  # the node exists in this checkout's workflows package
        assert "blue.png" in info["LoadImage"]["input"]["required"]["image"][0]


def test_object_info_and_system_stats(client):
    info = client.get("/object_info").json()
    assert info["KSampler"]["input"]["required"]["steps"][0] == "INT"
    assert "opensd-emoji.safetensors" in info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
    stats = client.get("/system_stats").json()
    assert stats["system"]["python_version"] and stats["devices"][0]["name"]
    assert client.get("/prompt").json() == {"exec_info": {"queue_remaining": 0}}
    assert client.get("/api/prompt").json() == {"exec_info": {"queue_remaining": 0}}  # newer clients' prefix


def test_interrupt_a_running_graph(client):
    import threading
    import time

    slow = {k: {"class_type": v["class_type"], "inputs": dict(v["inputs"])} for k, v in COMFY_GRAPH.items()}
    slow["3"]["inputs"]["steps"] = 400
    out = {}
    th = threading.Thread(target=lambda: out.update(r=run_and_collect(client, slow, "slow")))
    th.start()
    deadline = time.time() + 60
    while time.time() < deadline and client.app.state.opensd.queue.progress.step < 2:
        time.sleep(0.05)
    assert client.post("/interrupt").status_code == 200
    th.join(60)
    pid, messages, _ = out["r"]
    assert "execution_interrupted" in [m["type"] for m in messages]
    assert client.get(f"/history/{pid}").json()[pid]["status"]["status_str"] == "error"
