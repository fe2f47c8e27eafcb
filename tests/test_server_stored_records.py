"""One request must never poison shared state: text that is not Unicode is refused on every route,
and whatever a stored job record holds (damaged, hand-written, from an older version), the
listings that read it still answer."""
from __future__ import annotations

import json
import sqlite3

import pytest
from fastapi.testclient import TestClient
from server_live import BASE, COMFY_GRAPH, models_dir

from opensd.server.app import create_app
from opensd.server.settings import Settings
from opensd.server.store import Store

RAW = {"content-type": "application/json"}


def comfy_body(text: str) -> bytes:
    graph = json.loads(json.dumps(COMFY_GRAPH))
    graph["6"]["inputs"]["text"] = text
    return json.dumps({"prompt": graph}).encode()  # json.dumps escapes a lone surrogate as \ud800


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("records")
    settings = Settings(models_dir=models_dir(root), outputs_dir=root / "out")
    _damage(settings.db_path)
    with TestClient(create_app(settings), base_url=BASE) as c:
        yield c


DAMAGED = {  # id: (status, payload SQL expression, result SQL expression)
    "not-json": ("done", "'{\"prompt\": '", "NULL"),
    "surrogate": ("done", "'{\"prompt\": {\"1\": {\"class_type\": \"SaveImage\", \"inputs\": {\"t\": \"a \\ud800 b\"}}}}'",
                  "'{\"outputs\": {\"\\udc00\": {}}, \"status\": {\"status_str\": \"\\ud800\"}}'"),
    "array": ("failed", "'[1, 2]'", "'\"text\"'"),
    "bad-utf8": ("done", "CAST(x'7b2270726f6d7074223a2022ff227d' AS TEXT)", "CAST(x'ff' AS TEXT)"),
    "blob": ("done", "x'7b7d'", "x'ff00'"),
    "deep": ("done", "'" + "[" * 5000 + "]" * 5000 + "'", "'" + "{\"a\":" * 900 + "1" + "}" * 900 + "'"),
    "bad-outputs": ("done", "'{\"prompt\": {\"9\": {\"class_type\": [1]}}}'", "'{\"outputs\": [[1]], \"status\": 3}'"),
    "queued-bad": ("queued", "'{\"prompt\": 7}'", "NULL"),
}


def _damage(db) -> None:
    Store(db).close()  # the schema
    con = sqlite3.connect(db)
    for job_id, (status, payload, result) in DAMAGED.items():
        con.execute(f"INSERT INTO jobs (id, client, kind, payload, status, created, result) "
                    f"VALUES (?, 'x', 'comfy', {payload}, ?, 1.0, {result})", (job_id, status))
    con.commit()
    con.close()


def test_lone_surrogate_in_a_comfy_graph_is_refused_and_history_stays_readable(live):
    r = live.post("/prompt", content=comfy_body("a \ud800 b"), headers=RAW)
    assert r.status_code == 422, r.text
    assert "body.prompt.6.inputs.text" in r.json()["detail"] and "surrogate" in r.json()["detail"]
    assert live.get("/history").status_code == 200
    # a proper pair (an emoji written with ensure_ascii) is Unicode text and stays accepted
    ok = live.post("/prompt", content=comfy_body("a \U0001F600 b"), headers=RAW)
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("path", ["/sdapi/v1/txt2img", "/sdapi/v1/options", "/prompt", "/queue", "/history"])
def test_lone_surrogate_is_refused_the_same_way_on_every_json_route(live, path):
    r = live.post(path, content=b'{"prompt": "a \\udfff", "clear": false}', headers=RAW)
    assert r.status_code == 422 and "surrogate" in r.text, r.text
    key = live.post(path, content=b'{"\\ud800": 1}', headers=RAW)
    assert key.status_code == 422 and "key" in key.text, key.text


def test_every_listing_reads_damaged_records(live):
    history = live.get("/history")
    assert history.status_code == 200, history.text
    assert set(DAMAGED) - {"queued-bad"} <= set(history.json())
    for job_id in DAMAGED:
        one = live.get(f"/history/{job_id}")
        assert one.status_code == 200, (job_id, one.text)
        job = live.get(f"/opensd/v1/jobs/{job_id}")
        assert job.status_code == 200, (job_id, job.text)
    assert "\ufffd" in json.dumps(live.get("/history/surrogate").json(), ensure_ascii=False)
    assert "stored payload: not JSON" in live.get("/opensd/v1/jobs/not-json").json()["error"]
    assert "nested deeper" in live.get("/opensd/v1/jobs/deep").json()["error"]
    for path in ("/opensd/v1/jobs", "/queue", "/history?max_items=3"):
        assert live.get(path).status_code == 200, path


def test_still_generates_after_damaged_records(live):
    r = live.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2, "width": 64, "height": 64})
    assert r.status_code == 200 and len(r.json()["images"]) == 1


