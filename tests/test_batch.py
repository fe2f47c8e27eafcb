"""`opensd batch`: JSONL lines of A1111 requests -> images and manifest.jsonl; a run killed halfway and
run again makes only the rest; the manifest matches the files; a line's key is its normalised request;
mistakes are one line naming the line and field, the other lines still run; lines with A1111 scripts
(X/Y/Z plot, prompt matrix, prompts from file) save their grid and every cell, each the pixels of the
single generation it stands for; --ray makes the same files on Ray workers."""
from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from ray_cluster import local_ray
from server_live import free_port, models_dir

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
        (a, _), (b, _) = batch.read_lines(state, tmp_path / "a.jsonl"), batch.read_lines(state, tmp_path / "b.jsonl")
        assert [line.number for line in a] == [1, 3, 4] and b[0].number == 2
        assert b[0].key == a[0].key                       # defaults and key order do not matter
        assert len({line.key for line in a}) == 3         # a repeated request is a second job
        state.set_model(state.cache.resolve("opensd-emoji"))
        assert batch.read_lines(state, tmp_path / "b.jsonl")[0][0].key == b[0].key
    finally:
        state.store.close()


@pytest.mark.parametrize("text, message", [
    ('\nnot json\n', "jobs.jsonl:2: not a JSON object"),
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
    with jobs.open("a") as f:  # a grid line: it runs on the front door's own worker
        grid = dict(LINE, prompt="emoji 1", seed=3, script_name=XYZ, script_args=xyz_args(4, "1-2"))
        f.write(json.dumps(grid) + "\n")
    threads = torch.get_num_threads()
    try:
        assert main(["batch", str(jobs), "-o", str(tmp_path / "here"), "--threads", "1"]) == 0  # as the worker
        with local_ray(num_cpus=1):
            assert main(["batch", str(jobs), "-o", str(tmp_path / "ray"), "--ray", "auto", "--ray-workers", "1",
                         "--ray-threads", "1", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    here, there = manifest(tmp_path / "here"), manifest(tmp_path / "ray")
    assert len(here) == 12 + 3 and sum(e["grid"] for e in there) == 1
    assert sorted((e["key"], e["file"], e["sha256"]) for e in here) == sorted((e["key"], e["file"], e["sha256"])
                                                                            for e in there)
    check_manifest_matches_files(tmp_path / "ray")


XYZ = "X/Y/Z plot"
TINY = {"prompt": "a cat", "seed": 5, "width": 64, "height": 64}


def xyz_args(x_type, x_values, y_type=0, y_values="", y_dropdown=(), z_type=0, z_values="", lone=False,
             sub_grids=False):
    # A1111 1.10: x_type, x_values, x_values_dropdown, (y...), (z...), draw_legend, include_lone_images,
    # include_sub_grids, no_fixed_seeds, vary_seeds_x/y/z, margin_size, csv_mode
    return [x_type, x_values, [], y_type, y_values, list(y_dropdown), z_type, z_values, [], True, lone, sub_grids,
            False, False, False, False, 0, False]


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_script_lines_save_their_grid_and_every_cell_as_single_generations(tmp_path, capsys):
    singles = [dict(TINY, steps=n, sampler_name=s) for s in ("Euler", "DPM++ 2M") for n in (1, 2)]  # X fastest
    lines = [
        dict(TINY, script_name=XYZ, script_args=xyz_args(4, "1-2", 9, "", ["Euler", "DPM++ 2M"])),  # 1
        *singles,                                                                                     # 2-5
        dict(TINY, steps=1, script_name="x/y/z plots", script_args=[]),                               # 6
        dict(TINY, steps=1, script_name=XYZ, script_args=xyz_args(999, "1")),                         # 7
        dict(TINY, prompt="a cat|red", steps=1, script_name="Prompt matrix",                         # 8
             script_args=[False, True, "positive", "comma", 0]),  # different seeds: 5, 6
        dict(TINY, prompt="a cat, red", steps=1, seed=6),                                             # 9
        dict(TINY, prompt="photo", steps=1, script_name="Prompts from file or textbox",               # 10
             script_args=[False, False, "end", '--prompt "a dog" --seed 9\nplain\n']),
        dict(TINY, prompt="photo a dog", steps=1, seed=9),                                            # 11
        dict(TINY, prompt="photo plain", steps=1),                                                    # 12
        dict(TINY, steps=1, script_name=XYZ,                                                          # 13
             script_args=xyz_args(4, "1", z_type="CFG Scale", z_values="5, 9", sub_grids=True)),
    ]
    jobs, out = tmp_path / "jobs.jsonl", tmp_path / "out"
    jobs.write_text("".join(json.dumps(line) + "\n" for line in lines))
    cmd = ["batch", str(jobs), "-o", str(out), "--models-dir", str(models_dir(tmp_path)), "--model", "tiny"]
    assert main(cmd) == 1  # the two refused lines
    err = capsys.readouterr().err
    assert err.count("opensd batch: jobs.jsonl:6: Script 'x/y/z plots' not found\n") == 1, err
    assert err.count("opensd batch: jobs.jsonl:7: X type: 999 is not an axis index") == 1, err
    assert "11 requests, 0 done before, 11 to run (2 refused)" in err and "Traceback" not in err
    assert "22/22" in err  # the progress bar counts every grid and cell: 5 + 4 + 3 + 1 + 2 + 2 + 5
    by_line: dict[int, list[dict]] = {}
    for e in manifest(out):
        by_line.setdefault(e["line"], []).append(e)
    assert sorted(by_line) == [1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13]
    file = {n: [out / e["file"] for e in sorted(entries, key=lambda e: e["index"])] for n, entries in by_line.items()}

    grid_line = sorted(by_line[1], key=lambda e: e["index"])
    assert [e["grid"] for e in grid_line] == [True, False, False, False, False]
    assert [e["images"] for e in grid_line] == [5] * 5 and [e["seed"] for e in grid_line] == [5] * 5
    assert grid_line[0]["infotext"].startswith("a cat\nSteps: 1, Sampler: Euler,")  # the first cell's
    assert "Script: X/Y/Z plot, X Type: Steps, X Values: 1-2, Y Type: Sampler" in grid_line[0]["infotext"]
    grid = pixels(file[1][0])
    pad_left, pad_top = 64 * 3 // 4, grid.shape[0] - 2 * 64
    for k in range(4):  # each cell is the single generation of its settings and seed, in its file and the grid
        single = pixels(file[2 + k][0])
        assert (pixels(file[1][1 + k]) == single).all(), singles[k]
        assert grid_line[1 + k]["infotext"] == by_line[2 + k][0]["infotext"]
        x, y = pad_left + 64 * (k % 2), pad_top + 64 * (k // 2)
        assert (grid[y:y + 64, x:x + 64] == single).all()

    matrix = sorted(by_line[8], key=lambda e: e["index"])
    assert [e["grid"] for e in matrix] == [True, False, False] and [e["seed"] for e in matrix] == [5, 5, 6]
    assert (pixels(file[8][1]) == pixels(file[2][0])).all() and (pixels(file[8][2]) == pixels(file[9][0])).all()
    prompts = sorted(by_line[10], key=lambda e: e["index"])
    assert [e["grid"] for e in prompts] == [False, False] and [e["seed"] for e in prompts] == [9, 5]
    assert (pixels(file[10][0]) == pixels(file[11][0])).all() and (pixels(file[10][1]) == pixels(file[12][0])).all()
    sub_grids = sorted(by_line[13], key=lambda e: e["index"])  # the grid, one per CFG (Z) value, both cells
    assert [e["grid"] for e in sub_grids] == [True, True, True, False, False]
    # as A1111 saves them: grids in txt2img-grids, cells and single images in txt2img-images
    assert {e["file"].split("/")[0] for e in manifest(out) if e["grid"]} == {"txt2img-grids"}
    assert {e["file"].split("/")[0] for e in manifest(out) if not e["grid"]} == {"txt2img-images"}
    assert "CFG scale: 9" in sub_grids[4]["infotext"]
    check_manifest_matches_files(out)

    made = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    assert main(cmd) == 1
    err = capsys.readouterr().err
    assert "11 requests, 11 done before, 0 to run (2 refused)" in err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == made  # the grids were not made again


def test_a_script_lines_image_count_is_every_grid_and_cell(tmp_path):
    import base64
    import io

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "gray").save(buf, "PNG")
    init = base64.b64encode(buf.getvalue()).decode()
    lines = [
        dict(TINY, script_name=XYZ, script_args=xyz_args(4, "1-2", z_type="CFG Scale", z_values="5, 7, 9",
                                                         sub_grids=True)),  # 1 + 3 grids, 6 cells
        dict(TINY, batch_size=2, script_name=XYZ, script_args=xyz_args(4, "1-3", lone=True)),  # 1 + 3 x 2
        dict(TINY, prompt="a|b|c", script_name="Prompt matrix", script_args=[False, False, "positive"]),  # 1 + 4
        dict(TINY, script_name="Prompts from file or textbox",
             script_args=[False, False, "end", "one\n--batch_size 2"]),  # 1 + 2
        dict(TINY, init_images=[init], n_iter=2, script_name="SD upscale", script_args=[None, 16, 1, 2]),
        dict(TINY, batch_size=2, n_iter=3),
    ]
    (tmp_path / "jobs.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    state = ServerState(Settings(outputs_dir=tmp_path / "out"))
    try:
        read, refused = batch.read_lines(state, tmp_path / "jobs.jsonl")
        assert refused == [] and [line.images for line in read] == [10, 7, 5, 3, 2, 6]
    finally:
        state.store.close()
