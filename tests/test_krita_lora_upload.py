"""Krita AI Diffusion's LoRA upload (comfyui-tooling-nodes' PUT /api/etn/upload/{folder}/{filename},
server/etn_upload.py): Krita finds the LoRA missing from the server's lists, uploads the file, re-reads
the lists and runs a graph that loads it. A refused or cut-off upload leaves nothing in the folder."""
from __future__ import annotations

import asyncio
import json
import uuid

import pytest
import torch
from client_replay import WS, app_client, until_done
from fastapi.testclient import TestClient
from server_live import BASE, models_dir
from starlette.requests import Request
from test_lora_pipeline import write_random_lora
from workflow_fixtures import default_graph

from opensd.checkpoints.files import save_safetensors
from opensd.server.app import create_app
from opensd.server.etn_upload import receive_model
from opensd.server.settings import Settings

OCTETS = {"Content-Type": "application/octet-stream"}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with app_client(tmp_path_factory.mktemp("upload")) as c:
        yield c


@pytest.fixture(scope="module")
def lora(tmp_path_factory) -> bytes:
    return write_random_lora(tmp_path_factory.mktemp("lora") / "ink.safetensors", seed=4).read_bytes()


def _folder(client):
    return client.app.state.opensd.folders.save_folder("loras")


def _names(client) -> list[str]:
    return sorted(p.name for p in _folder(client).iterdir())


def _server_loras(client) -> list[str]:
    return client.get("/object_info/LoraLoader").json()["LoraLoader"]["input"]["required"]["lora_name"][0]


def _lora_graph(name: str) -> dict:
    g = default_graph(steps=1)
    g["10"] = {"class_type": "LoraLoader", "inputs": {"model": ["4", 0], "clip": ["4", 1], "lora_name": name,
                                                      "strength_model": 1.0, "strength_clip": 1.0}}
    g["3"]["inputs"]["model"] = ["10", 0]
    for node in ("6", "7"):
        g[node]["inputs"]["clip"] = ["10", 1]
    g["4"]["inputs"]["ckpt_name"] = "tiny.safetensors"
    return g


def test_krita_uploads_a_missing_lora_then_runs_a_graph_with_it(client, lora):
    assert "krita-ink.safetensors" not in _server_loras(client)  # Krita's check: not on the server
    r = client.put("/api/etn/upload/loras/krita-ink.safetensors", content=lora, headers=OCTETS)
    assert (r.status_code, r.json()) == (201, {"status": "success"})
    assert (_folder(client) / "krita-ink.safetensors").read_bytes() == lora
    assert "krita-ink.safetensors" in _server_loras(client)  # Krita's refresh finds it
    sid, job = str(uuid.uuid4()), str(uuid.uuid4())
    with client.websocket_connect(f"{WS}?clientId={sid}") as ws:
        r = client.post("/prompt", json={"prompt": _lora_graph("krita-ink.safetensors"), "client_id": sid,
                                         "prompt_id": job})
        assert r.status_code == 200, r.text
        messages = until_done(ws, job)
    assert not [m for m in messages if m["type"] == "execution_error"], json.dumps(messages)[-2000:]
    assert any(m["type"] == "executed" for m in messages)
    # the same file again: "cached", as the tooling nodes answer
    r = client.put("/api/etn/upload/loras/krita-ink.safetensors", content=lora, headers=OCTETS)
    assert (r.status_code, r.json()) == (200, {"status": "cached"})


def test_a_different_file_under_a_taken_name_is_refused_not_replaced(client, lora, tmp_path):
    client.put("/api/etn/upload/loras/taken.safetensors", content=lora, headers=OCTETS)
    other = write_random_lora(tmp_path / "other.safetensors", seed=9).read_bytes()
    for body in (other, other[:len(lora)].ljust(len(lora), b"\0")):  # other size; same size, other bytes
        r = client.put("/api/etn/upload/loras/taken.safetensors", content=body, headers=OCTETS)
        assert r.status_code == 409 and "different file" in r.json()["error"]
    assert (_folder(client) / "taken.safetensors").read_bytes() == lora


