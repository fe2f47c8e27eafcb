"""The Train tab's routes without a browser: datasets uploaded as multipart (validated, stored under
free plain names, captions as kohya .txt sidecars), training jobs on the shared queue (loss curve,
samples, the result in the LoRA/embeddings folder and the pickers), cancel keeping a resumable state
and resume continuing it, and one clear line for every bad request."""
from __future__ import annotations

import io
import json
import logging
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from safetensors import safe_open
from server_live import BASE, models_dir

import opensd.server.datasets as datasets_module
from opensd.server.app import create_app
from opensd.server.settings import Settings
from opensd.server.store import DONE, FINAL, INTERRUPTED, Job

TINY = "tiny.safetensors"


def png(color, size=(64, 64), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture
def c(tmp_path):
    settings = Settings(outputs_dir=tmp_path / "out", models_dir=models_dir(tmp_path))
    with TestClient(create_app(settings), base_url=BASE, raise_server_exceptions=False) as client:
        yield client


def upload(c, name, files):
    return c.post(f"/opensd/v1/datasets/{name}/images",
                  files=[("files", (filename, data, "application/octet-stream")) for filename, data in files])


def make_dataset(c, name="reds", captions=("zq red square", "zq red square")):
    assert c.post("/opensd/v1/datasets", json={"name": name}).status_code == 201
    upload(c, name, [(f"r{i}.png", png((250, 10 * i, 0))) for i in range(len(captions))])
    for i, caption in enumerate(captions):
        c.put(f"/opensd/v1/datasets/{name}/images/r{i}.png/caption", json={"caption": caption})


def wait(c, job_id: str, until=lambda s: s["status"] in FINAL, timeout=300) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = c.get(f"/opensd/v1/train/jobs/{job_id}").json()
        if until(status):
            return status
        time.sleep(0.05)
    raise AssertionError(f"training job {job_id}: condition not reached")


def test_datasets_store_validated_images_under_free_names_with_caption_sidecars(c, tmp_path, monkeypatch):
    folder = tmp_path / "out" / "datasets" / "my subject"
    assert c.post("/opensd/v1/datasets", json={"name": "../up"}).json()["detail"].startswith("name: ")
    assert c.post("/opensd/v1/datasets", json={"name": "my subject"}).status_code == 201
    r = upload(c, "my subject", [("a.png", png("red")), ("photo.jpg", png("blue", fmt="JPEG")),
                                 ("old.bmp", png("green", fmt="BMP")), ("../../evil name!.png", png("red"))])
    assert r.status_code == 200
    assert r.json()["added"] == ["a.png", "photo.jpg", "old.png", "evil name.png"]
    assert Image.open(folder / "old.png").format == "PNG" and Image.open(folder / "photo.jpg").format == "JPEG"
    assert upload(c, "my subject", [("a.png", png("red"))]).json()["added"] == ["a-2.png"]  # never replaced

    before = sorted(p.name for p in folder.iterdir())
    bad = upload(c, "my subject", [("ok.png", png("red")), ("fake.png", b"<script>alert(1)</script>")])
    assert bad.status_code == 422 and bad.json()["detail"].startswith("files: fake.png: not a readable image")
    monkeypatch.setattr(datasets_module, "MAX_IMAGE_BYTES", 100)
    assert "over the 0 MiB limit" in upload(c, "my subject", [("big.png", png("red"))]).json()["detail"]
    assert sorted(p.name for p in folder.iterdir()) == before  # a refused upload keeps none of its files
    assert upload(c, "nope", [("a.png", png("red"))]).status_code == 404

    r = c.put("/opensd/v1/datasets/my subject/images/a.png/caption", json={"caption": "sks dog,\n on grass "})
    assert r.json()["caption"] == "sks dog, on grass"
    assert (folder / "a.txt").read_text() == "sks dog, on grass\n"  # kohya's sidecar, one line
    shown = c.get("/opensd/v1/datasets/my subject").json()["images"]
    assert [(i["file"], i["caption"], i["width"]) for i in shown][:2] == [("a-2.png", "", 64), ("a.png", "sks dog, on grass", 64)]
    assert c.get(shown[1]["url"]).content == (folder / "a.png").read_bytes()
    c.put("/opensd/v1/datasets/my subject/images/a.png/caption", json={"caption": "  "})
    assert not (folder / "a.txt").exists()
    for path in ("/opensd/v1/datasets/my subject/images/..%2F..%2Fopensd-jobs.sqlite3",
                 "/opensd/v1/datasets/..%2Fdatasets/images/a.png", "/opensd/v1/datasets/my subject/images/a.txt"):
        assert c.get(path).status_code in (404, 422), path
    c.put("/opensd/v1/datasets/my subject/images/a.png/caption", json={"caption": "x"})
    assert c.delete("/opensd/v1/datasets/my subject/images/a.png").json() == {"deleted": True}
    assert not (folder / "a.png").exists() and not (folder / "a.txt").exists()
    assert c.get("/opensd/v1/datasets").json()["items"] == [{"name": "my subject", "images": 4}]
    assert c.delete("/opensd/v1/datasets/my subject").json() == {"deleted": True} and not folder.exists()


def test_lora_training_job_saves_a_kohya_lora_the_pickers_list(c, tmp_path):
    make_dataset(c)
    r = c.post("/opensd/v1/train", json={"dataset": "reds", "model": TINY, "output": "zq-red", "steps": 4,
                                         "lr": 0.05, "rank": 4, "sample_every": 2, "sample_steps": 2})
    assert r.status_code == 202
    job_id = r.json()["job_id"]
    status = wait(c, job_id)
    assert status["status"] == DONE, status
    assert (status["output"], status["step"], status["steps"]) == ("zq-red.safetensors", 4, 4)
    assert [p["step"] for p in status["losses"]] == [1, 2, 3, 4] and all(p["loss"] > 0 for p in status["losses"])
    assert [u.rsplit("/", 1)[1] for u in status["samples"]] == ["step000002-0.png", "step000004-0.png"]
    sample = c.get(status["samples"][0])
    assert sample.headers["content-type"] == "image/png" and Image.open(io.BytesIO(sample.content)).size == (64, 64)
    lora = tmp_path / "models" / "Lora" / "zq-red.safetensors"
    with safe_open(lora, "pt") as f:
        meta = f.metadata()
    assert meta["ss_network_dim"] == "4" and meta["ss_steps"] == "4" and meta["ss_sd_model_name"] == TINY
    assert meta["ss_tag_frequency"] == '{"reds": {"zq red square": 2}}'
    assert [x["name"] for x in c.get("/sdapi/v1/loras").json()] == ["zq-red"]
    (listed,) = c.get("/opensd/v1/models").json()["loras"]
    assert (listed["name"], listed["family"]) == ("zq-red.safetensors", "small")
    recent = c.get("/opensd/v1/queue").json()["recent"][0]
    assert (recent["label"], recent["task"]) == ("Train lora zq-red.safetensors on reds (4 steps)", "training")
    assert c.get("/opensd/v1/train/jobs").json()["items"][0]["job_id"] == job_id
    again = c.post("/opensd/v1/train", json={"dataset": "reds", "model": TINY, "output": "zq-red.safetensors"})
    assert again.status_code == 422 and "exists in the loras folder" in again.json()["detail"]


def test_cancel_keeps_the_state_and_resume_continues_the_same_run(c, tmp_path, caplog):
    make_dataset(c)
    r = c.post("/opensd/v1/train", json={"dataset": "reds", "model": TINY, "output": "long", "steps": 40,
                                         "lr": 0.01, "rank": 2, "save_every": 1000})
    job_id = r.json()["job_id"]
    wait(c, job_id, lambda s: s["step"] >= 2)
    assert c.delete(f"/opensd/v1/jobs/{job_id}").json() == {"interrupted": True}
    stopped = wait(c, job_id)
    assert stopped["status"] == INTERRUPTED and stopped["resumable"] and 2 <= stopped["step"] < 40
    assert not (tmp_path / "models" / "Lora" / "long.safetensors").exists()
    with caplog.at_level(logging.INFO, logger="opensd.training.trainer"):
        resumed = c.post(f"/opensd/v1/train/jobs/{job_id}/resume").json()["job_id"]
        done = wait(c, resumed)
    assert f"at step {stopped['step']}" in caplog.text  # saved when cancelled (save_every is 1000)
    assert done["status"] == DONE and done["run"] == stopped["run"] and done["step"] == 40
    steps = [p["step"] for p in done["losses"]]
    assert steps == list(range(1, 41))  # the losses before the cancel came back with the state
    assert (tmp_path / "models" / "Lora" / "long.safetensors").is_file()
    assert c.post(f"/opensd/v1/train/jobs/{resumed}/resume").json()["detail"].startswith("job_id: the job is done")


def test_a_training_job_running_beside_an_older_job_is_listed(c):
    """With Ray workers a generation started earlier may still run on another worker: the training job
    is listed as running all the same."""
    from test_job_workers import Held

    state = c.app.state.opensd
    other = Held("other")
    other.accepts = lambda job: job.kind == "a1111"
    state.queue.local.leave = other.accepts
    state.queue.add_worker(other)
    try:
        older = state.queue.submit("a1111", {}, "c1")
        make_dataset(c)
        r = c.post("/opensd/v1/train", json={"dataset": "reds", "model": TINY, "output": "beside", "steps": 400})
        job_id = r.json()["job_id"]
        wait(c, job_id, lambda s: s["status"] == "running")
        assert [p.job.id for p in state.queue.running()] == [older.id, job_id]
        assert c.get("/opensd/v1/train/jobs").json()["items"][0]["job_id"] == job_id
        assert c.delete(f"/opensd/v1/jobs/{job_id}").json() == {"interrupted": True}
        assert wait(c, job_id)["status"] == INTERRUPTED
    finally:
        other.release.set()


def test_embedding_training_teaches_loaded_models_the_new_word(c, tmp_path):
    make_dataset(c, captions=("red square",))
    made = c.post("/sdapi/v1/txt2img", json={"prompt": "zqword", "steps": 1, "width": 64, "height": 64,
                                             "override_settings": {"sd_model_checkpoint": TINY}})
    assert made.status_code == 200
    state = c.app.state.opensd
    tiny = tmp_path / "models" / "Stable-diffusion" / TINY
    assert [p for p, _ in state.cache.loaded()] == [tiny]
    assert "zqword" not in state.cache.get(tiny).embeddings  # no embeddings folder when it loaded
    r = c.post("/opensd/v1/train", json={"type": "embedding", "dataset": "reds", "model": TINY, "output": "zqword",
                                         "steps": 2, "init_word": "red"})
    assert wait(c, r.json()["job_id"])["status"] == DONE
    assert (tmp_path / "models" / "embeddings" / "zqword.safetensors").is_file()
    assert "zqword" in state.cache.get(tiny).embeddings
    assert "zqword" in c.get("/sdapi/v1/embeddings").json()["loaded"]


def test_dreambooth_job_saves_a_checkpoint_that_joins_the_model_list(c, tmp_path):
    make_dataset(c, captions=("",))
    r = c.post("/opensd/v1/train", json={"type": "dreambooth", "dataset": "reds", "model": TINY, "output": "sks-red",
                                         "steps": 2, "instance_prompt": "a photo of sks square"})
    status = wait(c, r.json()["job_id"])
    assert status["status"] == DONE and status["output"] == "sks-red.safetensors", status
    listed = {m["name"]: m for m in c.get("/opensd/v1/checkpoints").json()["items"]}
    assert listed["sks-red.safetensors"]["family"] == "small"
    made = c.post("/sdapi/v1/txt2img", json={"prompt": "a photo of sks square", "steps": 2, "width": 64, "height": 64,
                                             "override_settings": {"sd_model_checkpoint": "sks-red"}})
    assert made.status_code == 200 and "sks-red" in made.json()["info"]


@pytest.mark.parametrize("change, words", [
    ({"dataset": "nope"}, "dataset: no dataset named 'nope'"),
    ({"dataset": "empty"}, "dataset: 'empty' holds no images yet"),
    ({"model": "../tiny.safetensors"}, "model: no checkpoints model named"),
    ({"output": "sub/x"}, "output: 'sub/x' must be a plain name"),
    ({"output": "x.ckpt"}, "output: 'x.ckpt' must end in .safetensors"),
    ({"type": "embedding", "output": "two words"}, "token: 'two words' must be one word"),
    ({"type": "dreambooth"}, "instance-prompt: give the prompt that names the subject"),
    ({"resolution": 100}, "resolution: 100 must be a multiple of"),
    ({"lr": 0}, "lr: Input should be greater than 0"),
    ({"steps": 0}, "steps: Input should be greater than or equal to 1"),
    ({"rank": "a lot"}, "rank: Input should be a valid integer"),
])
def test_bad_training_requests_answer_one_line_and_queue_nothing(c, change, words):
    make_dataset(c)
    c.post("/opensd/v1/datasets", json={"name": "empty"})
    r = c.post("/opensd/v1/train", json={"dataset": "reds", "model": TINY, "output": "x", "steps": 2} | change)
    assert r.status_code == 422
    body = r.json()
    message = body.get("message") or body["detail"]
    assert words in message and "\n" not in message
    assert c.get("/opensd/v1/train/jobs").json()["items"] == []


def test_damaged_training_records_still_list_and_resume_answers_one_line(c):
    store = c.app.state.opensd.store
    for job_id, payload in {"t-array": [1], "t-run": {"run": "../../x", "type": "lora", "steps": "many"},
                            "t-type": {"run": "0" * 32, "type": "other", "steps": True, "label": 7,
                                       "dataset": {"x": 1}}}.items():
        job = store.add(Job(id=job_id, client="x", kind="train", payload={}))
        store.finish(job, INTERRUPTED, {}, "interrupted")
        with store._lock:  # as an older version or a hand edit may have left it
            store._db.execute("UPDATE jobs SET payload=? WHERE id=?", (json.dumps(payload), job_id))
    listed = c.get("/opensd/v1/train/jobs")
    assert listed.status_code == 200, listed.text
    assert {i["job_id"]: (i["run"], i["type"], i["steps"], i["label"], i["resumable"]) for i in listed.json()["items"]} == {
        "t-array": ("", "lora", 0, "", False), "t-run": ("", "lora", 0, "", False),
        "t-type": ("0" * 32, "lora", 0, "", False)}
    for job_id in ("t-array", "t-run", "t-type"):
        assert c.get(f"/opensd/v1/train/jobs/{job_id}/samples/step000001-0.png").status_code == 404
        r = c.post(f"/opensd/v1/train/jobs/{job_id}/resume")
        assert r.status_code == 422 and r.json()["detail"].startswith("job_id: the stored training job is damaged")
