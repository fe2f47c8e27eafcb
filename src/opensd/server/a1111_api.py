"""The AUTOMATIC1111 API (/sdapi/v1/...): same paths, field names and defaults as A1111's, served
through the shared job queue. Generation handlers wait (asynchronously) for their job, as A1111's do."""
from __future__ import annotations

import asyncio
import hashlib
import io
import json
import time
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from .. import safe_paths
from ..adapters.hypernetwork import prompt_hypernet_tags, tag_strength
from ..adapters.lora import prompt_lora_tags
from ..errors import CheckpointError, InvalidArgument, OpenSDError
from ..pipeline.memory_modes import A1111_FLAGS
from ..library.model_info import family_defaults
from ..library.model_metadata import api_metadata, file_metadata
from ..library.models_dir import WEIGHT_SUFFIXES
from ..library.network_models import whole_models
from ..pipeline.infotext import parse_infotext, read_infotext
from ..sampling import names as N
from ..sampling import schedule_options as SO
from ..text.dynamic_prompts import check_template
from ..text.styles import apply_styles
from . import (
    a1111_apply,
    a1111_controlnet,
    a1111_embeddings,
    a1111_references,
    a1111_refiner,
    a1111_run,
    a1111_scripts,
    a1111_unsupported,
    images_io,
    work_budget,
)
from .a1111_models import Img2ImgRequest, PngInfoRequest, Txt2ImgRequest
from .a1111_scripts import ScriptError
from .infotext_request import with_infotext
from .jobs import QueueFull
from .settings import is_loopback
from .store import CANCELLED, FAILED, QUEUED


def client_id(request: Request) -> str:
    """Who a job belongs to, for fair ordering: an explicit X-Client-Id, the credentials, or the address."""
    explicit = request.headers.get("x-client-id")
    if explicit:
        return "id:" + explicit[:64]
    auth = request.headers.get("authorization")
    if auth:
        return "auth:" + hashlib.sha256(auth.encode()).hexdigest()[:16]
    return "addr:" + (request.client.host if request.client else "unknown")


def check_network_names(folders, prompt: str, field: str = "prompt") -> None:
    """Every <lora:name:w> and <hypernet:name:m> of the prompt names a file inside its folders
    (422 otherwise), and a hypernet's multiplier is a number."""
    tags = [(t, "loras") for t in prompt_lora_tags(prompt)]
    tags += [(t, "hypernetworks") for t in prompt_hypernet_tags(prompt)]
    for tag, kind in tags:
        try:
            folders.resolve(kind, tag.name)
            if kind == "hypernetworks":
                tag_strength(tag)
        except InvalidArgument as e:
            raise InvalidArgument(f"{field}: <{tag.kind}:{tag.name}>: {str(e).removeprefix('prompt: ')}") from None


def queue_full(e: QueueFull) -> JSONResponse:
    return JSONResponse({"error": "QueueFull", "detail": str(e)}, status_code=429,
                        headers={"Retry-After": str(e.retry_after)})


def failure(job, live) -> JSONResponse | None:
    if job.status == QUEUED:
        return JSONResponse({"error": "ShuttingDown", "detail": f"the server is stopping; job {job.id} "
                             "stays queued and runs after the restart"}, status_code=503)
    if job.status == CANCELLED:
        return JSONResponse({"error": "Cancelled", "detail": f"job {job.id} was cancelled"}, status_code=409)
    if job.status == FAILED:
        if isinstance(live, InvalidArgument):
            return JSONResponse({"error": "InvalidArgument", "detail": str(live)}, status_code=422)
        if isinstance(live, CheckpointError):  # a model the request named that cannot be used with it
            return JSONResponse({"error": "CheckpointError", "detail": str(live)}, status_code=400)
        return JSONResponse({"error": type(live).__name__ if live else "JobFailed",
                             "detail": job.error or "generation failed"}, status_code=500)
    return None


