"""`opensd workers` and /opensd/v1/workers on a server without Ray: one local worker with its device,
loaded model, current job and throughput; adding workers is refused in one line; an unreachable server
is one line too. (tests/test_ray_workers.py lists and adds Ray workers.)"""
from __future__ import annotations

import json

import httpx
from server_live import LiveServer, free_port

from opensd.cli import main
from opensd.server.settings import Settings


def test_workers_of_a_server_without_ray(tmp_path, capsys):
    with LiveServer(Settings(outputs_dir=tmp_path / "out")) as live:
        r = httpx.post(live.url + "/sdapi/v1/txt2img", json={"prompt": "a cat", "steps": 2, "width": 64,
                                                             "height": 64, "seed": 1}, timeout=120)
        assert r.status_code == 200
        assert main(["workers", "--url", live.url]) == 0
        table = capsys.readouterr().out.splitlines()
        assert table[0].split() == ["name", "kind", "node", "device", "alive", "current_job", "jobs_done",
                                    "images_per_minute", "loaded"]
        name, kind, _node, device, alive, job, done, rate, loaded = table[1].split()
        assert (name, kind, device, alive, job, done) == ("local", "local", "cpu", "True", "-", "1")
        assert float(rate) > 0 and loaded == "opensd-emoji.safetensors"
        assert table[2] == "0 jobs waiting"
        assert main(["workers", "--url", live.url, "--json"]) == 0
        answer = json.loads(capsys.readouterr().out)
        assert answer["ray"] is None and answer["workers"][0]["images"] == 1
        assert main(["workers", "add", "2", "--url", live.url]) == 2
        err = capsys.readouterr().err
        assert "this server runs jobs on its own machine" in err and len(err.strip().splitlines()) == 1
    assert main(["workers", "--url", f"http://127.0.0.1:{free_port()}"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach an opensd server" in err and "Traceback" not in err
