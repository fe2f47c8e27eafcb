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
from .train_job import KIND, TRAIN, Runs

BASE = PREFIX + "/train"
RECENT = 20  # finished training jobs listed


def _missing(job_id: str) -> JSONResponse:
    return JSONResponse({"error": "NotFound", "detail": f"job_id: no training job {job_id[:64]!r}"}, status_code=404)


def _text(payload: dict, key: str) -> str:
    return payload[key] if isinstance(payload.get(key), str) else ""


def router(state) -> APIRouter:
    api = APIRouter(prefix=BASE, tags=["opensd training"])
    runs = Runs(state.settings.data_dir / "training")
    state.queue.register(KIND, lambda job, ctl: train_job.run(state, state.datasets, runs, job, ctl))

    def status(job) -> TrainStatus:
        p = job.payload if isinstance(job.payload, dict) else {}
        run = p.get("run") if runs.known(p.get("run")) else None  # a damaged record shows what it can
        step, points = runs.curve(run) if run else (0, [])
        steps = p.get("steps")
        return TrainStatus(
            job_id=job.id, run=run or "", status=job.status, type=p.get("type") if p.get("type") in TRAIN else "lora",
            output=_text(p, "output"), label=_text(p, "label"), step=step, losses=points, error=job.error,
            steps=steps if isinstance(steps, int) and not isinstance(steps, bool) else 0,
            samples=[f"{BASE}/jobs/{job.id}/samples/{n}" for n in runs.samples(run)] if run else [],
            resumable=bool(run) and job.status in (INTERRUPTED, FAILED) and (runs.folder(run) / "state.pt").is_file())

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
        """Training jobs: the running ones, the waiting ones, then the last finished, newest first."""
        live = [p.job for p in state.queue.running() if p.job.kind == KIND] + \
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
        run = found.payload.get("run") if found is not None and isinstance(found.payload, dict) else None
        path = runs.sample(run, name) if runs.known(run) else None
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
        req, run = train_job.request_of(found.payload)
        await run_in_threadpool(train_job.plan, state, state.datasets, req, runs.folder(run))
        return queued(state, state.queue.submit(KIND, found.payload, client_id(request)))

    return api
