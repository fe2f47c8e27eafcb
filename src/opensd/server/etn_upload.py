"""PUT /api/etn/upload/{folder}/{filename}: comfyui-tooling-nodes' model upload, which Krita AI Diffusion
uses before a job whose LoRA the server lacks (it then re-reads the LoRA lists and runs the graph).

Answers as the tooling nodes do: 201 {"status": "success"}; 200 {"status": "cached"} when the folder
already holds that name (here only when it holds the same bytes: a different file of that name is a
409, never replaced); 4xx {"error": ...} for anything wrong. Only LoRAs are taken, as one .safetensors
file name inside the loras folder. The body is streamed to a temp file in that folder under its own
cap (Settings.max_upload_bytes; the front door lets this route's bodies through unread), checked as a
safetensors LoRA (header, tensors, LoRA keys; nothing is unpickled), then takes its name atomically;
a cut-off or refused upload leaves no file behind."""
from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from ..adapters.lora_files import read_lora
from ..atomic import atomic_write
from ..checkpoints.files import sniff_format
from ..safe_paths import inside, is_file, name_problem
from . import disk_room

UPLOAD_FOLDERS = {"loras": "loras"}  # the tooling nodes' folder name -> our models-folder kind
SUFFIX = ".safetensors"


class Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _file_name(filename: str) -> str:
    problem = name_problem(filename, "filename")
    if problem is None and ("/" in filename or "\\" in filename):
        problem = f"filename: {filename[:80]!r} must be a file name alone, without folders"
    if problem is None and (filename.startswith(".") or not filename.strip()):
        problem = f"filename: {filename[:80]!r} is not a usable file name"
    if problem is None and not filename.lower().endswith(SUFFIX):
        problem = f"filename: {filename[:80]!r}: the file extension must be .safetensors"
    if problem is not None:
        raise Refused(400, problem)
    return filename


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _check_lora(path: Path) -> None:
    """A readable safetensors LoRA, judged by content (the temp file's name says nothing)."""
    try:
        safetensors = sniff_format(path) == "safetensors"
    except Exception:  # noqa: BLE001 - unknown leading bytes
        safetensors = False
    if not safetensors:
        raise Refused(400, "file: not a safetensors file")
    try:
        read_lora(path)
    except Exception as e:  # noqa: BLE001 - whatever a malformed upload makes the reader raise is a 400
        reason = str(e).replace(f"{path}: ", "").replace(str(path), "the upload")
        raise Refused(400, f"file: not a usable LoRA: {reason}") from None


class Body:
    """The request body as it arrives, up to `cap` bytes, with its SHA-256 once read."""

    def __init__(self, request: Request, cap: int):
        self.request, self.cap = request, cap
        self.digest, self.seen = hashlib.sha256(), 0

    async def chunks(self):
        try:
            async for chunk in self.request.stream():
                self.seen += len(chunk)
                if self.seen > self.cap:
                    raise Refused(413, f"body: exceeds the {self.cap}-byte limit for one uploaded model")
                self.digest.update(chunk)
                if chunk:
                    yield chunk
        except ClientDisconnect:
            raise Refused(400, "body: the upload was cut off before its end") from None
        declared = self.request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) != self.seen:
            raise Refused(400, f"body: {self.seen} bytes arrived of the {declared} announced")
        if self.seen == 0:
            raise Refused(400, "body: empty (expected the model file's bytes)")


async def receive_model(state, folder: str, filename: str, request: Request) -> JSONResponse:
    try:
        kind = UPLOAD_FOLDERS.get(folder)
        if kind is None:
            raise Refused(400, f"Invalid folder path, must be one of {', '.join(UPLOAD_FOLDERS)}")
        name = _file_name(filename)
        existing = next((p for root in state.folders.folders(kind)
                         if (p := inside(root, name)) is not None and is_file(p)), None)
        target = inside(state.folders.save_folder(kind), name)
        if target is None:
            raise Refused(400, f"filename: {name[:80]!r} is not a name inside the {folder} folder")
        body = Body(request, state.settings.max_upload_bytes)
        if existing is not None:
            return await _same_as(existing, body, name)
        declared = request.headers.get("content-length", "")
        try:  # a chunked body is counted as the cap: it may grow that far
            disk_room.check(target.parent, int(declared) if declared.isdigit() else body.cap, "file")
        except disk_room.NoRoom as e:
            raise Refused(e.status, str(e)) from None
        await asyncio.to_thread(_place, target, body, asyncio.get_running_loop())
        return JSONResponse({"status": "success"}, status_code=201)
    except Refused as e:
        return _error(e.status, str(e))
    except OSError as e:  # the disk, not the request: full, read-only, permissions
        return _error(507, f"could not store the upload: {e.strerror or e}")


def _place(target: Path, body: Body, loop) -> None:
    """In a worker thread: the body into a temp file beside `target`, checked, then given its name."""
    chunks = body.chunks()

    async def next_chunk():  # read on the event loop, written (and fsynced, checked) here
        return await anext(chunks, None)

    try:
        with atomic_write(target, check=_check_lora, exclusive=True) as f:
            while (chunk := asyncio.run_coroutine_threadsafe(next_chunk(), loop).result()) is not None:
                f.write(chunk)
    except FileExistsError:
        raise Refused(409, f"filename: {target.name!r} was just uploaded by another request (not replaced)") from None


async def _same_as(existing: Path, body: Body, name: str) -> JSONResponse:
    """The tooling nodes' "cached" answer, when the body is the file already there."""
    declared = body.request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) != existing.stat().st_size:
        raise Refused(409, f"filename: {name!r} already holds a different file (not replaced)")
    async for _ in body.chunks():
        pass
    if await asyncio.to_thread(_sha256, existing) != body.digest.hexdigest():
        raise Refused(409, f"filename: {name!r} already holds a different file (not replaced)")
    return JSONResponse({"status": "cached"}, status_code=200)
