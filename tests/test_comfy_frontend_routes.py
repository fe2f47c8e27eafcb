"""The routes ComfyUI's frontend calls besides the core API: its Jobs API over our queue, the
start-up calls (/extensions, /i18n, /features, model folders, templates) and the /comfy/ mount."""
from __future__ import annotations

import copy
import time

import pytest
from fastapi.testclient import TestClient
from server_live import BASE, COMFY_GRAPH, models_dir

from opensd.server.app import create_app
from opensd.server.comfy_frontend import TEMPLATES, static_dir
from opensd.server.settings import Settings
from opensd.workflows import object_info


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = Settings(outputs_dir=tmp_path_factory.mktemp("comfy-fe") / "out", api_token=None)
    with TestClient(create_app(settings), base_url=BASE) as c:
        yield c


def wait_done(client, pid):
    for _ in range(600):
        if client.get(f"/history/{pid}").json():
            return
        time.sleep(0.05)
    raise AssertionError(f"prompt {pid} did not finish")


def test_jobs_api_lists_a_finished_job_with_its_preview(client):
    graph = copy.deepcopy(COMFY_GRAPH)
    pid = client.post("/prompt", json={"prompt": graph, "extra_data": {
        "extra_pnginfo": {"workflow": {"id": "wf-1", "nodes": []}}}}).json()["prompt_id"]
    wait_done(client, pid)
    page = client.get("/comfy/api/jobs", params={"status": "completed,failed,cancelled", "limit": 64}).json()
    assert page["pagination"] == {"offset": 0, "limit": 64, "total": 1, "has_more": False}
    job = page["jobs"][0]
    assert job["id"] == pid and job["status"] == "completed" and job["workflow_id"] == "wf-1"
    assert job["outputs_count"] == 1 and job["preview_output"]["nodeId"] == "9"
    assert job["preview_output"]["mediaType"] == "images" and job["preview_output"]["type"] == "output"
    assert job["execution_end_time"] >= job["execution_start_time"] >= job["create_time"] - 1000
    detail = client.get(f"/api/jobs/{pid}").json()
    assert detail["outputs"]["9"]["images"][0]["filename"] == job["preview_output"]["filename"]
    assert detail["workflow"]["prompt"] == graph and detail["execution_status"]["status_str"] == "success"
    assert client.get("/jobs", params={"status": "in_progress,pending"}).json()["jobs"] == []
    assert client.get("/jobs", params={"workflow_id": "other"}).json()["jobs"] == []
    assert client.get("/jobs", params={"status": "done"}).status_code == 400
    assert client.get("/jobs/nope").status_code == 404


def test_jobs_api_failed_job_carries_its_error(tmp_path):
    models = models_dir(tmp_path)
    settings = Settings(outputs_dir=tmp_path / "out", models_dir=models, start_worker=False)
    with TestClient(create_app(settings), base_url=BASE) as c:
        graph = copy.deepcopy(COMFY_GRAPH)
        graph["4"]["inputs"]["ckpt_name"] = "tiny.safetensors"
        pid = c.post("/prompt", json={"prompt": graph}).json()["prompt_id"]
        (models / "Stable-diffusion" / "tiny.safetensors").unlink()  # gone after validation: fails when run
        c.app.state.opensd.queue.start()
        wait_done(c, pid)
        failed = c.get("/jobs", params={"status": "failed"}).json()["jobs"]
        assert [j["id"] for j in failed] == [pid]
        error = failed[0]["execution_error"]
        # the graph is checked again when it runs; the frontend's schema wants strings even when no
        # single node is to blame
        assert error["exception_message"] == "Prompt outputs failed validation"
        assert error["node_id"] == "" and error["node_type"] == "" and error["traceback"] == []


def test_jobs_api_pending_and_cancel(tmp_path):
    settings = Settings(outputs_dir=tmp_path / "out", start_worker=False)
    with TestClient(create_app(settings), base_url=BASE) as c:
        ids = [c.post("/prompt", json={"prompt": COMFY_GRAPH}).json()["prompt_id"] for _ in range(3)]
        pending = c.get("/jobs", params={"status": "pending", "limit": 2, "sort_order": "asc"}).json()
        assert [j["id"] for j in pending["jobs"]] == ids[:2] and pending["pagination"]["has_more"]
        assert c.get(f"/jobs/{ids[0]}").json()["status"] == "pending"
        assert c.post(f"/comfy/api/jobs/{ids[0]}/cancel").json() == {"cancelled": [ids[0]]}
        assert c.post("/api/jobs/cancel", json={"job_ids": [ids[1], "nope"]}).json() == {"cancelled": [ids[1]]}
        assert c.post("/jobs/cancel", json={"job_ids": "x"}).status_code == 400
        left = c.get("/jobs", params={"status": "pending"}).json()["jobs"]
        assert [j["id"] for j in left] == [ids[2]]
        cancelled = c.get("/jobs", params={"status": "cancelled"}).json()["jobs"]
        assert sorted(j["id"] for j in cancelled) == sorted(ids[:2])


