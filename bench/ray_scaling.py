"""Throughput of the job queue on Ray workers: 1 and 2 CPU workers of 1 thread each (and this
process's own worker on 1 thread, for reference), the built-in model at its native 64x64.

    python bench/ray_scaling.py [--jobs 24] [--steps 20] [--workers 1 2]

Each configuration starts a local Ray node with as many CPUs as workers, waits until every worker
is up, warms each one with a job (its model load), then times `--jobs` txt2img jobs queued at once
(distinct seeds). Prints a Markdown table: images per second, seconds per image, and the speed-up
over one worker. On a machine shared with other work the load average (printed) says how far to
trust it; docs/scale-out.md quotes a run.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from opensd.server import a1111_api
from opensd.server.a1111_models import Txt2ImgRequest
from opensd.server.app import ServerState
from opensd.server.settings import Settings
from opensd.server.store import DONE


def run_jobs(state, n: int, steps: int, seed0: int) -> float:
    """Seconds for `n` jobs queued at once to finish."""
    payloads = [a1111_api.prepare(state, Txt2ImgRequest(prompt=f"emoji {i % 9}", steps=steps, width=64, height=64,
                                                        seed=seed0 + i), "txt2img") for i in range(n)]
    t0 = time.perf_counter()
    jobs = [state.queue.submit("a1111", p, f"client{i % 4}") for i, p in enumerate(payloads)]
    for job in jobs:
        done, _ = state.queue.future(job.id).result(3600)
        assert done.status == DONE, done.error
    return time.perf_counter() - t0


def measure(workers: int | None, jobs: int, steps: int) -> dict:
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
        state.queue.start()
        try:
            if ray_on:
                deadline = time.time() + 300
                while not all(w.describe()["alive"] for w in state.pool.workers):
                    assert time.time() < deadline, "Ray workers did not start"
                    time.sleep(0.1)
            run_jobs(state, workers or 1, steps, 10_000)  # warm-up: each worker loads the model
            load = os.getloadavg()[0]
            seconds = run_jobs(state, jobs, steps, 0)
            return {"workers": workers, "seconds": seconds, "ips": jobs / seconds,
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
    args = ap.parse_args()
    rows = [measure(None, args.jobs, args.steps)] + [measure(w, args.jobs, args.steps) for w in args.workers]
    base = next((r["ips"] for r in rows if r["workers"] == 1), None)
    print(f"{args.jobs} txt2img jobs, 64x64, {args.steps} steps, built-in model; {os.cpu_count()} CPU cores; "
          f"torch {torch.__version__}")
    print("| workers (1 thread each) | images/s | s/image | speed-up over 1 Ray worker | 1-min load (start, end) |")
    print("|---|---:|---:|---:|---|")
    for r in rows:
        name = "this process (no Ray)" if r["workers"] is None else f"{r['workers']} Ray"
        speed = f"{r['ips'] / base:.2f}" if base else "-"
        print(f"| {name} | {r['ips']:.2f} | {1 / r['ips']:.2f} | {speed} | {r['load'][0]:.1f}, {r['load'][1]:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
