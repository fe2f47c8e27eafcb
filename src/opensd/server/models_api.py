"""The model routes (/opensd/v1/models...): every model file by kind with its family, size, hash and
metadata, hashes on request, and merge / convert run as queued jobs (kind "models") with progress,
their result saved in the checkpoints folder.

Every name a client sends is looked up among the listed files of its kind (never opened as a
path); output names are plain names (file_names.py) joined to the checkpoints folder, and an
existing output is refused unless `overwrite` is set."""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool

from ..errors import InvalidArgument
from ..library.convert import convert_to_diffusers, convert_to_safetensors
from ..library.merge import merge_to_file, same_architecture
from ..library.model_catalog import KINDS, describe, file_hash
from ..library.model_info import checkpoint_config
from ..library.models_dir import ModelFile
from . import disk_room
from .a1111_api import client_id
from .file_names import plain_name
from .jobs import Control
from .models_bodies import (ConvertRequest, HashRequest, HashResult, Kind, MergeRequest, ModelDetail, ModelItem,
                            ModelList)
from .opensd_api import PREFIX
from .opensd_models import JobQueued

KIND = "models"  # the job kind of merges and conversions


def find(state, kind: str, name: str, field: str) -> ModelFile:
    """The listed model of `kind` named exactly `name`; errors name `field`."""
    for m in state.folders.list(kind):
        if m.name == name:
            return m
    raise InvalidArgument(f"{field}: no {kind} model named {name[:200]!r} (refresh the list)")


def _fields(e) -> dict:
    """A catalog entry's ModelItem fields."""
    return {"name": e.name, "size": e.size, "family": e.family, "detail": e.detail, "hash": e.hash,
            "takes_mask": e.takes_mask}


def _item(m: ModelFile) -> ModelItem:
    return ModelItem(**_fields(describe(m)))


def new_model(state, kind: str, name, suffixes: tuple[str, ...], overwrite: bool, inputs=()) -> str:
    """The plain name of a model file about to be written into `kind`'s folder, checked: not one of
    `inputs`, not an existing file unless `overwrite`."""
    name = plain_name(name, "output", suffixes)
    path = state.folders.save_folder(kind) / name
    if any(path.resolve() == Path(i).resolve() for i in inputs):
        raise InvalidArgument(f"output: {name!r} is one of the input models; choose another name")
    if path.exists() and not overwrite:
        raise InvalidArgument(f"output: {name!r} exists in the {kind} folder (set overwrite to replace it)")
    return name


def _bytes(path) -> int:
    """A model's size on disk (a file, or a diffusers folder's files): about what its merge or conversion writes."""
    try:
        return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    except OSError:
        return 0


def check_merge(state, req: MergeRequest) -> dict:
    """The merge job's payload, every name resolved and the architectures compared from the headers."""
    if (req.mode == "add_difference") != (req.c is not None):
        raise InvalidArgument("c: add_difference needs a third model C; weighted_sum takes none")
    models = [find(state, "checkpoints", n, f) for f, n in (("a", req.a), ("b", req.b), ("c", req.c)) if n]
    configs = [checkpoint_config(m.path) for m in models]
    for m, cfg in zip(models[1:], configs[1:]):
        if configs[0] is not None and cfg is not None and not same_architecture(configs[0], cfg):
            raise InvalidArgument(f"b: {m.name} ({cfg.family}) and {models[0].name} ({configs[0].family}) are not "
                                  "the same architecture; only those merge")
    output = new_model(state, "checkpoints", req.output, (".safetensors",), req.overwrite, [m.path for m in models])
    disk_room.check(state.folders.save_folder("checkpoints"), _bytes(models[0].path), "output")
    label = f"Merge {' + '.join(m.name for m in models)} ({req.mode}, {req.multiplier:g}) -> {output}"
    return {"op": "merge", **req.model_dump(), "output": output, "label": label}


