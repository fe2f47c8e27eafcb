"""`opensd batch`: JSONL lines of A1111 requests -> images and manifest.jsonl; a run killed halfway and
run again makes only the rest; the manifest matches the files; a line's key is its normalised request;
mistakes are one line naming the line and field; --ray makes the same files on Ray workers."""
from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ray_cluster import local_ray
from server_live import free_port

from opensd.cli import main
from opensd.distributed import batch
from opensd.server.app import ServerState
from opensd.server.settings import Settings

LINE = {"steps": 2, "width": 64, "height": 64}


def write_jobs(path: Path, n: int, **extra) -> Path:
    path.write_text("".join(json.dumps({**LINE, "prompt": f"emoji {i % 7}", "seed": 1000 + i, **extra}) + "\n"
                            for i in range(n)))
    return path


def manifest(out: Path) -> list[dict]:
    return [json.loads(t) for t in (out / "manifest.jsonl").read_text().splitlines()]


def check_manifest_matches_files(out: Path) -> None:
    entries = manifest(out)
    for e in entries:
        assert hashlib.sha256((out / e["file"]).read_bytes()).hexdigest() == e["sha256"], e["file"]
    listed = sorted(e["file"] for e in entries)
    assert listed == sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))  # every image, once


def test_a_batch_killed_halfway_and_run_again_makes_only_the_rest(tmp_path):
    jobs, out = write_jobs(tmp_path / "jobs.jsonl", 50), tmp_path / "out"
    cmd = [sys.executable, "-m", "opensd.cli", "batch", str(jobs), "-o", str(out), "--threads", "1"]
    first = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out / "manifest.jsonl").is_file() or len(manifest(out)) < 25:
        assert first.poll() is None and time.time() < deadline, first.stderr.read() if first.poll() else "slow"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    kept = {e["key"]: (out / e["file"]).stat().st_mtime_ns for e in manifest(out)}
    assert 25 <= len(kept) < 50

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert f"50 requests, {len(kept)} done before, {50 - len(kept)} to run" in again.stderr
    assert "img/s" in again.stderr or "s/img" in again.stderr  # tqdm's throughput
    entries = manifest(out)
    assert len({e["key"] for e in entries}) == 50 and len(entries) == 50
    assert sorted(e["line"] for e in entries) == list(range(1, 51))
    assert sorted(e["seed"] for e in entries) == list(range(1000, 1050))
    assert all(e["infotext"].startswith(f"emoji {(e['seed'] - 1000) % 7}\nSteps: 2,") for e in entries)
    for e in entries:  # the first run's images were not made again
        if e["key"] in kept:
            assert (out / e["file"]).stat().st_mtime_ns == kept[e["key"]]
    check_manifest_matches_files(out)
    third = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert "50 requests, 50 done before, 0 to run" in third.stderr


def test_a_lines_key_is_its_normalised_request(tmp_path):
    state = ServerState(Settings(outputs_dir=tmp_path / "out"))
    try:
        (tmp_path / "a.jsonl").write_text('{"prompt": "a cat", "steps": 2}\n\n{"prompt": "a cat", "steps": 2}\n'
                                          '{"prompt": "a dog", "steps": 2}\n')
        (tmp_path / "b.jsonl").write_text('# the same request, spelled out\n'
                                          '{"steps": 2, "cfg_scale": 7.0, "prompt": "a cat", "seed": -1}\n')
        a, b = batch.read_lines(state, tmp_path / "a.jsonl"), batch.read_lines(state, tmp_path / "b.jsonl")
        assert [line.number for line in a] == [1, 3, 4] and b[0].number == 2
        assert b[0].key == a[0].key                       # defaults and key order do not matter
        assert len({line.key for line in a}) == 3         # a repeated request is a second job
        state.set_model(state.cache.resolve("opensd-emoji"))
        assert batch.read_lines(state, tmp_path / "b.jsonl")[0].key == b[0].key
    finally:
        state.store.close()


@pytest.mark.parametrize("text, message", [
    ('{"prompt": "x"}\nnot json\n', "jobs.jsonl:2: not a JSON object"),
    ('[1, 2]\n', "jobs.jsonl:1: not a JSON object"),
    ('{"prompt": "x", "steps": 0}\n', "jobs.jsonl:1: steps: Input should be greater than or equal to 1"),
    ('{"prompt": "x", "sampler_name": "nope"}\n', "jobs.jsonl:1: sampler_name/scheduler:"),
    ('{"prompt": "x", "override_settings": {"sd_model_checkpoint": "nope"}}\n',
     "jobs.jsonl:1: override_settings.sd_model_checkpoint: no model named 'nope'"),
    ('\n', "holds no requests"),
])
def test_batch_mistakes_are_one_line(tmp_path, capsys, text, message):
    (tmp_path / "jobs.jsonl").write_text(text)
    assert main(["batch", str(tmp_path / "jobs.jsonl"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_batch_flag_mistakes_are_one_line(tmp_path, capsys):
    write_jobs(tmp_path / "jobs.jsonl", 1)
    assert main(["batch", str(tmp_path / "jobs.jsonl"), "-o", str(tmp_path / "o"), "--model", "nope"]) == 2
    assert "model: no model named 'nope'" in capsys.readouterr().err
    assert main(["batch", str(tmp_path / "jobs.jsonl"), "-o", str(tmp_path / "o"), "--ray-workers", "2"]) == 2
    assert "ray-workers: only with --ray" in capsys.readouterr().err
    assert main(["batch", str(tmp_path / "jobs.jsonl"), "-o", str(tmp_path / "o"), "--ray-ship-models"]) == 2
    assert "ray-ship-models: only with --ray" in capsys.readouterr().err
    assert main(["batch", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    closed = f"127.0.0.1:{free_port()}"
    assert main(["batch", str(tmp_path / "jobs.jsonl"), "-o", str(tmp_path / "o"), "--ray", closed]) == 2
    assert f"ray: cannot reach a Ray cluster at {closed}" in capsys.readouterr().err


def test_batch_on_ray_without_ray_installed_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    write_jobs(tmp_path / "jobs.jsonl", 1)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
    assert main(["batch", str(tmp_path / "jobs.jsonl"), "-o", str(tmp_path / "o"), "--ray", "auto"]) == 2
    err = capsys.readouterr().err
    assert 'ray: Ray is not installed; pip install "opensd[ray]"' in err and len(err.strip().splitlines()) == 1


def test_batch_on_ray_makes_the_files_one_machine_makes(tmp_path):
    jobs = write_jobs(tmp_path / "jobs.jsonl", 6, batch_size=2)
    threads = torch.get_num_threads()
    try:
        assert main(["batch", str(jobs), "-o", str(tmp_path / "here"), "--threads", "1"]) == 0  # as the worker
    finally:
        torch.set_num_threads(threads)
    with local_ray(num_cpus=1):
        assert main(["batch", str(jobs), "-o", str(tmp_path / "ray"), "--ray", "auto", "--ray-workers", "1",
                     "--ray-threads", "1"]) == 0
    here, there = manifest(tmp_path / "here"), manifest(tmp_path / "ray")
    assert len(here) == 12
    assert sorted((e["key"], e["file"], e["sha256"]) for e in here) == sorted((e["key"], e["file"], e["sha256"])
                                                                            for e in there)
    check_manifest_matches_files(tmp_path / "ray")