def _jpeg_with_comment(comment: bytes) -> str:
    import base64
    import io

    from PIL import Image

    image = Image.new("RGB", (8, 8))
    exif = image.getexif()
    exif[0x8769] = {0x9286: b"UNICODE\x00" + comment}  # Exif IFD: UserComment
    buf = io.BytesIO()
    image.save(buf, "JPEG", exif=exif)
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize("comment", [b"\xfe\xff\x00a\xd8\x00\x00b", b"\x00a\xd8\x00\x00b"], ids=["BOM", "no BOM"])
def test_image_text_that_is_not_unicode_reads_with_replacement(live, comment):
    image = _jpeg_with_comment(comment)  # UTF-16 'a', a lone surrogate, 'b'
    r = live.post("/opensd/v1/image-info", json={"image": image})
    assert r.status_code == 200 and r.json()["infotext"] == "a\ufffdb", r.text
    assert live.post("/sdapi/v1/png-info", json={"image": image}).status_code == 200


def test_file_names_and_metadata_that_are_not_unicode_never_break_a_listing(tmp_path):
    """A model file named in another encoding (a Windows zip unpacked on Linux) or a safetensors
    header holding a lone surrogate is listed with U+FFFD; it does not turn every listing into a 500."""
    import os
    import struct

    models = models_dir(tmp_path)
    header = json.dumps({"__metadata__": {"note": "a \ud800 b"},
                         "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    weights = struct.pack("<Q", len(header)) + header + b"\0" * 4
    (models / "Lora" / "meta.safetensors").write_bytes(weights)
    for folder, name in (("Lora", b"caf\xe9.safetensors"), ("Stable-diffusion", b"z\xff.safetensors")):
        with open(os.fsencode(models / folder) + b"/" + name, "wb") as f:
            f.write(weights)
    settings = Settings(models_dir=models, outputs_dir=tmp_path / "out", start_worker=False)
    with TestClient(create_app(settings), base_url=BASE) as c:
        for path in ("/models/loras", "/models/checkpoints", "/sdapi/v1/loras", "/sdapi/v1/sd-models", "/object_info",
                     "/object_info/LoraLoader", "/view_metadata/loras?filename=meta.safetensors"):
            r = c.get(path)
            assert r.status_code == 200 and "\ufffd" in r.text, (path, r.text[:300])


def test_a_finished_jobs_file_names_are_data_not_paths(tmp_path):
    """A1111's answer for a job finished by an earlier process reads its files back from the record:
    a name that leaves the outputs folder, or a file since deleted, is skipped, never read or a 500."""
    from opensd.server.a1111_api import _stored_files
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"A")
    (tmp_path / "secret.txt").write_bytes(b"S")
    assert _stored_files(out, ["a.png", "../secret.txt", "gone.png", "x" * 300, None]) == [b"A"]


def test_the_history_is_bounded_in_jobs_and_bytes(tmp_path):
    """Finished jobs were kept forever: a client posting 60 MiB graphs filled the disk, and GET /history
    read all of them back into memory. Now the newest keep_jobs, within keep_bytes counted from the
    newest (the newest always stays); queued and running jobs are never dropped."""
    from opensd.server.store import DONE, FAILED, Job

    store = Store(tmp_path / "jobs.sqlite3", keep_jobs=4, keep_bytes=1_000_000)
    waiting = store.add(Job(id="waiting", client="c", kind="comfy", payload={"x": "a" * 900_000}))
    for i in range(6):
        store.finish(store.add(Job(id=f"small{i}", client="c", kind="comfy", payload={"i": i})), DONE, {"ok": i})
    assert [j.id for j in store.history()] == ["small5", "small4", "small3", "small2"]
    store.finish(store.add(Job(id="big1", client="c", kind="comfy", payload={"x": "a" * 600_000})), FAILED)
    store.finish(store.add(Job(id="big2", client="c", kind="comfy", payload={"x": "a" * 600_000})), DONE,
                 {"y": "b" * 300_000})
    assert [j.id for j in store.history()] == ["big2"]  # with big1 over 1,000,000 bytes
    store.finish(store.add(Job(id="huge", client="c", kind="comfy", payload={"x": "a" * 2_000_000})), DONE)
    assert [j.id for j in store.history()] == ["huge"]
    assert store.get("waiting") is not None and [j.id for j in store.queued()] == [waiting.id]
    store.close()


def test_a_store_from_before_the_bound_gets_its_sizes(tmp_path):
    db = tmp_path / "old.sqlite3"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, client TEXT NOT "
                "NULL, kind TEXT NOT NULL, payload TEXT NOT NULL, status TEXT NOT NULL, created REAL NOT NULL, "
                "started REAL, finished REAL, run_order INTEGER, result TEXT, error TEXT)")
    for i in range(3):
        con.execute("INSERT INTO jobs (id, client, kind, payload, status, created, result) VALUES (?, 'c', 'a1111', ?, "
                    "'done', 1.0, '{}')", (f"old{i}", json.dumps({"x": "é" * 200_000}, ensure_ascii=False)))
    con.commit()
    con.close()
    store = Store(db, keep_bytes=1_000_000)
    sizes = [row["size"] for row in store._db.execute("SELECT size FROM jobs ORDER BY seq")]
    assert sizes == [len(json.dumps({"x": "é" * 200_000}, ensure_ascii=False).encode()) + 2] * 3  # bytes
    from opensd.server.store import DONE, Job
    store.finish(store.add(Job(id="new", client="c", kind="a1111", payload={})), DONE, {})
    assert [j.id for j in store.history()] == ["new", "old2", "old1"]
    store.close()
