"""SaveImageWebsocket through the ComfyUI server: the images arrive on the queuing client's /ws as
binary PNG frames (event 1, image type 2) at full size, after the step previews, and no file is
written."""
from __future__ import annotations

import copy
import io
import struct

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from server_live import BASE, COMFY_GRAPH
from test_server_comfy import run_and_collect

from opensd.server.app import create_app
from opensd.server.settings import Settings


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = Settings(outputs_dir=tmp_path_factory.mktemp("comfy") / "out")
    with TestClient(create_app(settings), base_url=BASE) as c:
        yield c, settings


def test_save_image_websocket_sends_png_frames(client):
    c, settings = client
    graph = copy.deepcopy(COMFY_GRAPH)
    graph["5"]["inputs"].update(width=64, height=48, batch_size=2)
    graph["9"] = {"class_type": "SaveImageWebsocket", "inputs": {"images": ["8", 0]}}
    pid, messages, frames = run_and_collect(c, graph)
    pngs = [f[8:] for f in frames if struct.unpack(">II", f[:8]) == (1, 2)]
    assert len(pngs) == 2
    images = [Image.open(io.BytesIO(b)) for b in pngs]
    assert all(im.format == "PNG" and im.size == (64, 48) for im in images)
    assert not np.array_equal(np.asarray(images[0]), np.asarray(images[1]))  # two seeds' worth of noise
    progress = [m["data"] for m in messages if m["type"] == "progress" and m["data"]["node"] == "9"]
    assert [p["value"] for p in progress] == [0, 1] and progress[0]["max"] == 2
    assert not any(settings.outputs_dir.rglob("*.png"))
    # ComfyUI's order: execution_success, the queue status (result stored), then "executing" None
    assert [m["type"] for m in messages][-3:] == ["execution_success", "status", "executing"]