def prepare(state, req, mode: str, every_image: bool = False) -> dict:
    """Everything that can be refused before queueing (422), as the job's stored payload (also used by
    the UI's queued txt2img, opensd_api.py, and opensd batch). The payload's "images" is how many
    images the job saves. `every_image`: a script saves every image it makes, as A1111 does when it
    saves to disk, not only those its answer holds (opensd batch: the X/Y/Z plot's cells beside the grid)."""
    s = state.settings
    img2img = mode == "img2img"
    infotext_notes: list[str] = []
    if req.infotext:  # A1111 fills the fields the request leaves unset from it, before anything else
        checkpoints = [(m.name, state.cache.short_hash(m.path)) for m in whole_models(state.folders)]
        req, infotext_notes = with_infotext(req, checkpoints)
    script = a1111_scripts.selected(req, mode)  # first, as in A1111: an unknown script is a 422
    opts = state.options.effective(req.override_settings)
    kwargs, gaps = a1111_run.plan(req, img2img, s.max_prompt_chars, opts, state.cache.upscalers)
    budgeted = script is None or script.prepare is None  # a script counts the work of all its generations
    if budgeted:
        work_budget.check(*work_budget.a1111_cost(kwargs, req.n_iter), s.work_budget)
    if img2img:
        if not req.init_images:
            raise InvalidArgument("init_images: at least one init image is required")
        for i, image in enumerate(req.init_images):  # each of them starts images of the batch
            images_io.decode_b64(image, f"init_images[{i}]", s.max_image_pixels)
        for name in ("mask", "latent_mask"):
            if getattr(req, name):
                images_io.decode_b64(getattr(req, name), name, s.max_image_pixels)
    elif req.enable_hr and req.firstpass_image:
        first = images_io.decode_b64(req.firstpass_image, "firstpass_image", s.max_image_pixels)
        if min(first.size) < 8:  # a latent upscaler VAE-encodes it at its own size: 8 px make one latent cell
            raise InvalidArgument(f"firstpass_image: {first.width}x{first.height} pixels; at least 8 x 8 are needed")
        if budgeted:  # a latent upscaler encodes it at its own size, for every image
            work_budget.check(*work_budget.a1111_cost(kwargs, req.n_iter, first.size), s.work_budget)
    hires_checkpoint = a1111_refiner.hires_checkpoint(req, img2img, state.cache)
    refiner = a1111_refiner.plan(req, opts, state.cache)
    prompt, prompt_gaps = a1111_apply.prompt(req, opts, state.folders)
    negative = req.negative_prompt
    if req.styles:  # a damaged styles file only fails the requests that name styles
        known = state.styles()
        # "None" is how clients (AIYA) say no style; A1111 passes over names it does not know
        names = [name for name in req.styles if name != "None" or name in known]
        prompt, negative = apply_styles(prompt, negative, names, known)
    check_network_names(state.folders, prompt)
    if not img2img and req.enable_hr:  # the hires pass applies its prompt's LoRAs
        check_network_names(state.folders, req.hr_prompt, "hr_prompt")
    check_template(prompt, state.wildcards)
    check_template(negative, state.wildcards, "negative_prompt")
    controlnet = a1111_controlnet.parse_units(req, state.folders, s.max_image_pixels, img2img)
    override = (req.override_settings or {}).get("sd_model_checkpoint")
    path = state.cache.resolve(override, "override_settings.sd_model_checkpoint") if override \
        else state.current_model()
    a1111_references.check(req, path, s.max_image_pixels)
    vae = a1111_apply.vae_path(state.folders, opts, path)
    defaults = family_defaults(path)  # the model family's CFG and steps where the request leaves them unset
    kwargs.update({name: defaults[name] for field, name in (("cfg_scale", "cfg"), ("steps", "steps"))
                   if field not in req.model_fields_set and name in defaults})
    gaps += [("infotext", note) for note in infotext_notes]
    gaps += prompt_gaps + a1111_unsupported.request_gaps(req) + a1111_controlnet.unsupported(req, controlnet) \
        + a1111_unsupported.setting_gaps(opts, req.override_settings, state.options.defaults)
    payload = {"mode": mode, "request": req.model_dump(mode="json"), "kwargs": kwargs, "model_path": str(path),
               "vae_path": str(vae) if vae else None, "prompt": prompt, "negative_prompt": negative,
               "controlnet": controlnet, "output": a1111_apply.output(opts, mode, grids=script is not None), "gaps": gaps,
               "background": a1111_apply.background(opts) if img2img else None,
               "script": script.name if script else None, "refiner": refiner, "hires_checkpoint": hires_checkpoint,
               "images": kwargs["batch_size"] * req.n_iter}
    if every_image:
        payload["every_image"] = True
    if script is not None and script.prepare:
        payload = script.prepare(state, req, payload)
    if not req.override_settings_restore_afterwards and req.override_settings:
        state.set_options(req.override_settings)  # A1111 keeps such overrides as the new settings
    return payload


