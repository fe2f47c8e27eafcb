"""Small ComfyUI API clients against opensd, as they call it:

- ComfyUI's own script_examples/websockets_api_example.py: websocket first (?clientId=), POST /prompt
  {prompt, client_id, prompt_id: a uuid4 it makes itself} through urllib (which labels the body
  application/x-www-form-urlencoded; the answer is not read), read messages until "executing" with
  node None for that prompt_id, then at once GET /history/{prompt_id} and every output's images
  through GET /view?filename&subfolder&type.
- and its websockets_api_example_ws_images.py: the graph's SaveImageWebsocket node has the id
  "save_image_websocket_node"; every binary frame that comes while the last "executing" named that
  node is one of its images (the first 8 bytes cut off), until "executing" None.
- comfy_api_simplified (ComfyApiWrapper): POST /prompt with requests' data= (no Content-Type), only
  then the websocket; done on a "status" whose exec_info.queue_remaining is 0 or on "executing" None;
  then /history/{prompt_id}[prompt_id]["outputs"][node]["images"] and /view. Its upload_image POSTs
  /upload/image with a `subfolder` ("default_upload_folder" by default); the workflow then names the
  image "subfolder/name", as ComfyUI's LoadImage takes it.
- @saintno/comfyui-sdk (comfy-addons/comfyui-sdk) under Node's own fetch (undici): fetchApi replaces
  the headers it is given, so POST /prompt {client_id, prompt} goes out as text/plain, with the
  `Sec-Fetch-Mode: cors` undici adds and no Origin; GET /prompt polls exec_info; the websocket's
  "executing" (prompt_id) and "executed" (node, output) events give the outputs; on a "status" it
  looks for the job in GET /queue and, once gone, reads GET /history/{prompt_id} (status.completed)."""
from __future__ import annotations

import copy
import io
import json
import uuid
from urllib.parse import urlencode

import pytest
from client_replay import WS, app_client, slow_records, until_done
from PIL import Image
from server_live import COMFY_GRAPH

URLLIB = {"User-Agent": "Python-urllib/3.11", "Content-Type": "application/x-www-form-urlencoded"}
REQUESTS = {"User-Agent": "python-requests/2.32"}
UNDICI = {"User-Agent": "node", "Accept": "*/*", "Accept-Language": "*", "Sec-Fetch-Mode": "cors"}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with app_client(tmp_path_factory.mktemp("scripts")) as c:
        yield c


def graph(seed: int) -> dict:
    g = copy.deepcopy(COMFY_GRAPH)
    g["3"]["inputs"]["seed"] = seed
    g["4"]["inputs"]["ckpt_name"] = "tiny.safetensors"
    return g


def images_of(client, history: dict) -> list[Image.Image]:
    found = []
    for output in history["outputs"].values():
        for image in output.get("images", []):
            query = urlencode({"filename": image["filename"], "subfolder": image["subfolder"], "type": image["type"]})
            r = client.get(f"/view?{query}")
            assert r.status_code == 200, r.text
            found.append(Image.open(io.BytesIO(r.content)))
    return found


def test_websockets_api_example(client):
    origin = {"Origin": "http://127.0.0.1:7860"}  # websocket-client sends its own http://host:port
    with slow_records(client), client.websocket_connect(f"{WS}?clientId=example", headers=origin) as ws:
        prompt_id = str(uuid.uuid4())
        data = json.dumps({"prompt": graph(5), "client_id": "example", "prompt_id": prompt_id}).encode("utf-8")
        assert client.post("/prompt", content=data, headers=URLLIB).status_code == 200
        until_done(ws, prompt_id)
        history = client.get(f"/history/{prompt_id}", headers=URLLIB).json()[prompt_id]
    assert [im.size for im in images_of(client, history)] == [(64, 64)]


