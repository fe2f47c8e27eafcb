"""Helpers for the tests that replay real clients' request sequences (Open WebUI, SillyTavern, ComfyUI's
script examples, comfy_api_simplified) against the app, as those clients send them."""
from __future__ import annotations

import json
import time
from contextlib import contextmanager

from fastapi.testclient import TestClient
from server_live import BASE, models_dir

from opensd.library.synthetic import write_random_checkpoint
from opensd.server.app import create_app
from opensd.server.settings import Settings

WS = "ws://127.0.0.1:7860/ws"


def app_client(root) -> TestClient:
    """An app over a models folder with two checkpoints (the built-in one and tiny) and one VAE file."""
    models = models_dir(root)
    (models / "VAE").mkdir(exist_ok=True)
    write_random_checkpoint(models / "VAE" / "other.safetensors", seed=3)  # its VAE part serves as a VAE file
    return TestClient(create_app(Settings(models_dir=models, outputs_dir=root / "out")), base_url=BASE)


@contextmanager
def slow_records(client: TestClient, delay: float = 0.5):
    """Storing a finished graph's result takes `delay` seconds longer: a server that told a client its
    prompt was done before /history held it is then caught, whatever the machine's speed."""
    store = client.app.state.opensd.store
    finish = store.finish

    def slow(job, *args, **kwargs):
        if job.kind == "comfy":
            time.sleep(delay)
        return finish(job, *args, **kwargs)

    store.finish = slow
    try:
        yield
    finally:
        store.finish = finish


def until_done(ws, prompt_id: str) -> list[dict]:
    """The JSON messages up to the one that closes `prompt_id` ("executing" with node None), skipping
    binary previews, as ComfyUI's websocket clients read them."""
    messages = []
    while True:
        m = ws.receive()
        if not m.get("text"):
            continue
        messages.append(json.loads(m["text"]))
        data = messages[-1]["data"]
        if messages[-1]["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
            return messages