def router(state) -> APIRouter:
    api = APIRouter(prefix="/sdapi/v1", tags=["AUTOMATIC1111"])
    s = state.settings

    async def generate(request: Request, req, mode: str):
        img2img = mode == "img2img"
        try:
            payload = await run_in_threadpool(prepare, state, req, mode)  # image decoding stays off the event loop
            job = await state.waiting.submit("a1111", payload, client_id(request), request.is_disconnected)
        except ScriptError as e:
            return e.response()
        except QueueFull as e:
            return queue_full(e)
        if job is None:  # the client left while waiting for a place
            return JSONResponse({"error": "Gone", "detail": "the client disconnected"}, status_code=499)
        job, live = await asyncio.wrap_future(state.queue.future(job.id))
        bad = failure(job, live)
        if bad is not None:
            return bad
        if isinstance(live, dict):
            pngs, info = live["pngs"], live["info"]
        else:  # finished by an earlier process: read the files back
            info = (job.result or {}).get("info", {})
            pngs = _stored_files(s.outputs_dir, (job.result or {}).get("files", [])) if req.send_images else []
        params = req.model_dump(mode="json")
        if img2img and not req.include_init_images:
            params["init_images"], params["mask"] = None, None
        if params.get("reference_images"):  # not echoed back (the client has them; they may be large)
            params["reference_images"] = None
        return {"images": [images_io.b64(p) for p in pngs], "parameters": params,
                "info": a1111_run.info_json(info)}

    @api.post("/txt2img")
    async def txt2img(req: Txt2ImgRequest, request: Request):
        return await generate(request, req, "txt2img")

    @api.post("/img2img")
    async def img2img(req: Img2ImgRequest, request: Request):
        return await generate(request, req, "img2img")

    @api.get("/options")
    def get_options():
        return state.options_view()

    @api.post("/options")
    def set_options(body: dict):
        state.set_options(body)

    @api.get("/sd-models")
    def sd_models():
        out = []
        for m in whole_models(state.folders):  # checkpoints, then networks the models folder completes
            full = state.cache.sha256(m.path)
            out.append({"title": state.cache.title(m.path, m.name), "model_name": _model_name(m.name),
                        "hash": full[:10] if full else None, "sha256": full,
                        "filename": str(m.path), "config": None})
        return out

    @api.get("/sd-vae")
    def sd_vae():
        return [{"model_name": m.name, "filename": str(m.path)} for m in state.folders.list("vae")]

    @api.get("/samplers")
    def samplers():
        return [{"name": label, "aliases": [sid], "options": {}} for sid, label in N.SAMPLER_LABELS.items()]

    @api.get("/schedulers")
    def schedulers():
        # As A1111's list: "automatic" (each sampler's own default, e.g. Karras for DPM++ 2M) first, for
        # clients that offer the names (SillyTavern); our "normal", the model's own schedule, is what
        # A1111 calls Uniform. default_rho: the rho the "rho" setting replaces (Karras's 7, else -1).
        rows = [("automatic", "Automatic")] + [(sid, "Uniform" if sid == "normal" else label)
                                               for sid, label in N.SCHEDULER_LABELS.items()]
        return [{"name": sid, "label": label, "aliases": None,
                 "default_rho": SO.KARRAS_RHO if sid == "karras" else -1, "need_inner_model": False}
                for sid, label in rows]

    @api.get("/loras")
    def loras():
        return [_lora_json(m) for m in state.folders.list("loras")]

    @api.get("/embeddings")
    def embeddings():
        return a1111_embeddings.listing(state)

    @api.post("/refresh-embeddings")
    def refresh_embeddings():
        state.cache.reload_embeddings()  # re-read even what looks unchanged, as A1111's button does
        return None

    @api.post("/unload-checkpoint")
    def unload_checkpoint():
        state.cache.clear()
        if state.pool is not None:  # and on every Ray worker
            state.pool.unload()
        return None

    @api.post("/reload-checkpoint")
    async def reload_checkpoint():
        await run_in_threadpool(lambda: state.cache.get(state.current_model()))
        return None

    @api.post("/refresh-checkpoints")
    def refresh_checkpoints():
        return None  # ModelFolders lists the folder on every request

    @api.post("/refresh-loras")
    def refresh_loras():
        return None

    @api.post("/refresh-vae")
    def refresh_vae():
        return None

    @api.get("/hypernetworks")
    def hypernetworks():
        # A1111's entry: the file's name without folder and extension, and its path
        return [{"name": _stem(Path(m.name).name), "path": str(m.path)} for m in state.folders.list("hypernetworks")]

    for path, value in (("/realesrgan-models", []), ("/extensions", [])):
        api.add_api_route(path, _const(value), methods=["GET"])

    @api.get("/prompt-styles")
    def prompt_styles():
        return [style.as_dict() for style in state.styles().values()]

    @api.get("/scripts")
    def scripts():
        return a1111_scripts.listing()

    @api.get("/script-info")
    def script_info():
        return a1111_scripts.script_info()

    @api.get("/cmd-flags")
    def cmd_flags():
        # gradio_auth: A1111's Gradio login, which clients (AIYA) read to decide whether to log in first
        return {"api": True, "listen": not is_loopback(s.host), "port": s.port,
                "api_auth": bool(s.api_token), "gradio_auth": None, "nowebui": False,
                **{flag.replace("-", "_"): s.memory == flag for flag in A1111_FLAGS},
                "ckpt_dir": str(s.models_dir) if s.models_dir else None}

    @api.get("/progress")
    def progress(skip_current_image: bool = False):
        p = state.queue.progress
        running = p.job is not None
        frac = 0.0
        if running and p.steps:
            frac = min(1.0, p.step / p.steps)
        elapsed = time.time() - p.started if running else 0.0
        eta = elapsed / frac - elapsed if frac > 0 else 0.0
        image = None
        if p.preview is not None and not skip_current_image:
            image = images_io.b64(images_io.png_bytes(p.preview))
        return {"progress": frac, "eta_relative": eta,
                "state": {"skipped": p.skipped, "interrupted": p.interrupted, "stopping_generation": False,
                          "job": f"{p.job.kind}:{p.job.id}" if running else "",
                          "job_count": state.queue.pending_count() + len(state.queue.running()),
                          "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(p.started or 0)),
                          "job_no": p.image_index, "sampling_step": p.step, "sampling_steps": p.steps,
                          "phase": p.phase if running else ""},  # opensd's: what runs before step 1
                "current_image": image, "textinfo": None, "current_task": p.job.id if running else None}

    @api.post("/interrupt")
    def interrupt():
        state.queue.interrupt()

    @api.post("/skip")
    def skip():
        state.queue.skip()

    @api.post("/png-info")
    def png_info(req: PngInfoRequest):
        if not req.image.strip():
            return {"info": "", "items": {}, "parameters": {}}
        data = images_io.b64_bytes(req.image, "image")
        image = images_io.decode_bytes(data, "image", s.max_image_pixels)
        items = {k: v for k, v in image.info.items() if isinstance(v, str)}
        # a JPEG's or WebP's parameters are its EXIF UserComment, as A1111's read_info_from_image reads them
        text = items.pop("parameters", "") or read_infotext(io.BytesIO(data)) or ""
        params = {}
        if text:
            prompt, negative, parsed = parse_infotext(text)
            params = {"Prompt": prompt, "Negative prompt": negative, **parsed}
        return {"info": text, "items": items, "parameters": params}

    @api.get("/memory")
    def memory():
        return state.memory()

    return api


def _const(value):
    def handler():
        return value
    return handler


def _lora_json(m) -> dict:
    """A1111's entry: the alias is the name the trainer gave the LoRA (ss_output_name) when it states one;
    the metadata is its safetensors header's, JSON objects parsed (library/model_metadata)."""
    meta = file_metadata(m.path)
    return {"name": _stem(m.name), "alias": meta.get("ss_output_name") or _stem(Path(m.name).name),
            "path": str(m.path), "metadata": api_metadata(meta)}


def _stem(name: str) -> str:
    for suffix in WEIGHT_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _model_name(name: str) -> str:
    return _stem(name.replace("/", "_").replace("\\", "_"))


__all__ = ["OpenSDError", "client_id", "json", "queue_full", "router"]


def _stored_files(root: Path, names: list) -> list[bytes]:
    """The bytes of a finished job's files still on disk; a stored record is data, never a path to trust."""
    out = []
    for name in names:
        path = None if safe_paths.name_problem(name, "file") else safe_paths.inside(root, name)
        if path is not None and safe_paths.is_file(path):
            out.append(path.read_bytes())
    return out
