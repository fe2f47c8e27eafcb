"""GET/POST /opensd/v1/workers: the workers taking the queue's jobs (this process, Ray actors), with
their node, device, loaded models, current job and throughput; POST starts more Ray workers.
`opensd workers` (cli/workers.py) is the command-line face."""
from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from ..errors import InvalidArgument
from ..pipeline.device import resolve_device


class AddWorkers(BaseModel):
    count: int = Field(1, ge=1, le=256, description="Ray workers to start")


def router(state) -> APIRouter:
    api = APIRouter(prefix="/opensd/v1", tags=["workers"])
    cache = state.cache
    state.queue.local.details = lambda: {
        "device": str(resolve_device(state.settings.device)),
        "loaded": [{"model": cache.name_of(path)} for path, _ in cache.loaded()]}

    @api.get("/workers")
    def workers() -> dict:
        """Every worker: name, kind (local, ray), node, device, alive, loaded models, current job,
        jobs done, images made, images per minute of busy time; and the jobs waiting."""
        return {"ray": state.settings.ray, "pending": state.queue.pending_count(),
                "workers": [{**w.describe(), **w.stats.view()} for w in list(state.queue.workers)]}

    @api.post("/workers")
    def add(body: AddWorkers) -> dict:
        """Start `count` more Ray workers (each takes jobs once Ray has placed it)."""
        if state.pool is None:
            raise InvalidArgument("workers: this server runs jobs on its own machine; start it with "
                                  "`opensd serve --ray auto|ADDRESS` to add workers")
        return {"added": [w.name for w in state.pool.add(body.count)]}

    return api
