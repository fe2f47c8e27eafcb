"""SillyTavern's image generation against opensd, request by request as its server sends them
(src/endpoints/stable-diffusion.js, with node-fetch; public/scripts/extensions/stable-diffusion).

A1111 ('auto'): every call carries `Authorization: Basic <base64 of the user's auth>` ("Basic " when
none); ping = GET /sdapi/v1/options; lists = names of /upscalers with /latent-upscale-modes spliced in
after "None", /samplers, /schedulers, model_name of /sd-vae (or Forge's /sd-modules), title of
/sd-models; set-model POSTs {sd_model_checkpoint} then polls /progress until progress is 0 and
state.job_count 0; generate GETs /options (a `forge_preset` key means Forge: only then is
override_settings.forge_additional_modules kept), then POSTs its whole request body to /txt2img,
`url` and `auth` included, and reads images[0]; a closed browser request POSTs /interrupt.

ComfyUI: ping = GET /system_stats; lists from GET /object_info (KSampler sampler_name/scheduler,
CheckpointLoaderSimple ckpt_name and UNETLoader unet_name, VAELoader vae_name); generate POSTs
`{"prompt": <workflow>}` as a string (node-fetch labels it text/plain), polls GET /history until the
prompt_id is in it, reads status.status_str (on "error": the execution_error messages' node_type,
node_id, exception_type, exception_message), the first output's images[0], then GET /view with
filename, subfolder and type."""
from __future__ import annotations

import base64
import copy
import io
import json
import time

import pytest
from client_replay import app_client
from PIL import Image
from server_live import COMFY_GRAPH

AUTH = {"Authorization": "Basic "}  # getBasicAuthHeader('')
NODE_FETCH = {"User-Agent": "node-fetch", "Accept": "*/*"}  # no Origin, no Sec-Fetch-*: not a browser


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with app_client(tmp_path_factory.mktemp("st")) as c:
        yield c


def get(client, path):
    r = client.get(path, headers={**NODE_FETCH, **AUTH})
    assert r.status_code == 200, f"{path}: {r.status_code} {r.text}"  # SillyTavern checks result.ok
    return r.json()


def post_json(client, path, body):
    return client.post(path, content=json.dumps(body),
                       headers={**NODE_FETCH, **AUTH, "Content-Type": "application/json"})


def test_auto_lists(client):
    get(client, "/sdapi/v1/options")  # ping
    upscalers = [x["name"] for x in get(client, "/sdapi/v1/upscalers")]
    upscalers[1:1] = [x["name"] for x in get(client, "/sdapi/v1/latent-upscale-modes")]
    assert upscalers[0] == "None" and upscalers[1] == "Latent"
    assert [x["model_name"] for x in get(client, "/sdapi/v1/sd-vae")] == ["other.safetensors"]
    samplers = [x["name"] for x in get(client, "/sdapi/v1/samplers")]
    schedulers = [x["name"] for x in get(client, "/sdapi/v1/schedulers")]
    assert "DPM++ 2M" in samplers and "karras" in schedulers
    models = [{"value": x["title"], "text": x["title"]} for x in get(client, "/sdapi/v1/sd-models")]
    assert any(m["value"].startswith("tiny.safetensors") for m in models)


def test_auto_every_listed_schedule_runs_and_automatic_is_the_samplers_own(client):
    """SillyTavern offers /schedulers' names and sends the one picked as `scheduler`."""
    listed = {x["label"]: x["name"] for x in get(client, "/sdapi/v1/schedulers")}

    def pixels(scheduler):
        body = {"prompt": "a fox", "sampler_name": "DPM++ 2M", "steps": 2, "width": 64, "height": 64, "seed": 3,
                **({"scheduler": scheduler} if scheduler else {})}
        r = post_json(client, "/sdapi/v1/txt2img", body)
        assert r.status_code == 200, f"{scheduler}: {r.text}"
        return Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).tobytes()

    runs = {name: pixels(name) for name in listed.values()}
    assert runs[listed["Automatic"]] == pixels(None) == runs["karras"]  # A1111: DPM++ 2M's default is Karras
    assert runs[listed["Uniform"]] != runs["karras"]