def check_convert(state, req: ConvertRequest) -> dict:
    source = find(state, "checkpoints", req.source, "source")
    suffixes = (".safetensors",) if req.to == "safetensors" else ()
    output = new_model(state, "checkpoints", req.output, suffixes, req.overwrite, [source.path])
    disk_room.check(state.folders.save_folder("checkpoints"), _bytes(source.path), "output")
    return {"op": "convert", **req.model_dump(), "output": output,
            "label": f"Convert {source.name} -> {output} ({req.to})"}


def run(state, job, ctl: Control) -> tuple[dict, None]:
    """A merge or convert job on the worker thread; names are resolved again (files may have gone)."""
    p = job.payload
    out = state.folders.save_folder("checkpoints") / p["output"]
    if p["op"] == "merge":
        req = MergeRequest(**{k: p[k] for k in MergeRequest.model_fields})
        a, b, c = (find(state, "checkpoints", n, f).path if n else None
                   for f, n in (("a", req.a), ("b", req.b), ("c", req.c)))
        merge_to_file(out, a, b, c, multiplier=req.multiplier, mode=req.mode, half=req.fp16,
                      overwrite=req.overwrite, progress=ctl.step)
    else:
        req = ConvertRequest(**{k: p[k] for k in ConvertRequest.model_fields})
        fn = convert_to_safetensors if req.to == "safetensors" else convert_to_diffusers
        fn(find(state, "checkpoints", req.source, "source").path, out, half=req.fp16, ema_only=req.ema_only,
           overwrite=req.overwrite, progress=ctl.step)
    return {"output": p["output"], "model_kind": "checkpoints"}, None


def router(state) -> APIRouter:
    api = APIRouter(prefix=PREFIX + "/models", tags=["opensd models"])
    state.queue.register(KIND, lambda job, ctl: run(state, job, ctl))

    @api.get("")
    def models() -> ModelList:
        """Every model file by kind, read from the folders now (so this is also the refresh): name, size,
        family and detail from the file's header, the hash when already computed."""
        folder = state.settings.models_dir
        return ModelList(**{kind: [_item(m) for m in state.folders.list(kind)] for kind in KINDS},
                         models_dir=str(folder) if folder else None)

    @api.get("/{kind}/info", responses={422: {"description": "no such model"}})
    def info(kind: Kind, name: str = Query(..., max_length=1000)) -> ModelDetail:
        """One model with its safetensors metadata (kohya's ss_* tags of a LoRA, modelspec.*, a merge recipe)."""
        e = describe(find(state, kind, name, "name"))
        return ModelDetail(kind=kind, **_fields(e), metadata=e.metadata)

    @api.post("/hash")
    async def hash_(body: HashRequest) -> HashResult:
        """Compute (once; then cached) the model's hash as AUTOMATIC1111 writes it in infotexts."""
        m = find(state, body.kind, body.name, "name")
        if not m.path.is_file():
            raise InvalidArgument(f"name: {body.name!r} is a folder; only single files have an A1111 hash")
        return HashResult(kind=body.kind, name=m.name, hash=await run_in_threadpool(file_hash, m))

    @api.post("/merge", status_code=202)
    async def merge(body: MergeRequest, request: Request) -> JobQueued:
        """Queue a checkpoint merge (A1111's checkpoint merger); follow it in /opensd/v1/queue. The result
        is saved in the checkpoints folder as `output`."""
        payload = await run_in_threadpool(check_merge, state, body)
        return queued(state, state.queue.submit(KIND, payload, client_id(request)))

    @api.post("/convert", status_code=202)
    async def convert(body: ConvertRequest, request: Request) -> JobQueued:
        """Queue a conversion (.ckpt or diffusers -> .safetensors, or -> a diffusers folder; optionally fp16
        or EMA-only), saved in the checkpoints folder as `output`."""
        payload = await run_in_threadpool(check_convert, state, body)
        return queued(state, state.queue.submit(KIND, payload, client_id(request)))

    return api


def queued(state, job) -> JobQueued:
    order = [j.id for j in state.queue.pending()]
    return JobQueued(job_id=job.id, position=order.index(job.id) + 1 if job.id in order else 0)
