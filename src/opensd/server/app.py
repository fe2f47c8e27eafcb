"""`create_app(settings)`: the FastAPI app serving the A1111 and ComfyUI APIs over one job queue.

The shared pieces live on `ServerState` (settings, model folders, SQLite store, queue, model
cache, A1111 options); each API module builds its router from it."""
from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from .. import safe_paths
from ..errors import InvalidArgument, OpenSDError
from ..library.models_dir import ModelFolders
from ..library.network_models import whole_models
from ..text.styles import Style, load_styles
from ..text.wildcards import Wildcards
from ..version import __version__
from . import a1111_script_runs  # noqa: F401  (registers A1111's scripts)
from . import (a1111_api, a1111_controlnet, a1111_extras, a1111_run, comfy_api, comfy_frontend, datasets_api,
               docs_pages, etn_api, gallery_api, interrogate_api, models_api, opensd_api, served_files, train_api,
               ui_routes, workers_api, xyz_axes_api)
from .a1111_options import A1111Options
from .disk_room import NoRoom
from .jobs import JobQueue, QueueFull
from .model_cache import ModelCache
from .safe_json import SafeJSONResponse
from .security import Guard
from .settings import Settings
from .store import Store
from .waiting_room import WaitingRoom

log = logging.getLogger(__name__)


class ServerState:
    def __init__(self, settings: Settings, loader=None):
        self.settings = settings
        settings.outputs_dir.mkdir(parents=True, exist_ok=True)
        # without --models-dir, merged and trained models are saved under the data folder
        self.folders = ModelFolders(settings.models_dir, save_root=settings.models_dir or settings.data_dir / "models")
        self.store = Store(settings.db_path)
        self.queue = JobQueue(self.store, settings.queue_size)
        self.waiting = WaitingRoom(self.queue, settings.max_waiting)
        self.cache = ModelCache(self.folders, settings.device, settings.precision,
                                settings.model_budget_bytes, loader=loader, memory=settings.memory,
                                backend=settings.backend)
        self.options = A1111Options(settings.data_dir / "opensd-options.json", settings.outputs_dir, self.folders)
        self.wildcards = Wildcards(settings.wildcards_dir, flag="opensd serve --wildcards-dir")
        self._model: Path | None = None
        self._lock = threading.Lock()
        wanted = self.options.saved_model() or settings.default_model
        if wanted:
            try:
                self._model = self.cache.resolve(wanted)
            except InvalidArgument as e:
                log.warning("saved model %r is gone (%s); using the first model", wanted, e)
        self.queue.register("a1111", lambda job, ctl: a1111_run.run(self, job, ctl))
        self.pool = None  # Ray workers (opensd serve --ray), which run the A1111 generations
        if settings.ray:
            from ..distributed.pool import RayPool
            self.pool = RayPool(self, settings.ray, settings.ray_workers, settings.ray_threads)

    def styles(self) -> dict[str, Style]:
        """The prompt styles of the styles file as it is now (A1111 users edit it while it serves)."""
        return load_styles(self.settings.styles_file, "styles file")

    def current_model(self) -> Path:
        with self._lock:
            if self._model is None:
                models = whole_models(self.folders)
                if not models:
                    raise InvalidArgument("sd_model_checkpoint: no checkpoint found in the models folder")
                self._model = models[0].path
            return self._model

    def set_model(self, path: Path) -> None:
        with self._lock:
            self._model = path

    def options_view(self) -> dict:
        path = self.current_model()
        return {**self.options.view(), "sd_model_checkpoint": self.cache.title(path),
                "sd_checkpoint_hash": self.cache.sha256(path)}

    def set_options(self, changes: dict) -> None:
        """POST /sdapi/v1/options: every value is checked before any takes effect."""
        wanted = changes.get("sd_model_checkpoint")
        path = self.cache.resolve(wanted) if wanted is not None else None
        self.options.update(changes, self.cache.name_of(path) if path is not None else None)
        if path is not None:
            self.set_model(path)

    def memory(self) -> dict:
        from ..pipeline.peak_memory import system_ram
        ram = {}
        if (found := system_ram()) is not None:
            total, free = found
            ram = {"free": free, "used": total - free, "total": total}
        cuda = {"error": "CUDA is not in use"}
        try:
            import torch
            if torch.cuda.is_available():
                free, total = torch.cuda.mem_get_info()
                cuda = {"system": {"free": free, "used": total - free, "total": total}}
        except Exception as e:  # noqa: BLE001
            cuda = {"error": str(e)}
        loaded = [{"path": str(p), "bytes": n} for p, n in self.cache.loaded()]
        return {"ram": ram, "cuda": cuda,
                "opensd": {"loaded_models": loaded, "budget_bytes": self.cache.budget}}


