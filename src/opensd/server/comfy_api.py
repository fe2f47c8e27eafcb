"""The ComfyUI API (/prompt, /queue, /history, /view, /upload/image, /interrupt, /object_info,
/system_stats, /ws) over the shared job queue, running graphs with opensd.workflows.

WebSocket messages follow ComfyUI: JSON {"type", "data"} for status / execution_start /
execution_cached / executing / progress / executed / execution_success / execution_error /
execution_interrupted, and binary preview frames: 4-byte big-endian event 1 (PREVIEW_IMAGE),
4-byte image type (1 = JPEG, 2 = PNG), then the image bytes (SaveImageWebsocket's full-size PNGs too)."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import sys
import threading
import uuid
from pathlib import Path
from typing import Annotated

from fastapi import (
    APIRouter,
    File,
    Form,
    Request,
    UploadFile,
    WebSocket,
    WebSocketDisconnect,
)
from fastapi.responses import JSONResponse
from fastapi.concurrency import run_in_threadpool

from .. import safe_paths
from ..atomic import write_atomic
from ..errors import InvalidArgument
from ..workflows import ExecutionContext, GraphError, OutputCache, check_prompt, object_info
from . import comfy_mask_upload, comfy_run, disk_room, images_io, safe_json, served_files, work_budget
from .jobs import QueueFull
from .store import FINAL

log = logging.getLogger(__name__)
KIND = "comfy"
VIEW_TYPES = ("output", "input", "temp")
# Not the real command line (it may hold --api-token). ComfyUI's flag that says "no API nodes, no
# comfy.org services": its frontend then skips its release check against api.comfy.org.
ARGV = ["opensd", "--disable-api-nodes"]
MAX_BACKLOG = 64  # messages waiting to be written to one socket before its previews are dropped


class ComfyHub:
    """WebSocket clients, the folders ComfyUI names output/input/temp, and the job runner."""

    def __init__(self, state):
        self.state = state
        out = state.settings.outputs_dir
        self.dirs = {"output": out / "comfy", "input": state.settings.data_dir / "inputs", "temp": out / "temp"}
        for d in self.dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        self.sockets: dict[str, WebSocket] = {}
        self._backlog: dict[int, int] = {}  # id(socket) -> its messages not yet written
        self._backlog_lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.output_cache = OutputCache()  # node outputs reused across prompts, as in ComfyUI
        state.cache.on_evict.append(lambda path: self.output_cache.clear())  # it holds pipelines too
        state.queue.register(KIND, self.run)
        state.queue.listeners.append(lambda event, job: self.broadcast_status())
        state.queue.listeners.append(self.finished)  # after the status: ComfyUI's order

    def bind_loop(self) -> None:
        self.loop = asyncio.get_running_loop()

    def context(self, should_stop=lambda: False, extra_pnginfo=None) -> ExecutionContext:
        return comfy_run.context(self.state.folders, self.state.cache, self.dirs, self.output_cache, should_stop,
                                 extra_pnginfo)

    # --- sending (thread-safe: the worker thread calls these) ---------------------------------

    def send(self, sid: str | None, message) -> None:
        """Queue `message` for the socket(s). A client that stops reading keeps its messages waiting
        here (each a coroutine holding its bytes); past MAX_BACKLOG waiting, its previews and progress
        are dropped (later ones replace them), its other messages still go."""
        if self.loop is None or self.loop.is_closed():
            return
        droppable = isinstance(message, bytes) or message.get("type") == "progress"
        targets = list(self.sockets.items()) if sid is None else [(sid, self.sockets.get(sid))]
        for key, ws in targets:
            if ws is None:
                continue
            with self._backlog_lock:
                waiting = self._backlog.get(id(ws), 0)
                if droppable and waiting >= MAX_BACKLOG:
                    continue
                self._backlog[id(ws)] = waiting + 1
            coro = ws.send_bytes(message) if isinstance(message, bytes) else ws.send_json(message)
            fut = asyncio.run_coroutine_threadsafe(_quiet(coro), self.loop)
            fut.add_done_callback(lambda f, key=id(ws): self._sent(key))

    def _sent(self, key: int) -> None:
        with self._backlog_lock:
            left = self._backlog.pop(key, 1) - 1
            if left > 0:
                self._backlog[key] = left

    def status_message(self, sid: str | None = None) -> dict:
        q = self.state.queue
        remaining = q.pending_count() + len(q.running())
        data = {"status": {"exec_info": {"queue_remaining": remaining}}}
        if sid is not None:
            data["sid"] = sid
        return {"type": "status", "data": data}

    def broadcast_status(self) -> None:
        self.send(None, self.status_message())

    def finished(self, event: str, job) -> None:
        """A graph's last message, "executing" with node None, once /history holds its result: ComfyUI
        sends it after storing the result, and clients (its script examples, Open WebUI) then read
        /history/{prompt_id} at once. A job queued again (a server stopping) has not finished."""
        if event == "finished" and job.kind == KIND and job.status in FINAL:
            self.send(job.payload.get("client_id"), {"type": "executing", "data": {"node": None, "prompt_id": job.id}})

    # --- the runner (worker thread) --------------------------------------------------------------

    def run(self, job, ctl):
        p = job.payload
        sid = p.get("client_id")
        ctx = self.context(ctl.should_stop, (p.get("extra_data") or {}).get("extra_pnginfo"))
        result = comfy_run.run_graph(job.id, p, ctx, ctl, lambda message: self.send(sid, message))
        return result, result


async def _quiet(coro):
    try:
        await coro
    except Exception:  # noqa: BLE001, S110 - a client that went away
        pass


def _outputs_of(prompt: dict) -> list[str]:
    info = object_info()
    return [nid for nid, n in prompt.items() if isinstance(n, dict) and isinstance(n.get("class_type"), str)
            and info.get(n["class_type"], {}).get("output_node")]


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _queue_item(job) -> list:
    p = job.payload
    prompt = _dict(p.get("prompt"))  # a damaged stored record shows as an empty graph
    return [job.seq, job.id, prompt, _dict(p.get("extra_data")), _outputs_of(prompt)]


def _history_item(job) -> dict:
    result = job.result or {"outputs": {}, "status": {"status_str": "error", "completed": False,
                                                      "messages": [["execution_error", {"exception_message": job.error}]]}}
    outputs = _dict(result.get("outputs"))
    meta = {nid: {"node_id": nid, "display_node": nid, "parent_node": None, "real_node_id": nid}
            for nid in outputs}
    return {"prompt": _queue_item(job), "outputs": outputs, "status": result.get("status"), "meta": meta}


def safe_file(base: Path, subfolder: str, filename: str) -> Path:
    """`base/subfolder/filename`, refusing (422) anything that would leave `base` or that the
    filesystem would refuse; `filename` is one plain name."""
    for what, value in (("filename", filename), ("subfolder", subfolder)):
        problem = safe_paths.name_problem(value, what)
        if problem is None and ":" in value:  # a Windows drive or an NTFS stream
            problem = f"{what}: {value!r} is not a name inside the folder"
        if problem:
            raise InvalidArgument(problem)
    if filename in ("", ".") or "/" in filename or "\\" in filename:
        raise InvalidArgument(f"filename: {filename!r} must be a plain file name")
    path = safe_paths.inside(base, subfolder, filename)
    if path is None or path == Path(base).resolve():
        raise InvalidArgument(f"filename: {subfolder}/{filename} leaves the folder")
    return path


def _delete_ids(body: dict) -> list[str]:
    """POST /queue's and /history's "delete": a list of prompt ids (others in it are skipped, as
    before); a number or an object there was a TypeError, an HTTP 500."""
    ids = body.get("delete") or []
    if not isinstance(ids, list):
        raise InvalidArgument(f"delete: expected a list of prompt ids, got {type(ids).__name__}")
    return [i for i in ids if isinstance(i, str)]


def router(state, hub: ComfyHub) -> APIRouter:
    api = APIRouter(tags=["ComfyUI"])
    q = state.queue

    @api.post("/prompt")
    async def post_prompt(request: Request):
        if not safe_json.declared_json(request.headers):
            kind = safe_json.content_type(request.headers) or "none"
            return JSONResponse({"error": {"type": "invalid_content_type", "message": "the graph must be JSON",
                                           "details": f"Content-Type: {kind}; send application/json",
                                           "extra_info": {}}, "node_errors": {}}, status_code=415)
        try:  # parsed and checked in a thread: a large graph takes seconds, the event loop serves the rest
            body = await run_in_threadpool(json.loads, await request.body())
        except ValueError:
            return JSONResponse({"error": {"type": "invalid_json", "message": "body is not JSON", "details": "",
                                           "extra_info": {}}, "node_errors": {}}, status_code=400)
        prompt = body.get("prompt") if isinstance(body, dict) else None
        if not isinstance(prompt, dict):
            return JSONResponse({"error": {"type": "no_prompt", "message": "No prompt provided",
                                           "details": "prompt: expected an API-format graph object",
                                           "extra_info": {}}, "node_errors": {}}, status_code=400)
        try:
            _, node_errors, runs = await run_in_threadpool(check_prompt, prompt, hub.context())
        except GraphError as e:  # its node errors echo the values given, NaN included
            return safe_json.SafeJSONResponse(e.payload, status_code=400)
        try:  # counted on what will run, its numbers converted as the nodes get them
            work_budget.check(*work_budget.comfy_cost(runs), state.settings.work_budget)
        except InvalidArgument as e:
            return JSONResponse({"error": {"type": "work_budget", "message": str(e), "details": "",
                                           "extra_info": {}}, "node_errors": {}}, status_code=400)
        client = body.get("client_id")
        client = client[:64] if isinstance(client, str) and client else None
        extra = body.get("extra_data") if isinstance(body.get("extra_data"), dict) else {}
        pid = body.get("prompt_id")
        pid = pid if isinstance(pid, str) and 0 < len(pid) <= 64 and state.store.get(pid) is None \
            else str(uuid.uuid4())
        payload = {"prompt": prompt, "client_id": client, "extra_data": extra}
        who = f"comfy:{client}" if client else "addr:" + (request.client.host if request.client else "?")
        try:
            job = q.submit(KIND, payload, who, job_id=pid)
        except QueueFull as e:
            return JSONResponse({"error": {"type": "queue_full", "message": str(e), "details": "",
                                           "extra_info": {}}, "node_errors": {}},
                                status_code=429, headers={"Retry-After": str(e.retry_after)})
        return {"prompt_id": job.id, "number": job.seq, "node_errors": node_errors}

    @api.get("/prompt")
    def get_prompt():
        return hub.status_message()["data"]["status"]

    @api.get("/queue")
    def get_queue():
        return {"queue_running": [_queue_item(p.job) for p in q.running() if p.job.kind == KIND],
                "queue_pending": [_queue_item(j) for j in q.pending() if j.kind == KIND]}

    @api.post("/queue")
    def post_queue(body: dict):
        if body.get("clear"):
            q.clear(KIND)
        for pid in _delete_ids(body):
            q.cancel(pid)
        return {}

    @api.get("/history")
    def history(max_items: int | None = None):
        jobs = state.store.history(KIND, limit=max(1, min(max_items or 10_000, 10_000)))
        return {j.id: _history_item(j) for j in reversed(jobs)}

    @api.get("/history/{prompt_id}")
    def history_one(prompt_id: str):
        job = state.store.get(prompt_id)
        if job is None or job.kind != KIND or job.status not in FINAL:
            return {}
        return {job.id: _history_item(job)}

    @api.post("/history")
    def post_history(body: dict):
        if body.get("clear"):
            state.store.delete(kind=KIND)
        ids = _delete_ids(body)
        if ids:
            state.store.delete(ids)
        return {}

    @api.get("/view")
    def view(filename: str, subfolder: str = "", type: str = "output"):
        if type not in VIEW_TYPES:
            raise InvalidArgument(f"type: {type!r} is not one of {', '.join(VIEW_TYPES)}")
        path = safe_file(hub.dirs[type], subfolder, filename)
        if not safe_paths.is_file(path):
            return JSONResponse({"error": "NotFound", "detail": f"filename: {filename!r} not found"}, status_code=404)
        return served_files.user_file(path)

    @api.get("/internal/files/{directory_type}")
    def internal_files(directory_type: str):
        # the files at the top of output/input/temp, newest first: LoadImageOutput's widget lists them
        if directory_type not in VIEW_TYPES:
            return JSONResponse({"error": "Invalid directory type"}, status_code=400)
        base = hub.dirs[directory_type]
        files = []
        for entry in os.scandir(base):
            path = safe_paths.inside(base, entry.name)
            if path is not None and safe_paths.is_file(path):
                files.append((-path.stat().st_mtime, entry.name))
        return [name for _, name in sorted(files)]

    def store_upload(data: bytes, filename: str | None, overwrite: str, subfolder: str, type: str) -> dict:
        if type not in VIEW_TYPES:
            raise InvalidArgument(f"type: {type!r} is not one of {', '.join(VIEW_TYPES)}")
        name = os.path.basename((filename or "").replace("\\", "/")) or "upload.png"
        path = safe_file(hub.dirs[type], subfolder, name)
        disk_room.check(hub.dirs[type], len(data), "image")
        if path.exists() and overwrite.lower() not in ("true", "1"):
            stem, suffix, n = path.stem, path.suffix, 1
            while path.exists():
                path = path.with_name(f"{stem} ({n}){suffix}")
                n += 1
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, data)
        except OSError as e:  # the subfolder names a file, the name is a folder, a full disk...
            raise InvalidArgument(f"subfolder: cannot store {subfolder}/{name} ({e.strerror})") from None
        return {"name": path.name, "subfolder": subfolder, "type": type}

    @api.post("/upload/image")
    async def upload_image(image: Annotated[UploadFile, File()], overwrite: Annotated[str, Form()] = "false",
                           subfolder: Annotated[str, Form()] = "", type: Annotated[str, Form()] = "input"):
        data = await image.read()
        # refuse non-images and bombs, decoding in a thread (a large image takes a second; the event loop
        # serves every other request meanwhile)
        await run_in_threadpool(images_io.decode_bytes, data, "image", state.settings.max_image_pixels)
        return store_upload(data, image.filename, overwrite, subfolder, type)  # on the loop: one name each

    @api.post("/upload/mask")
    async def upload_mask(image: Annotated[UploadFile, File()], original_ref: Annotated[str, Form()] = "",
                          overwrite: Annotated[str, Form()] = "false", subfolder: Annotated[str, Form()] = "",
                          type: Annotated[str, Form()] = "input"):
        name, ref_subfolder, ref_type = comfy_mask_upload.parse_ref(original_ref)
        if ref_type not in VIEW_TYPES:
            raise InvalidArgument(f"original_ref: type {ref_type!r} is not one of {', '.join(VIEW_TYPES)}")
        original = safe_file(hub.dirs[ref_type], ref_subfolder, name)
        if not safe_paths.is_file(original):
            raise InvalidArgument(f"original_ref: {ref_type}/{ref_subfolder}/{name} not found".replace("//", "/"))
        data = await run_in_threadpool(comfy_mask_upload.masked_png, original, await image.read(),
                                       state.settings.max_image_pixels)
        return store_upload(data, image.filename, overwrite, subfolder, type)  # on the loop: one name each

    @api.post("/interrupt")
    async def interrupt(request: Request):
        pid = None
        try:  # the body is optional; only a declared JSON one is read
            body = await request.json() if safe_json.declared_json(request.headers) else None
            pid = body.get("prompt_id") if isinstance(body, dict) else None
        except ValueError:
            pass
        q.interrupt(pid if isinstance(pid, str) else None)
        return {}

    @api.get("/object_info")
    def get_object_info():
        return object_info(hub.context())

    @api.get("/object_info/{node_class}")
    def get_object_info_one(node_class: str):
        return object_info(hub.context(), node_class)

    @api.get("/embeddings")
    def embeddings():
        return sorted(Path(m.name).stem for m in state.folders.list("embeddings"))

    @api.get("/models/{folder}")
    def models(folder: str):
        kind = {"loras": "loras", "checkpoints": "checkpoints", "vae": "vae", "embeddings": "embeddings",
                "controlnet": "controlnet", "hypernetworks": "hypernetworks"}.get(folder)
        if kind is None:
            return JSONResponse({"error": "NotFound", "detail": f"folder: {folder!r} unknown"}, status_code=404)
        return [m.name for m in state.folders.list(kind)]

    @api.get("/system_stats")
    def system_stats():
        import torch

        mem = state.memory().get("ram", {})
        dev = {"name": str(state.settings.device or "cpu"), "type": "cuda" if torch.cuda.is_available() else "cpu",
               "index": 0, "vram_total": mem.get("total", 0), "vram_free": mem.get("free", 0),
               "torch_vram_total": 0, "torch_vram_free": 0}
        return {"system": {"os": os.name, "ram_total": mem.get("total", 0), "ram_free": mem.get("free", 0),
                           "comfyui_version": "opensd", "python_version": sys.version,
                           "pytorch_version": torch.__version__, "embedded_python": False,
                           "argv": ARGV, "platform": platform.platform()},
                "devices": [dev]}

    @api.websocket("/ws")
    async def ws(websocket: WebSocket, clientId: str | None = None):
        await websocket.accept()
        sid = (clientId or uuid.uuid4().hex)[:64]
        hub.sockets[sid] = websocket
        if hub.loop is None:
            hub.loop = asyncio.get_running_loop()
        try:
            await websocket.send_json(hub.status_message(sid))
            # Messages from the client are read and dropped; receive() rather than receive_text(),
            # which fails on a binary frame and would drop this client's progress messages.
            while (await websocket.receive())["type"] != "websocket.disconnect":
                pass
        except WebSocketDisconnect:
            pass
        finally:
            if hub.sockets.get(sid) is websocket:
                del hub.sockets[sid]

    return api
