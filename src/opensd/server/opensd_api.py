"""Our own routes, under one prefix (/opensd/v1), for what the A1111 and ComfyUI APIs lack and the
web UI needs: queued (non-blocking) txt2img and img2img, the queue with positions and labels, the token
counter, checkpoint families, image parameters to a request, and the UI's login cookie.
(The job routes /opensd/v1/jobs... are in app.py; the gallery's in gallery_api.py.)"""
from __future__ import annotations

import asyncio
import hmac
import io

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from ..errors import InvalidArgument
from ..library.model_info import model_config, recommended, reference_limit, schedule_name, takes_references
from ..library.network_models import whole_models
from ..pipeline.infotext import parse_infotext, read_infotext
from ..pipeline.token_count import count_tokens
from ..text.tokenizer import default_tokenizer
from ..version import __version__
from . import images_io
from .a1111_api import client_id, prepare
from .a1111_models import Img2ImgRequest, Txt2ImgRequest
from .a1111_references import MAX_REFERENCES
from .a1111_options import describe
from .gallery import graph_text
from .infotext_request import request_from_infotext
from .opensd_models import (
    Checkpoint, Checkpoints, Cleared, ImageInfo, ImageInfoRequest, JobQueued, Login, QueueItem, QueueView,
    SessionInfo, TokenCountRequest, TokenCountResult,
)
from .session import clear_cookie_header, cookie_ok, set_cookie_header
from .ui_routes import LOGIN_API, SESSION_API

PREFIX = "/opensd/v1"
LABEL_CHARS = 1000  # a queue item's label: the whole prompt of all but the longest (the UI shows it on a tap)


def job_label(job) -> str:
    payload = job.payload if isinstance(job.payload, dict) else {}
    if isinstance(payload.get("label"), str):  # jobs that describe themselves (training, merges)
        text = payload["label"]
    elif job.kind == "a1111":
        text = (payload.get("request") or {}).get("prompt") or ""
    else:
        text = graph_text(payload)
    text = " ".join(text.split())
    text = text if len(text) <= LABEL_CHARS else text[:LABEL_CHARS - 1] + "…"
    return text or ("(no prompt)" if job.kind == "a1111" else f"({job.kind} job)")


TASKS = {"comfy": "ComfyUI", "train": "training"}


def job_task(job) -> str:
    """What a job does, in the words of the web UI's tabs (a1111 jobs are txt2img, img2img or inpaint)."""
    payload = job.payload if isinstance(job.payload, dict) else {}
    if job.kind == "a1111":
        mode = payload.get("mode") if payload.get("mode") in ("txt2img", "img2img") else "txt2img"
        return "inpaint" if mode == "img2img" and (payload.get("request") or {}).get("mask") else mode
    if job.kind == "models" and payload.get("op") in ("merge", "convert"):
        return payload["op"]
    return TASKS.get(job.kind, job.kind)


def checkpoint_list(state) -> list[Checkpoint]:
    out = []
    for m in whole_models(state.folders):
        cfg = model_config(m.path)
        references = bool(takes_references(m.path))
        limit = min(MAX_REFERENCES, reference_limit(m.path) or MAX_REFERENCES) if references else None
        out.append(Checkpoint(name=m.name, title=state.cache.title(m.path, m.name), hash=state.cache.short_hash(m.path),
                              family=cfg.family if cfg else None, resolution=cfg.resolution if cfg else None,
                              prediction=cfg.prediction if cfg else None, schedule=schedule_name(cfg),
                              edit=bool(cfg and cfg.edit), references=references, max_references=limit,
                              recommended=recommended(m.path)))
    return out


def image_info(state, data: bytes) -> ImageInfo:
    """Parameters of an image file (A1111 infotext in a PNG chunk or EXIF; other PNG text chunks)."""
    image = images_io.decode_bytes(data, "image", state.settings.max_image_pixels)
    items = {k: v for k, v in image.info.items() if isinstance(v, str) and k != "parameters"}
    text = read_infotext(io.BytesIO(data)) or ""
    if not text:
        return ImageInfo(infotext="", parameters={}, items=items, request=None, notes=[])
    prompt, negative, params = parse_infotext(text)
    models = [(c.name, c.hash) for c in checkpoint_list(state)]
    request, notes = request_from_infotext(text, models)
    return ImageInfo(infotext=text, parameters={"Prompt": prompt, "Negative prompt": negative, **params},
                     items=items, request=request, notes=notes)