def create_app(settings: Settings, loader=None) -> FastAPI:
    state = ServerState(settings, loader=loader)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.start_worker:
            state.queue.start()
        state.comfy.bind_loop()
        yield
        state.queue.stop()
        if state.pool is not None:
            state.pool.close()
        state.store.close()

    app = FastAPI(title="opensd", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Local Stable Diffusion: AUTOMATIC1111 API (/sdapi/v1) and ComfyUI API",
                  default_response_class=SafeJSONResponse)
    docs_pages.install(app)  # /docs with its assets served from here, not a CDN
    app.state.opensd = state
    if settings.allow_origins:  # browsers on these origins may read answers (Guard has checked them)
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.allow_origins), allow_methods=["*"],
                           allow_headers=["*"], allow_credentials=True)
    app.add_middleware(Guard, settings=settings)  # added last = runs first
    app.include_router(a1111_api.router(state))
    app.include_router(a1111_controlnet.router(state))
    app.include_router(a1111_extras.router(state))  # extras and the upscaler lists
    app.include_router(interrogate_api.router(state))  # image -> tags (WD14)
    app.include_router(opensd_api.router(state))
    app.include_router(xyz_axes_api.router(state))  # the X/Y/Z axes for the web UI's script form
    app.include_router(gallery_api.router(state))
    app.include_router(models_api.router(state))
    app.include_router(datasets_api.router(state))
    app.include_router(train_api.router(state))  # after datasets_api: trains on its datasets
    app.include_router(workers_api.router(state))
    app.include_router(ui_routes.router())  # the web UI at /
    state.comfy = comfy_api.ComfyHub(state)
    app.include_router(comfy_api.router(state, state.comfy))
    # newer ComfyUI frontends and clients call the same routes under /api
    app.include_router(comfy_api.router(state, state.comfy), prefix="/api", include_in_schema=False)
    app.include_router(etn_api.router(state))  # comfyui-tooling-nodes' /api/etn routes (Krita AI Diffusion)
    comfy_frontend.install(app, state, lambda: comfy_api.router(state, state.comfy))

    @app.exception_handler(RequestValidationError)
    async def validation(request: Request, exc: RequestValidationError):
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]
        message = "; ".join(f"{'.'.join(str(x) for x in e['loc'][1:]) or 'body'}: {e['msg']}" for e in errors)
        return JSONResponse({"error": "ValidationError", "detail": errors, "message": message},
                            status_code=422)

    @app.exception_handler(InvalidArgument)
    async def invalid(request: Request, exc: InvalidArgument):
        return JSONResponse({"error": "InvalidArgument", "detail": str(exc)}, status_code=422)

    @app.exception_handler(QueueFull)
    async def full(request: Request, exc: QueueFull):
        return a1111_api.queue_full(exc)

    @app.exception_handler(NoRoom)
    async def no_room(request: Request, exc: NoRoom):
        return JSONResponse({"error": "InsufficientStorage", "detail": str(exc)}, status_code=NoRoom.status)

    @app.exception_handler(OpenSDError)
    async def opensd_error(request: Request, exc: OpenSDError):
        return JSONResponse({"error": type(exc).__name__, "detail": str(exc)}, status_code=400)

    @app.get("/internal/ping", tags=["health"])
    @app.get("/healthz", tags=["health"])
    def ping():
        return {"status": "ok", "queue_pending": state.queue.pending_count()}

    @app.get("/opensd/v1/jobs", tags=["jobs"])
    def jobs(limit: int = 50):
        pending = [j.public() for j in state.queue.pending()]
        running = [p.job.public() for p in state.queue.running()]  # several at once with Ray workers
        return {"running": running[0] if running else None, "running_jobs": running, "pending": pending,
                "history": [j.public() for j in state.store.history(limit=max(1, min(limit, 1000)))]}

    @app.get("/opensd/v1/jobs/{job_id}", tags=["jobs"])
    def job(job_id: str):
        found = state.store.get(job_id)
        if found is None:
            return JSONResponse({"error": "NotFound", "detail": f"job_id: no job {job_id!r}"}, status_code=404)
        return found.public()

    @app.delete("/opensd/v1/jobs/{job_id}", tags=["jobs"])
    def cancel(job_id: str):
        if state.queue.cancel(job_id):
            return {"cancelled": True}
        if state.queue.interrupt(job_id):
            return {"interrupted": True}
        return JSONResponse({"error": "NotFound", "detail": f"job_id: {job_id!r} is not queued or running"},
                            status_code=404)

    @app.get("/opensd/v1/jobs/{job_id}/images/{index}", tags=["jobs"])
    def job_image(job_id: str, index: int):
        found = state.store.get(job_id)
        files = ((found.result or {}).get("files") or []) if found else []
        name = files[index] if isinstance(files, list) and 0 <= index < len(files) else None
        path = None if safe_paths.name_problem(name, "file") else safe_paths.inside(settings.outputs_dir, name)
        if path is None or not safe_paths.is_file(path):  # deleted in the gallery, or a damaged record
            return JSONResponse({"error": "NotFound", "detail": f"index: job {job_id!r} has no image {index}"},
                                status_code=404)
        return served_files.user_file(path)  # PNG, JPEG or WebP (A1111's samples_format)

    return app
