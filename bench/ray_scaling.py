"""Throughput of the job queue on Ray workers: 1 and 2 CPU workers of 1 thread each (and this
process's own worker on 1 thread, for reference), the built-in model at its native 64x64, for A1111
txt2img jobs and for ComfyUI graphs (the default txt2img graph, its file shipped back to this process).

    python bench/ray_scaling.py [--jobs 24] [--steps 20] [--workers 1 2] [--kinds a1111 comfy]

Each configuration starts a local Ray node with as many CPUs as workers, waits until every worker
is up, warms each one with a job (its model load), then times `--jobs` txt2img jobs queued at once
(distinct seeds). Prints a Markdown table: images per second, seconds per image, and the speed-up
over one worker. On a machine shared with other work the load average (printed) says how far to
trust it; docs/scale-out.md quotes a run.
"""
from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from pathlib import Path

import torch

from opensd.library.models_dir import BUILTIN_CHECKPOINT
from opensd.server import a1111_api
from opensd.server.comfy_api import ComfyHub
from opensd.server.a1111_models import Txt2ImgRequest
from opensd.server.app import ServerState
from opensd.server.settings import Settings
from opensd.server.store import DONE

KINDS = {"a1111": "A1111 txt2img", "comfy": "ComfyUI graph"}
# the default txt2img graph on the built-in model (tests/server_live.py holds the same one)
COMFY_GRAPH = {
    "3": {"class_type": "KSampler", "inputs": {"seed": 5, "steps": 20, "cfg": 6.0, "sampler_name": "euler",
                                               "scheduler": "normal", "denoise": 1.0, "model": ["4", 0],
                                               "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": BUILTIN_CHECKPOINT}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "an emoji", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "bench", "images": ["8", 0]}},
}


def payload(state, kind: str, i: int, steps: int, seed: int) -> dict:
    if kind == "a1111":
        req = Txt2ImgRequest(prompt=f"emoji {i % 9}", steps=steps, width=64, height=64, seed=seed)
        return a1111_api.prepare(state, req, "txt2img")
    graph = copy.deepcopy(COMFY_GRAPH)
    graph["3"]["inputs"].update(seed=seed, steps=steps, cfg=6.0)
    graph["6"]["inputs"]["text"] = f"emoji {i % 9}"
    return {"prompt": graph, "client_id": None, "extra_data": {}}


def run_jobs(state, kind: str, n: int, steps: int, seed0: int) -> float:
    """Seconds for `n` jobs queued at once to finish."""
    payloads = [payload(state, kind, i, steps, seed0 + i) for i in range(n)]
    t0 = time.perf_counter()
    jobs = [state.queue.submit(kind, p, f"client{i % 4}") for i, p in enumerate(payloads)]
    for job in jobs:
        done, _ = state.queue.future(job.id).result(3600)
        assert done.status == DONE, done.error
        assert kind == "a1111" or done.result["status"]["status_str"] == "success", done.result["status"]
    return time.perf_counter() - t0


def measure(workers: int | None, kind: str, jobs: int, steps: int) -> dict:
    """`workers` Ray workers (None: this process's own worker, 1 thread)."""
    import ray

    with tempfile.TemporaryDirectory() as tmp:
        ray_on = workers is not None
        if ray_on:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
        else:
            torch.set_num_threads(1)
        settings = Settings(outputs_dir=Path(tmp), ray="auto" if ray_on else None, ray_workers=workers,
                            ray_threads=1 if ray_on else None, queue_size=10_000, work_budget=1e12)
        state = ServerState(settings)
        state.comfy = ComfyHub(state)  # the ComfyUI runner and folders, as create_app adds them
        state.queue.start()
        try:
            if ray_on:
                deadline = time.time() + 300
                while not all(w.describe()["alive"] for w in state.pool.workers):
                    assert time.time() < deadline, "Ray workers did not start"
                    time.sleep(0.1)
            run_jobs(state, kind, workers or 1, steps, 10_000)  # warm-up: each worker loads the model
            load = os.getloadavg()[0]
            seconds = run_jobs(state, kind, jobs, steps, 0)
            return {"workers": workers, "kind": kind, "seconds": seconds, "ips": jobs / seconds,
                    "load": (load, os.getloadavg()[0])}
        finally:
            state.queue.stop()
            if state.pool is not None:
                state.pool.close()
            state.store.close()
            if ray_on:
                ray.shutdown()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=24)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--kinds", nargs="+", choices=["a1111", "comfy"], default=["a1111", "comfy"])
    args = ap.parse_args()
    print(f"{args.jobs} jobs at once, 64x64, {args.steps} steps, built-in model; {os.cpu_count()} CPU cores; "
          f"torch {torch.__version__}")
    print("| jobs | workers (1 thread each) | images/s | s/image | speed-up over 1 Ray worker | 1-min load (start, end) |")
    print("|---|---|---:|---:|---:|---|")
    for kind in args.kinds:
        rows = [measure(None, kind, args.jobs, args.steps)] + [measure(w, kind, args.jobs, args.steps)
                                                               for w in args.workers]
        base = next((r["ips"] for r in rows if r["workers"] == 1), None)
        for r in rows:
            name = "this process (no Ray)" if r["workers"] is None else f"{r['workers']} Ray"
            speed = f"{r['ips'] / base:.2f}" if base else "-"
            print(f"| {KINDS[kind]} | {name} | {r['ips']:.2f} | {1 / r['ips']:.2f} | {speed} | "
                  f"{r['load'][0]:.1f}, {r['load'][1]:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
