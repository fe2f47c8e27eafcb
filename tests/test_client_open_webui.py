"""Open WebUI's image generation against opensd, request by request as its backend sends them
(backend/open_webui/routers/images.py and utils/images/comfyui.py):

A1111 engine: GET /sdapi/v1/options to verify the URL (with an empty `authorization` header when no
credentials are set); GET /sdapi/v1/sd-models for the model list ({"id": title, "name": model_name});
choosing a model GETs the options and, when `sd_model_checkpoint` differs, POSTs the whole dict back
with the new title; POST /sdapi/v1/txt2img {prompt, batch_size, width, height, steps, negative_prompt,
**AUTOMATIC1111_PARAMS}, reading `images` (plain base64) and `info`.

ComfyUI engine: GET /object_info to verify, and for the model list the first required "*_name" input of
the workflow's model node; a websocket to /ws?clientId=<user id> (every call carries
`Authorization: Bearer <key>`, the key empty by default); POST /prompt {prompt, client_id}; on
"executing" with node None for its prompt_id, GET /history/{prompt_id} at once and read the images of
its SaveImage/PreviewImage nodes; GET /view for each. Editing uploads through POST /api/upload/image
(multipart `image` + type=input) and puts the answer's `name` into a LoadImage node."""
from __future__ import annotations

import base64
import copy
import io
import json
from urllib.parse import urlencode

import pytest
from client_replay import WS, app_client, slow_records, until_done
from PIL import Image
from server_live import COMFY_GRAPH

NO_AUTH = {"authorization": ""}  # get_automatic1111_api_auth() with no AUTOMATIC1111_API_AUTH
BEARER = {"Authorization": "Bearer ", "User-Agent": "Mozilla/5.0"}  # comfyui.py's headers, no key set


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with app_client(tmp_path_factory.mktemp("owui")) as c:
        yield c


def set_image_model(client, model: str) -> None:
    options = client.get("/sdapi/v1/options", headers=NO_AUTH).json()
    if model != options["sd_model_checkpoint"]:
        options["sd_model_checkpoint"] = model
        r = client.post("/sdapi/v1/options", json=options, headers=NO_AUTH)
        assert r.status_code == 200, r.text  # Open WebUI does not check; a refusal would go unnoticed


def test_automatic1111_engine(client):
    assert client.get("/sdapi/v1/options", headers=NO_AUTH).status_code == 200  # verify_url
    models = [{"id": m["title"], "name": m["model_name"]}
              for m in client.get("/sdapi/v1/sd-models", headers=NO_AUTH).json()]
    tiny = next(m for m in models if m["name"] == "tiny")
    before = client.get("/sdapi/v1/options").json()
    set_image_model(client, tiny["id"])
    after = client.get("/sdapi/v1/options", headers=NO_AUTH).json()
    assert after["sd_model_checkpoint"] == tiny["id"]  # get_image_model reads this back
    # the rest of the dict went back unchanged, and nothing in it was refused
    changed = {k for k in before if before[k] != after.get(k)}
    assert changed <= {"sd_model_checkpoint", "sd_checkpoint_hash"}, changed

    params = {"cfg_scale": 5, "sampler_name": "Euler a", "scheduler": "Karras"}  # AUTOMATIC1111_PARAMS
    data = {"prompt": "a red apple", "batch_size": 2, "width": 64, "height": 64, "steps": 2,
            "negative_prompt": "blurry", **params}
    r = client.post("/sdapi/v1/txt2img", json=data, headers=NO_AUTH)
    assert r.status_code == 200, r.text
    res = r.json()
    assert len(res["images"]) == 2
    for image in res["images"]:
        assert "," not in image  # get_image_data: no data-URL header means image/png
        assert Image.open(io.BytesIO(base64.b64decode(image))).format == "PNG"
    info = json.loads(res["info"])  # stored as the file's metadata
    assert info["sd_model_name"] == "tiny" and info["cfg_scale"] == 5 and info["sampler_name"] == "Euler a"
    assert "Schedule type: Karras" in info["infotexts"][0]


def comfy_models(client, workflow: dict, model_node: str) -> list[dict]:
    info = client.get("/object_info", headers=BEARER).json()
    required = info[workflow[model_node]["class_type"]]["input"]["required"]
    key = next(k for k in required if "_name" in k)
    return [{"id": m, "name": m} for m in required[key][0]]


def comfy_run(client, workflow: dict, user: str) -> list[str]:
    """_ws_get_images: the /view URLs of the run's SaveImage/PreviewImage images."""
    with client.websocket_connect(f"{WS}?clientId={user}", headers=BEARER) as ws:
        r = client.post("/prompt", json={"prompt": workflow, "client_id": user}, headers=BEARER)
        assert r.status_code == 200, r.text
        pid = r.json()["prompt_id"]
        until_done(ws, pid)
        history = client.get(f"/history/{pid}", headers=BEARER).json()[pid]  # read at once, as Open WebUI does
    urls = []
    for node_id, output in history["outputs"].items():
        if workflow[node_id].get("class_type") in ("SaveImage", "PreviewImage"):
            urls += ["/view?" + urlencode({k: image[k] for k in ("filename", "subfolder", "type")})
                     for image in output.get("images", [])]
    return urls


def fetch_image(client, url: str) -> Image.Image:
    r = client.get(url, headers=BEARER)
    assert r.status_code == 200 and r.headers["content-type"].split("/")[0] == "image"  # get_image_data
    return Image.open(io.BytesIO(r.content))


def default_workflow() -> dict:
    """COMFYUI_DEFAULT_WORKFLOW's graph (ids 3..9, each node with its _meta title)."""
    workflow = copy.deepcopy(COMFY_GRAPH)
    for node in workflow.values():
        node["_meta"] = {"title": node["class_type"]}
    return workflow


def test_comfyui_engine_create(client):
    assert client.get("/object_info", headers=BEARER).status_code == 200  # verify_url
    workflow = default_workflow()
    models = comfy_models(client, workflow, "4")
    assert {"id": "tiny.safetensors", "name": "tiny.safetensors"} in models
    # _apply_workflow_nodes with the default node mapping
    workflow["4"]["inputs"]["ckpt_name"] = "tiny.safetensors"
    workflow["6"]["inputs"]["text"] = "a lighthouse"
    workflow["5"]["inputs"].update(width=64, height=64, batch_size=2)
    workflow["3"]["inputs"].update(steps=2, seed=1125899906842624)  # random.randint(0, 2**50)'s top
    with slow_records(client):
        urls = comfy_run(client, workflow, "user-1")
    assert len(urls) == 2
    assert all(fetch_image(client, url).size == (64, 64) for url in urls)


def test_comfyui_engine_edit(client):
    picture = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(picture, "PNG")
    r = client.post("/api/upload/image", headers={"Authorization": "Bearer "},
                    files={"image": ("f0e1.png", picture.getvalue(), "image/png")}, data={"type": "input"})
    assert r.status_code == 200, r.text
    name = r.json().get("name", "f0e1.png")
    workflow = default_workflow()
    workflow["10"] = {"class_type": "LoadImage", "inputs": {"image": name}, "_meta": {"title": "Load Image"}}
    workflow["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    workflow["3"]["inputs"].update(latent_image=["11", 0], denoise=0.5, steps=2)
    workflow["12"] = {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}
    urls = comfy_run(client, workflow, "user-2")
    output = [u for u in urls if "type=output" in u]  # image_edits prefers these
    assert len(output) == 1 and len(urls) == 2
    assert fetch_image(client, output[0]).size == (64, 64)
