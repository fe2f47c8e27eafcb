"""The one job queue: load from several clients, 429 when full, fair round-robin order,
cancel, and persistence of queued jobs across a restart of the app over the same SQLite file."""
from __future__ import annotations

import threading
import time
from collections import Counter

import httpx
import pytest
from fastapi.testclient import TestClient
from server_live import BASE, COMFY_GRAPH, LiveServer

from opensd.server.app import create_app
from opensd.server.settings import Settings
from opensd.server.store import CANCELLED, DONE

BODY = {"prompt": "a tiny emoji", "steps": 1, "width": 64, "height": 64, "seed": 1}


def round_robin(jobs):
    """The order a fair queue runs jobs queued all at once: clients in order of their first job,
    one job each per round, each client's jobs in submission order."""
    lanes: dict[str, list] = {}
    for j in sorted(jobs, key=lambda j: j.seq):
        lanes.setdefault(j.client, []).append(j.id)
    order = []
    while any(lanes.values()):
        for lane in lanes.values():
            if lane:
                order.append(lane.pop(0))
    return order


def test_fifty_concurrent_requests_complete_or_get_429_fairly(tmp_path):
    # no waiting room: past the queue's 40 places the answer is 429 (test_waiting_room covers waiting)
    settings = Settings(outputs_dir=tmp_path / "out", queue_size=40, max_waiting=0, start_worker=False)
    clients, per_client = 5, 10
    results: list[tuple[str, int, float, str | None]] = []
    lock = threading.Lock()
    with LiveServer(settings) as live:
        state = live.state

        def one(client: str):
            t = time.time()
            r = httpx.post(live.url + "/sdapi/v1/txt2img", json=BODY, headers={"X-Client-Id": client},
                           timeout=300)
            with lock:
                results.append((client, r.status_code, time.time() - t, r.headers.get("retry-after")))

        threads = [threading.Thread(target=one, args=(f"client{c}",)) for _ in range(per_client)
                   for c in range(clients)]
        t0 = time.time()
        for th in threads:
            th.start()
        deadline = time.time() + 60
        while state.queue.pending_count() + len(results) < clients * per_client and time.time() < deadline:
            time.sleep(0.02)
        assert state.queue.pending_count() == 40
        state.queue.start()  # all 40 wait; now let the worker drain them
        for th in threads:
            th.join(300)
        wall = time.time() - t0
        jobs = state.store.all()
    codes = Counter(code for _, code, _, _ in results)
    assert codes == {200: 40, 429: 10}, codes                       # none lost, none failed
    assert all(ra and int(ra) >= 1 for _, code, _, ra in results if code == 429)
    assert len(jobs) == 40 and all(j.status == DONE for j in jobs)
    ran = [j.id for j in sorted(jobs, key=lambda j: j.run_order)]
    assert ran == round_robin(jobs)                                 # fair between clients
    first_round = {j.client for j in sorted(jobs, key=lambda j: j.run_order)[:clients]}
    assert len(first_round) == clients
    latency = sorted(t for _, code, t, _ in results if code == 200)
    print(f"\nload: 50 requests, 40 done + 10 x 429 in {wall:.1f}s wall; "
          f"latency median {latency[20]:.2f}s max {latency[-1]:.2f}s; "
          f"{sum(j.finished - j.started for j in jobs) / len(jobs):.3f}s per job")


def test_cancel_a_queued_job(tmp_path):
    settings = Settings(outputs_dir=tmp_path / "out", start_worker=False)
    with TestClient(create_app(settings), base_url=BASE) as c:
        pid = c.post("/prompt", json={"prompt": COMFY_GRAPH, "client_id": "a"}).json()["prompt_id"]
        assert [i[1] for i in c.get("/queue").json()["queue_pending"]] == [pid]
        assert c.delete(f"/opensd/v1/jobs/{pid}").json() == {"cancelled": True}
        assert c.get("/queue").json()["queue_pending"] == []
        assert c.get(f"/opensd/v1/jobs/{pid}").json()["status"] == CANCELLED
        assert c.get(f"/history/{pid}").json()[pid]["status"]["status_str"] == "error"


def test_queued_jobs_survive_a_restart(tmp_path):
    out = tmp_path / "out"
    with TestClient(create_app(Settings(outputs_dir=out, start_worker=False)), base_url=BASE) as c:
        ids = [c.post("/prompt", json={"prompt": COMFY_GRAPH, "client_id": who}).json()["prompt_id"]
               for who in ("alice", "alice", "bob")]
        dropped = c.post("/prompt", json={"prompt": COMFY_GRAPH, "client_id": "bob"}).json()["prompt_id"]
        c.post("/queue", json={"delete": [dropped]})
        assert [i[1] for i in c.get("/queue").json()["queue_pending"]] == [ids[0], ids[2], ids[1]]
    # a new app object over the same SQLite file: the queue comes back and runs
    with TestClient(create_app(Settings(outputs_dir=out)), base_url=BASE) as c:
        deadline = time.time() + 120
        while time.time() < deadline and len(c.get("/history").json()) < 4:
            time.sleep(0.1)
        history = c.get("/history").json()
        assert set(history) == {*ids, dropped}
        assert history[dropped]["status"]["status_str"] == "error"
        for pid in ids:
            assert history[pid]["status"]["status_str"] == "success"
            image = history[pid]["outputs"]["9"]["images"][0]
            r = c.get("/view", params=image)
            assert r.status_code == 200 and r.content.startswith(b"\x89PNG")
        order = [j["id"] for j in sorted(c.get("/opensd/v1/jobs").json()["history"],
                                         key=lambda j: j["run_order"] or 0) if j["run_order"]]
        assert order == [ids[0], ids[2], ids[1]]  # round-robin: alice, bob, alice


@pytest.mark.parametrize("n", [3])
def test_a1111_job_status_and_images_by_id(tmp_path, n):
    with TestClient(create_app(Settings(outputs_dir=tmp_path / "out")), base_url=BASE) as c:
        r = c.post("/sdapi/v1/txt2img", json={**BODY, "batch_size": n})
        assert r.status_code == 200
        jobs = c.get("/opensd/v1/jobs").json()["history"]
        job = jobs[0]
        assert job["status"] == DONE and len(job["result"]["files"]) == n
        img = c.get(f"/opensd/v1/jobs/{job['id']}/images/{n - 1}")
        assert img.status_code == 200 and img.content.startswith(b"\x89PNG")
        assert c.get(f"/opensd/v1/jobs/{job['id']}/images/{n}").status_code == 404


def test_a_job_cut_off_by_shutdown_is_queued_again(tmp_path):
    out = tmp_path / "out"
    slow = {k: {"class_type": v["class_type"], "inputs": dict(v["inputs"])} for k, v in COMFY_GRAPH.items()}
    slow["3"]["inputs"]["steps"] = 400
    with TestClient(create_app(Settings(outputs_dir=out)), base_url=BASE) as c:
        pid = c.post("/prompt", json={"prompt": slow, "client_id": "a"}).json()["prompt_id"]
        deadline = time.time() + 60
        while time.time() < deadline and c.app.state.opensd.queue.progress.step < 2:
            time.sleep(0.05)
        assert [i[1] for i in c.get("/queue").json()["queue_running"]] == [pid]
    with TestClient(create_app(Settings(outputs_dir=out, start_worker=False)), base_url=BASE) as c:
        assert [i[1] for i in c.get("/queue").json()["queue_pending"]] == [pid]
        assert c.get("/history").json() == {}