def test_startup_routes(client):
    assert client.get("/comfy/api/extensions").json() == []  # no third-party frontend code, ever
    assert client.get("/comfy/api/i18n").json() == {}
    assert client.get("/api/features").json()["supports_preview_metadata"] is False
    assert client.get("/comfy/api/workflow_templates").json() == {}
    assert client.get("/comfy/api/global_subgraphs").json() == {}
    assert {"checkpoints", "clip_vision", "ipadapter", "inpaint"} <= set(client.get("/models").json())
    folders = {f["name"] for f in client.get("/comfy/api/experiment/models").json()}
    assert {"checkpoints", "loras", "vae", "embeddings", "controlnet", "upscale_models"} <= folders
    ckpts = client.get("/comfy/api/experiment/models/checkpoints").json()
    assert {"name": "opensd-emoji.safetensors", "pathIndex": 0} in ckpts
    assert client.get("/experiment/models/custom_nodes").status_code == 404
    assert isinstance(client.get("/view_metadata/checkpoints",
                                 params={"filename": "opensd-emoji.safetensors"}).json(), dict)
    assert client.get("/view_metadata/checkpoints", params={"filename": "../../etc/passwd"}).status_code == 404
    system = client.get("/comfy/api/system_stats").json()["system"]
    # the frontend's release check against api.comfy.org is off, and the real argv never leaks
    assert "--disable-api-nodes" in system["argv"] and not any("token" in a for a in system["argv"])


@pytest.mark.skipif(static_dir() is None, reason="needs the comfyui extra (pip install 'opensd[comfyui]')")
def test_frontend_is_served_under_comfy(client):
    r = client.get("/comfy/")
    assert r.status_code == 200 and "ComfyUI" in r.text
    policy = r.headers["content-security-policy"]
    assert "connect-src 'self';" in policy and "default-src 'self';" in policy and "'unsafe-eval'" not in policy
    assert client.get("/comfy", follow_redirects=False).headers["location"] == "/comfy/"
    assert client.get("/comfy/user.css").headers["content-type"].startswith("text/css")
    for absolute in ("/assets/images/favicon_progress_16x16/frame_9.png", "/assets/favicon.ico"):
        assert client.get(absolute).status_code == 200  # the frontend asks for these from the root
    index = client.get("/comfy/templates/index.json").json()
    assert client.get("/comfy/templates/index.de.json").json() == index
    assert client.get("/comfy/templates/index_logo.json").json() == {}
    assert client.get("/comfy/templates/..%2Fcomfy_api.py").status_code == 404
    for template in index[0]["templates"]:
        assert client.get(f"/comfy/templates/{template['name']}-1.{template['mediaSubtype']}").status_code == 200
        graph = client.get(f"/comfy/templates/{template['name']}.json").json()
        nodes = object_info()
        for node in graph["nodes"]:  # every node type exists here, so the frontend reports none missing
            assert node["type"] in nodes, node["type"]
    assert {p.name for p in TEMPLATES.iterdir()} >= {"index.json"}


def test_free_and_a1111_unload_drop_loaded_models_and_generation_goes_on(client):
    """ComfyUI's "Unload models" (/free) and A1111's /unload-checkpoint really unload; the next job
    loads again; /reload-checkpoint loads the current model."""
    cache = client.app.state.opensd.cache
    ok = {"prompt": "x", "steps": 1, "width": 64, "height": 64}
    assert client.post("/sdapi/v1/txt2img", json=ok).status_code == 200 and cache.loaded()
    assert client.post("/free", json={"unload_models": False}).status_code == 200 and cache.loaded()
    assert client.post("/api/free", json={"unload_models": True}).status_code == 200 and not cache.loaded()
    assert client.post("/sdapi/v1/reload-checkpoint").status_code == 200 and len(cache.loaded()) == 1
    assert client.post("/sdapi/v1/unload-checkpoint").status_code == 200 and not cache.loaded()
    assert client.post("/sdapi/v1/txt2img", json=ok).status_code == 200 and cache.loaded()