def test_auto_set_model_then_generate(client):
    tiny = next(x["title"] for x in get(client, "/sdapi/v1/sd-models") if x["model_name"] == "tiny")
    assert post_json(client, "/sdapi/v1/options", {"sd_model_checkpoint": tiny}).status_code == 200
    progress = get(client, "/sdapi/v1/progress")  # the wait for the model to load ends at once
    assert progress["progress"] == 0.0 and progress["state"]["job_count"] == 0
    assert get(client, "/sdapi/v1/options")["sd_model_checkpoint"] == tiny  # get-model

    options = get(client, "/sdapi/v1/options")
    assert "forge_preset" not in options  # so SillyTavern drops forge_additional_modules, unknown here
    body = {"url": "http://127.0.0.1:7860", "auth": "", "prompt": "best quality, absurdres, a fox",
            "negative_prompt": "lowres, bad anatomy", "sampler_name": "DPM++ 2M", "scheduler": "karras",
            "steps": 2, "cfg_scale": 7, "width": 64, "height": 64, "restore_faces": False, "enable_hr": True,
            "hr_upscaler": "Latent", "hr_scale": 1.5, "hr_additional_modules": [], "denoising_strength": 0.7,
            "hr_second_pass_steps": 0, "seed": 1234,
            "override_settings": {"CLIP_stop_at_last_layers": 2, "sd_vae": "other.safetensors"},
            "override_settings_restore_afterwards": True, "clip_skip": 2, "save_images": True,
            "send_images": True, "do_not_save_grid": False, "do_not_save_samples": False}
    r = post_json(client, "/sdapi/v1/txt2img", body)
    assert r.status_code == 200, r.text
    data = r.json()
    image = Image.open(io.BytesIO(base64.b64decode(data["images"][0])))
    assert image.format == "PNG" and image.size == (96, 96)  # the hires pass ran
    info = json.loads(data["info"])
    assert info["sd_model_name"] == "tiny" and info["seed"] == 1234 and info["clip_skip"] == 2
    assert info["sd_vae_name"] == "other.safetensors"
    assert "Hires upscaler: Latent" in info["infotexts"][0] and "Schedule type: Karras" in info["infotexts"][0]
    assert get(client, "/sdapi/v1/options")["CLIP_stop_at_last_layers"] == 1  # restored afterwards
    assert client.post("/sdapi/v1/interrupt", headers={**NODE_FETCH, **AUTH}).status_code == 200


def comfy_generate(client, workflow: dict) -> dict:
    """POST /prompt the way SillyTavern does, then poll /history until the prompt is in it."""
    r = client.post("/prompt", content=json.dumps({"prompt": workflow}),
                    headers={**NODE_FETCH, "Content-Type": "text/plain;charset=UTF-8"})
    assert r.status_code == 200, r.text
    prompt_id = r.json()["prompt_id"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        history = client.get("/history", headers=NODE_FETCH)
        assert history.status_code == 200
        if prompt_id in history.json():
            return history.json()[prompt_id]
        time.sleep(0.1)
    raise AssertionError(f"{prompt_id} never reached /history")


def test_comfy_lists(client):
    assert client.get("/system_stats", headers=NODE_FETCH).status_code == 200  # ping
    data = client.get("/object_info", headers=NODE_FETCH).json()
    required = {name: data[name]["input"]["required"] for name in
                ("KSampler", "CheckpointLoaderSimple", "UNETLoader", "VAELoader")}
    assert "euler" in required["KSampler"]["sampler_name"][0] and "karras" in required["KSampler"]["scheduler"][0]
    assert "tiny.safetensors" in required["CheckpointLoaderSimple"]["ckpt_name"][0]
    assert isinstance(required["UNETLoader"]["unet_name"][0], list)  # read with .map(): must be a list
    assert required["VAELoader"]["vae_name"][0] == ["other.safetensors"]


def test_comfy_generate(client):
    workflow = copy.deepcopy(COMFY_GRAPH)  # Default_Comfy_Workflow.json, placeholders filled in
    workflow["3"]["inputs"].update(cfg=7, sampler_name="euler", scheduler="normal", steps=2,
                                   seed=2**53 - 1)  # Math.random() * Number.MAX_SAFE_INTEGER's top
    workflow["4"]["inputs"]["ckpt_name"] = "tiny.safetensors"
    workflow["5"]["inputs"].update(width=64, height=64)
    workflow["9"]["inputs"]["filename_prefix"] = "Dechat"
    item = comfy_generate(client, workflow)
    assert item["status"]["status_str"] == "success"
    info = [o["images"] for o in item["outputs"].values() if "images" in o][0][0]
    r = client.get(f"/view?filename={info['filename']}&subfolder={info['subfolder']}&type={info['type']}",
                   headers=NODE_FETCH)
    assert r.status_code == 200 and info["filename"].lower().endswith(".png")
    assert Image.open(io.BytesIO(r.content)).size == (64, 64)


def test_comfy_failed_run_names_its_node(client):
    (client.app.state.opensd.settings.data_dir / "inputs" / "broken.png").write_bytes(b"\x89PNG not really")
    workflow = {"10": {"class_type": "LoadImage", "inputs": {"image": "broken.png"}},
                "11": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "Dechat"}}}
    item = comfy_generate(client, workflow)
    assert item["status"]["status_str"] == "error"
    errors = [m[1] for m in item["status"]["messages"] if m[0] == "execution_error"]
    assert len(errors) == 1
    assert (errors[0]["node_type"], errors[0]["node_id"]) == ("LoadImage", "10")
    assert errors[0]["exception_type"] and errors[0]["exception_message"]