def test_websockets_api_example_ws_images(client):
    prompt = graph(9)
    prompt["5"]["inputs"]["batch_size"] = 2
    del prompt["9"]
    prompt["save_image_websocket_node"] = {"class_type": "SaveImageWebsocket", "inputs": {"images": ["8", 0]}}
    output_images, current_node = {}, ""
    with client.websocket_connect(f"{WS}?clientId=ws-images") as ws:
        data = json.dumps({"prompt": prompt, "client_id": "ws-images"}).encode("utf-8")
        r = client.post("/prompt", content=data, headers=URLLIB)
        assert r.status_code == 200, r.text
        prompt_id = r.json()["prompt_id"]
        while True:
            out = ws.receive()
            if out.get("text"):
                message = json.loads(out["text"])
                if message["type"] == "executing" and message["data"]["prompt_id"] == prompt_id:
                    if message["data"]["node"] is None:
                        break
                    current_node = message["data"]["node"]
            elif current_node == "save_image_websocket_node":
                output_images.setdefault(current_node, []).append(out["bytes"][8:])
    images = [Image.open(io.BytesIO(b)) for b in output_images["save_image_websocket_node"]]
    assert [(im.format, im.size) for im in images] == [("PNG", (64, 64))] * 2  # no step preview among them


def queue_prompt_and_wait(client, prompt: dict) -> str:
    client_id = "simplified"
    r = client.post("/prompt", content=json.dumps({"prompt": prompt, "client_id": client_id}).encode(),
                    headers=REQUESTS)
    assert r.status_code == 200, r.text
    prompt_id = r.json()["prompt_id"]
    with client.websocket_connect(f"{WS}?clientId={client_id}") as ws:  # connected after queueing
        while True:
            message = ws.receive()
            if not message.get("text"):
                continue
            message = json.loads(message["text"])
            data = message["data"]
            assert message["type"] != "execution_error", data
            if message["type"] == "status" and data["status"]["exec_info"]["queue_remaining"] == 0:
                return prompt_id
            if message["type"] == "executing" and data["node"] is None and data["prompt_id"] == prompt_id:
                return prompt_id


def test_comfy_api_simplified(client):
    picture = io.BytesIO()
    Image.new("RGB", (64, 64), (30, 90, 200)).save(picture, "PNG")
    r = client.post("/upload/image", files={"image": ("input.png", picture.getvalue())},
                    data={"subfolder": "default_upload_folder"}, headers=REQUESTS)
    assert r.status_code == 200 and r.json()["subfolder"] == "default_upload_folder", r.text
    prompt = graph(6)
    prompt["10"] = {"class_type": "LoadImage", "inputs": {"image": "default_upload_folder/" + r.json()["name"]}}
    prompt["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    prompt["3"]["inputs"].update(latent_image=["11", 0], denoise=0.5)
    with slow_records(client):
        prompt_id = queue_prompt_and_wait(client, prompt)
        history = client.get(f"/history/{prompt_id}", headers=REQUESTS).json()
    images = history[prompt_id]["outputs"]["9"]["images"]  # queue_and_wait_images: the output node's
    assert len(images) == 1 and [im.size for im in images_of(client, history[prompt_id])] == [(64, 64)]


def test_comfyui_sdk_on_node_fetch(client):
    r = client.get("/prompt", headers=UNDICI)  # pollStatus
    assert r.status_code == 200 and "queue_remaining" in r.json()["exec_info"]
    with client.websocket_connect(f"{WS}?clientId=sdk") as ws:
        body = json.dumps({"client_id": "sdk", "prompt": graph(8)})
        r = client.post("/prompt", content=body, headers={**UNDICI, "Content-Type": "text/plain;charset=UTF-8"})
        assert r.status_code == 200, r.text  # was 415: taken for a browser's form post
        prompt_id = r.json()["prompt_id"]
        messages = until_done(ws, prompt_id)
    assert any(m["type"] == "executing" and m["data"]["prompt_id"] == prompt_id for m in messages)
    executed = {m["data"]["node"]: m["data"]["output"] for m in messages if m["type"] == "executed"}
    queue = client.get("/queue", headers=UNDICI).json()
    assert prompt_id not in [item[1] for item in queue["queue_pending"] + queue["queue_running"]]
    entry = client.get(f"/history/{prompt_id}", headers=UNDICI).json()[prompt_id]
    assert entry["status"]["completed"] and entry["outputs"] == executed
    assert [im.size for im in images_of(client, entry)] == [(64, 64)]