def router(state) -> APIRouter:
    api = APIRouter(prefix=PREFIX, tags=["opensd"])
    s = state.settings
    tokenizer = default_tokenizer()

    def session_info(authorized: bool) -> dict:
        return SessionInfo(token_required=bool(s.api_token), authorized=authorized, version=__version__).model_dump()

    @api.post(LOGIN_API.removeprefix(PREFIX), responses={401: {"description": "wrong token"}})
    async def login(body: Login, request: Request) -> SessionInfo:
        """Check the API token and set the web UI's session cookie (HttpOnly, SameSite=Strict)."""
        if s.api_token and not hmac.compare_digest(body.token.encode(), s.api_token.encode()):
            await asyncio.sleep(0.5)  # slows guessing
            return JSONResponse({"error": "Unauthorized", "detail": "token: wrong API token"}, status_code=401)
        response = JSONResponse(session_info(True))
        if s.api_token:
            response.headers["Set-Cookie"] = set_cookie_header(s.api_token, request.url.scheme == "https")
        return response

    @api.post("/logout")
    def logout() -> SessionInfo:
        response = JSONResponse(session_info(not s.api_token))
        response.headers["Set-Cookie"] = clear_cookie_header()
        return response

    @api.get(SESSION_API.removeprefix(PREFIX))
    def session(request: Request) -> SessionInfo:
        """Whether this browser is signed in (open to all, so the UI can ask before any other call)."""
        signed_in = not s.api_token or cookie_ok(request.headers.get("cookie", ""), s.api_token)
        return SessionInfo(**session_info(signed_in))

    @api.post("/tokens")
    def tokens(body: TokenCountRequest) -> TokenCountResult:
        """A1111's token counter for a prompt: LoRA tags removed, AND parts and prompt editing at every step
        counted, 75-token chunks as generation makes them."""
        found = count_tokens(body.prompt, tokenizer, body.steps, state.cache.embeddings.get())
        return TokenCountResult(tokens=found.tokens, max_tokens=found.max_tokens, chunks=found.chunks)

    @api.get("/checkpoints")
    def checkpoints() -> Checkpoints:
        """The checkpoints with their family and native resolution (read from the file header, no loading)."""
        items = checkpoint_list(state)
        try:
            current = state.cache.name_of(state.current_model())
        except InvalidArgument:
            current = None
        return Checkpoints(current=current, items=items)

    @api.get("/options-info")
    def options_info() -> dict:
        """For a settings form: each A1111 setting's default, kind, the choices this server takes and
        its slider's range (the values themselves: GET /sdapi/v1/options)."""
        return describe()

    async def queued(req, request: Request, mode: str) -> JobQueued:
        payload = await run_in_threadpool(prepare, state, req, mode)
        job = state.queue.submit("a1111", payload, client_id(request))
        order = [j.id for j in state.queue.pending()]
        return JobQueued(job_id=job.id, position=order.index(job.id) + 1 if job.id in order else 0)

    @api.post("/txt2img", status_code=202)
    async def txt2img(req: Txt2ImgRequest, request: Request) -> JobQueued:
        """Queue an A1111-style txt2img request and answer at once with its job id; follow it with
        /opensd/v1/queue or /opensd/v1/jobs/{id}; its images are /opensd/v1/jobs/{id}/images/{n}."""
        return await queued(req, request, "txt2img")

    @api.post("/img2img", status_code=202)
    async def img2img(req: Img2ImgRequest, request: Request) -> JobQueued:
        """Queue an A1111-style img2img or inpainting request (init_images, mask, inpainting fields,
        ControlNet units) and answer at once with its job id, as /opensd/v1/txt2img does."""
        return await queued(req, request, "img2img")

    @api.get("/queue")
    def queue() -> QueueView:
        """The running job, the waiting ones in the order they will run, and the last finished."""
        def item(job, status: str | None = None, **extra) -> QueueItem:
            return QueueItem(id=job.id, kind=job.kind, task=job_task(job), client=job.client,
                             status=status or job.status, label=job_label(job), created=job.created, **extra)

        running = [item(p.job, "running", position=0, step=p.step, steps=p.steps, worker=p.worker) for p in state.queue.running()]
        return QueueView(
            running=running[0] if running else None, running_jobs=running,
            pending=[item(j, position=i + 1) for i, j in enumerate(state.queue.pending())],
            recent=[item(j, position=-1, error=j.error) for j in state.store.history(limit=10)])

    @api.post("/queue/clear")
    def clear() -> Cleared:
        """Cancel every waiting job (the running one continues; interrupt it with /sdapi/v1/interrupt)."""
        return Cleared(cancelled=state.queue.clear())

    @api.post("/image-info")
    def info(body: ImageInfoRequest) -> ImageInfo:
        """An image's generation parameters (ours, A1111's PNG/JPEG/WebP, ComfyUI's embedded prompt and
        workflow) and the txt2img request that remakes it."""
        return image_info(state, images_io.b64_bytes(body.image, "image"))

    return api
