"""ComfyUI's Jobs API (/jobs, /jobs/{id}, /jobs/{id}/cancel, /jobs/cancel): one list of the
ComfyUI jobs on our queue (running, pending, finished) with paging, which the frontend's queue and
history panels read instead of /queue and /history."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from .store import CANCELLED, FINAL, INTERRUPTED

KIND = "comfy"
STATUSES = ("pending", "in_progress", "completed", "failed", "cancelled")
MAX_HISTORY = 10_000


def _status(job) -> str:
    if job.status in (CANCELLED, INTERRUPTED):
        return "cancelled"
    status = (job.result or {}).get("status") or {}
    if status.get("status_str") == "success":
        return "completed"
    if any(m[0] == "execution_interrupted" for m in status.get("messages", []) if isinstance(m, list) and m):
        return "cancelled"
    return "failed"


def _summary(outputs: dict) -> tuple[int, dict | None]:
    """How many output files, and the first image to preview (type 'output' preferred)."""
    count, first, fallback = 0, None, None
    for node_id, node_out in outputs.items():
        for media, items in (node_out or {}).items():
            if not isinstance(items, list):
                continue
            for item in items:
                if not isinstance(item, dict):
                    continue
                count += 1
                if media == "images":
                    entry = {**item, "nodeId": node_id, "mediaType": media}
                    if first is None and item.get("type") == "output":
                        first = entry
                    fallback = fallback or entry
    return count, first or fallback


def _error(status: dict) -> dict | None:
    for kind, data in status.get("messages", []):
        if kind == "execution_error" and isinstance(data, dict):
            return {"node_id": str(data.get("node_id") or ""), "node_type": str(data.get("node_type") or ""),
                    "exception_message": str(data.get("exception_message", "")),
                    "exception_type": str(data.get("exception_type", "")),
                    "traceback": [str(t) for t in data.get("traceback") or []],
                    "executed": [str(x) for x in data.get("executed") or []]}
    return None


def job_entry(job, status: str, detail: bool = False) -> dict:
    entry = {"id": job.id, "status": status, "create_time": int(job.created * 1000),
             "priority": job.seq, "outputs_count": 0}
    extra = job.payload.get("extra_data") or {}
    workflow = ((extra.get("extra_pnginfo") or {}).get("workflow") or {})
    if isinstance(workflow, dict) and isinstance(workflow.get("id"), str):
        entry["workflow_id"] = workflow["id"]
    if job.started:
        entry["execution_start_time"] = int(job.started * 1000)
    if status in ("completed", "failed", "cancelled"):
        result = job.result or {}
        outputs = result.get("outputs") or {}
        entry["outputs_count"], preview = _summary(outputs)
        if preview is not None:
            entry["preview_output"] = preview
        if job.finished:
            entry["execution_end_time"] = int(job.finished * 1000)
        error = _error(result.get("status") or {})
        if error is not None:
            entry["execution_error"] = error
        if detail:
            entry["outputs"] = outputs
            entry["execution_status"] = result.get("status") or {}
    if detail:
        entry["workflow"] = {"prompt": job.payload.get("prompt"), "extra_data": extra}
    return entry


def router(state) -> APIRouter:
    api = APIRouter(tags=["ComfyUI"])
    q = state.queue

    def all_jobs() -> list[dict]:
        out = [job_entry(p.job, "in_progress") for p in q.running() if p.job.kind == KIND]
        out += [job_entry(j, "pending") for j in q.pending() if j.kind == KIND]
        out += [job_entry(j, _status(j)) for j in state.store.history(KIND, limit=MAX_HISTORY)]
        return out

    @api.get("/jobs")
    def list_jobs(status: str = "", limit: int = 200, offset: int = 0, sort_order: str = "desc",
                  workflow_id: str | None = None):
        wanted = [s for s in status.split(",") if s] or list(STATUSES)
        unknown = [s for s in wanted if s not in STATUSES]
        if unknown:
            return JSONResponse({"error": "InvalidArgument",
                                 "detail": f"status: {unknown[0]!r} is not one of {', '.join(STATUSES)}"},
                                status_code=400)
        if limit < 1 or offset < 0 or sort_order not in ("asc", "desc"):
            return JSONResponse({"error": "InvalidArgument",
                                 "detail": "limit: must be >= 1, offset >= 0, sort_order asc or desc"},
                                status_code=400)
        jobs = [j for j in all_jobs() if j["status"] in wanted
                and (workflow_id is None or j.get("workflow_id") == workflow_id)]
        jobs.sort(key=lambda j: j["create_time"], reverse=sort_order == "desc")
        page = jobs[offset:offset + limit]
        return {"jobs": page, "pagination": {"offset": offset, "limit": limit, "total": len(jobs),
                                             "has_more": offset + len(page) < len(jobs)}}

    @api.get("/jobs/{job_id}")
    def get_job(job_id: str):
        for p in q.running():
            if p.job.id == job_id and p.job.kind == KIND:
                return job_entry(p.job, "in_progress", detail=True)
        for j in q.pending():
            if j.id == job_id and j.kind == KIND:
                return job_entry(j, "pending", detail=True)
        job = state.store.get(job_id)
        if job is None or job.kind != KIND or job.status not in FINAL:
            return JSONResponse({"error": "NotFound", "detail": f"job_id: no ComfyUI job {job_id!r}"},
                                status_code=404)
        return job_entry(job, _status(job), detail=True)

    def cancel(job_id: str) -> bool:
        return q.cancel(job_id) or q.interrupt(job_id)

    @api.post("/jobs/{job_id}/cancel")
    def cancel_one(job_id: str):
        if not cancel(job_id):
            return JSONResponse({"error": "NotFound", "detail": f"job_id: {job_id!r} is not queued or running"},
                                status_code=404)
        return {"cancelled": [job_id]}

    @api.post("/jobs/cancel")
    async def cancel_many(request: Request):
        try:
            body = await request.json()
        except ValueError:
            body = None
        ids = body.get("job_ids") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            return JSONResponse({"error": "InvalidArgument", "detail": "job_ids: expected a list of job ids"},
                                status_code=400)
        return {"cancelled": [i for i in ids if cancel(i)]}

    return api
