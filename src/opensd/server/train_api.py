"""The training routes (/opensd/v1/train...): queue a LoRA, DreamBooth or embedding run on a dataset,
follow its steps, loss curve and sample images, resume a stopped run. Cancel is the queue's own
(DELETE /opensd/v1/jobs/{id}: a waiting job never runs, a running one stops after its step and
keeps its state)."""
from __future__ import annotations

import uuid

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse

from ..errors import InvalidArgument
from . import train_job
from .a1111_api import client_id
from .gallery_api import NOSNIFF
from .models_api import queued
from .opensd_api import PREFIX
from .opensd_models import JobQueued
from .store import FAILED, INTERRUPTED
from .train_bodies import TrainJobs, TrainRequest, TrainStatus
from .train_job import KIND, Runs

BASE = PREFIX + "/train"
RECENT = 20  # finished training jobs listed


def _missing(job_id: str) -> JSONResponse:
    return JSONResponse({"error": "NotFound", "detail": f"job_id: no training job {job_id[:64]!r}"}, status_code=404)


def router(state) -> APIRouter:
    api = APIRouter(prefix=BASE, tags=["opensd training"])
    runs = Runs(state.settings.data_dir / "training")
    state.queue.register(KIND, lambda job, ctl: train_job.run(state, state.datasets, runs, job, ctl))

    def status(job) -> TrainStatus:
        p = job.payload
        run = p.get("run", "")
        step, points = runs.curve(run)
        stopped = job.status in (INTERRUPTED, FAILED)
        return TrainStatus(
            job_id=job.id, run=run, status=job.status, type=p.get("type", "lora"), output=p.get("output", ""),
            label=p.get("label", ""), step=step, steps=p.get("steps", 0), losses=points, error=job.error,
            samples=[f"{BASE}/jobs/{job.id}/samples/{n}" for n in runs.samples(run)],
            resumable=stopped and (runs.folder(run) / "state.pt").is_file())

    def training_job(job_id: str):
        job = state.store.get(job_id)
        return job if job is not None and job.kind == KIND else None

    @api.post("", status_code=202)
    async def train(body: TrainRequest, request: Request) -> JobQueued:
        """Queue a training run (one job at a time on the queue shared with generation). Every name and
        value is checked now; the model is saved in the LoRA, embeddings or checkpoints folder as `output`."""
        run = uuid.uuid4().hex
        planned = await run_in_threadpool(train_job.plan, state, state.datasets, body, runs.folder(run))
        label = f"Train {body.type} {planned.output} on {body.dataset} ({body.steps} steps)"
        payload = {**body.model_dump(), "output": planned.output, "run": run, "label": label}
        return queued(state, state.queue.submit(KIND, payload, client_id(request)))

    @api.get("/jobs")
    def jobs() -> TrainJobs:
        """Training jobs: the running one, the waiting ones, then the last finished, newest first."""
        running = state.queue.progress.job
        live = ([running] if running is not None and running.kind == KIND else []) + \
            [j for j in state.queue.pending() if j.kind == KIND]
        return TrainJobs(items=[status(j) for j in live + state.store.history(kind=KIND, limit=RECENT)])

    @api.get("/jobs/{job_id}", responses={404: {"description": "no such training job"}})
    def job(job_id: str) -> TrainStatus:
        """A training job's status, step, loss curve and sample images."""
        found = training_job(job_id)
        return status(found) if found is not None else _missing(job_id)

    @api.get("/jobs/{job_id}/samples/{name}", response_class=FileResponse,
             responses={404: {"description": "no such sample"}})
    def sample(job_id: str, name: str):
        found = training_job(job_id)
        path = runs.sample(found.payload.get("run", ""), name) if found is not None else None
        if path is None:
            return JSONResponse({"error": "NotFound", "detail": f"name: no sample {name[:80]!r}"}, status_code=404)
        return FileResponse(path, media_type="image/png", headers=NOSNIFF)

    @api.post("/jobs/{job_id}/resume", status_code=202, responses={404: {"description": "no such training job"}})
    async def resume(job_id: str, request: Request) -> JobQueued:
        """Queue a stopped run again: it continues from its last saved step with the same settings."""
        found = training_job(job_id)
        if found is None:
            return _missing(job_id)
        if found.status not in (INTERRUPTED, FAILED):
            raise InvalidArgument(f"job_id: the job is {found.status}; only a stopped run resumes")
        payload = found.payload
        await run_in_threadpool(train_job.plan, state, state.datasets, train_job.request_of(payload),
                                runs.folder(payload["run"]))
        return queued(state, state.queue.submit(KIND, payload, client_id(request)))

    return api