@pytest.mark.parametrize("path, words", [
    ("loras/%2E%2E%2Fx.safetensors", "not a name inside"),
    ("loras/%2Fetc%2Fx.safetensors", "not a name inside"),
    ("loras/sub%2Fx.safetensors", "without folders"),
    ("loras/x.ckpt", "must be .safetensors"),
    ("loras/.hidden.safetensors", "not a usable file name"),
    ("checkpoints/x.safetensors", "must be one of loras"),
])
def test_names_outside_the_folder_or_not_safetensors_are_refused(client, lora, path, words):
    before = _names(client)
    r = client.put(f"/api/etn/upload/{path}", content=lora, headers=OCTETS)
    assert r.status_code == 400 and words in r.json()["error"], r.text
    assert _names(client) == before


def test_bodies_that_are_no_safetensors_lora_are_refused_and_leave_nothing(client, tmp_path):
    not_lora = tmp_path / "w.safetensors"
    save_safetensors({"weight": torch.zeros(2, 2)}, not_lora)
    pickle = b"\x80\x04\x95" + b"\0" * 64
    before = _names(client)
    for body, words in ((pickle, "not a safetensors file"), (b"garbage" * 100, "not a safetensors file"),
                        (not_lora.read_bytes(), "not a usable LoRA"), (b"", "empty")):
        r = client.put("/api/etn/upload/loras/bad.safetensors", content=body, headers=OCTETS)
        assert r.status_code == 400 and words in r.json()["error"], r.text
        assert ".tmp" not in r.text  # the temp file's path is no business of the client's
    assert _names(client) == before


def test_uploads_have_their_own_cap_not_the_request_body_cap(client, lora):
    settings = client.app.state.opensd.settings
    body_cap, upload_cap = settings.max_body_bytes, settings.max_upload_bytes
    assert upload_cap == 2 << 30  # the default: 2 GiB
    settings.max_body_bytes = 1000  # far below the LoRA: uploads do not go through it
    try:
        r = client.put("/api/etn/upload/loras/big.safetensors", content=lora, headers=OCTETS)
        assert r.status_code == 201, r.text
        settings.max_upload_bytes = len(lora) - 1
        before = _names(client)
        r = client.put("/api/etn/upload/loras/over.safetensors", content=lora, headers=OCTETS)
        assert r.status_code == 413  # declared Content-Length: refused at the door
        chunked = client.put("/api/etn/upload/loras/over.safetensors", content=iter([lora[:5000], lora[5000:]]),
                             headers=OCTETS)
        assert chunked.status_code == 413 and "limit" in chunked.json()["error"]  # counted while streaming
        assert _names(client) == before
    finally:
        settings.max_body_bytes, settings.max_upload_bytes = body_cap, upload_cap


def test_a_cut_off_upload_leaves_nothing_behind(client, lora):
    state = client.app.state.opensd
    messages = [{"type": "http.request", "body": lora[:4096], "more_body": True},
                {"type": "http.request", "body": lora[4096:8192], "more_body": True},
                {"type": "http.disconnect"}]

    async def receive():
        return messages.pop(0)

    scope = {"type": "http", "method": "PUT", "path": "/api/etn/upload/loras/cut.safetensors", "query_string": b"",
             "headers": [(b"content-length", str(len(lora)).encode())]}
    before = _names(client)
    response = asyncio.run(receive_model(state, "loras", "cut.safetensors", Request(scope, receive)))
    assert response.status_code == 400 and b"cut off" in response.body
    assert _names(client) == before


def test_uploads_need_the_token_when_the_server_has_one(tmp_path, lora):
    settings = Settings(models_dir=models_dir(tmp_path), outputs_dir=tmp_path / "out", api_token="s3cret")
    with TestClient(create_app(settings), base_url=BASE) as c:
        r = c.put("/api/etn/upload/loras/ink.safetensors", content=lora, headers=OCTETS)
        assert r.status_code == 401
        assert not (tmp_path / "models" / "Lora" / "ink.safetensors").exists()
        r = c.put("/api/etn/upload/loras/ink.safetensors", content=lora,
                  headers={**OCTETS, "Authorization": "Bearer s3cret"})
        assert r.status_code == 201
