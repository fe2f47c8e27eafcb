"""The HTTP routes comfyui-tooling-nodes adds to ComfyUI under /api/etn, which Krita AI Diffusion
calls when it connects and for every job:

* GET /api/etn/model_info/{folder}[?offset&limit]: {file: {"base_model", "is_inpaint", "type"?,
  "quant"?}} for checkpoints, diffusion_models and unet_gguf, read from each file's header (with
  limit, a "_meta" {offset, count, total} entry pages the answer);
* GET /api/etn/languages: [] (no translation models here); GET /api/etn/translate/{lang}/{text};
* PUT /api/etn/image/{id}: an input image into the store ETN_LoadImageCache reads (201; 200
  "cached" when the id is there); GET /api/etn/image/{id}: an ETN_SaveImageCache result;
* PUT /api/etn/upload/{folder}/{filename}: a LoRA file Krita uploads (etn_upload.py);
* POST /api/etn/workflow/subscribe and /unsubscribe: accepted (opensd publishes no workflows)."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from .. import families
from ..checkpoints.files import read_safetensors_header, sniff_format
from ..errors import InvalidArgument, OpenSDError
from ..image_read import decode_bytes
from ..workflows.image_cache import IMAGES
from ..workflows.nodes_tooling import MAX_PIXELS, translate_text
from . import safe_json
from .etn_upload import receive_model

# Krita's folder name -> our models-folder kind
FOLDERS = {"checkpoints": "checkpoints", "diffusion_models": "unet", "unet": "unet", "unet_gguf": "unet_gguf"}
IMAGE_TYPES = {"image/png", "image/jpeg", "image/webp"}
# our family -> the base_model names of ComfyUI's model detection (opensd's own "small" test models are
# SD1-shaped UNets run as SD 1.5)
BASE_MODELS = {"sd1": "sd15", "small": "sd15", "sd2": "sd20", "sdxl": "sdxl", "sdxl_refiner": "sdxl-refiner",
               "sd3": "sd3", "flux": "flux", "chroma": "chroma"}


def model_info(path) -> dict:
    """What comfyui-tooling-nodes says of a model file, from its safetensors or GGUF header (no weights
    read): the base model, inpaint (a 9-channel UNet, Flux Fill), SDXL's prediction type and, for GGUF,
    "quant" (the file's general.file_type where it is a text, else "gguf", as the tooling nodes say)."""
    quant = None
    try:
        if path.suffix == ".gguf":
            from ..checkpoints.gguf_files import read_gguf  # memory-mapped: only the header is read
            tensors, metadata = read_gguf(path)
            shapes = {k: tuple(v.shape) for k, v in tensors.items()}
            quant = metadata.get("general.file_type", "gguf").lower()
        elif path.suffix != ".safetensors" or sniff_format(path) != "safetensors":
            return {"base_model": "unknown"}
        else:
            entries, metadata = read_safetensors_header(path)
            shapes = {k: tuple(v["shape"]) for k, v in entries.items()}
        _, cfg = families.detect(shapes, metadata, str(path))
    except (OpenSDError, OSError) as e:
        return {"base_model": "unknown", "error": f"Failed to detect base model: {e}"}
    return _info(cfg) | ({"quant": quant} if quant else {})


def _info(cfg) -> dict:
    base = BASE_MODELS.get(cfg.family, "unknown")
    if base in ("sd3", "chroma"):
        return {"base_model": base, "is_inpaint": False}
    if base == "flux":
        if not cfg.flux.guidance_embed:
            base = "flux-schnell"
        return {"base_model": base, "is_inpaint": cfg.inpainting}
    info = {"base_model": base, "is_inpaint": base in ("sd15", "sdxl") and cfg.unet.in_channels > 4}
    if base == "sdxl":
        info["type"] = "v-prediction" if cfg.prediction == "v" else "eps"
    return info


async def _body(request: Request, limit: int) -> bytes:
    data = bytearray()
    async for chunk in request.stream():
        data.extend(chunk)
        if len(data) > limit:
            raise InvalidArgument(f"image: more than the {limit} bytes one image may take")
    return bytes(data)


def router(state) -> APIRouter:
    api = APIRouter(prefix="/api/etn", tags=["ComfyUI"], include_in_schema=False)

    def listing(folder: str, offset: int, limit: int | None):
        kind = FOLDERS.get(folder)
        if kind is None:
            return JSONResponse({"error": f"Invalid folder path, must be one of {', '.join(FOLDERS)}"},
                                status_code=400)
        files = state.folders.list(kind)
        offset = max(0, offset)
        page = files[offset:offset + max(0, limit)] if limit is not None else files[offset:]
        out = {m.name: model_info(m.path) for m in page}
        if limit is not None:
            out["_meta"] = {"offset": offset, "count": len(page), "total": len(files)}
        return out

    @api.get("/model_info")
    def model_info_checkpoints(offset: int = 0, limit: int | None = None):
        return listing("checkpoints", offset, limit)

    @api.get("/model_info/{folder}")
    def model_info_folder(folder: str, offset: int = 0, limit: int | None = None):
        return listing(folder, offset, limit)

    @api.get("/languages")
    def languages():
        return []

    @api.get("/translate/{lang}/{text:path}")
    def translate(lang: str, text: str):
        return translate_text(f"lang:{lang} {text}")

    @api.put("/image/{id}")
    async def put_image(id: str, request: Request):
        IMAGES.check_id(id)
        if id in IMAGES:
            return JSONResponse({"status": "cached"}, status_code=200)
        data = await _body(request, IMAGES.max_entry)
        # a 400 if unreadable; decoded in a thread, as every large piece of work a request brings
        await run_in_threadpool(decode_bytes, data, "image", min(MAX_PIXELS, state.settings.max_image_pixels))
        # served back as sent, so only image types pass (a text/html "image" would be a page on our origin)
        declared = request.headers.get("content-type", "").split(";")[0].strip().lower()
        IMAGES.put(id, data, declared if declared in IMAGE_TYPES else "application/octet-stream")
        return JSONResponse({"status": "success"}, status_code=201)

    @api.get("/image/{id}")
    def get_image(id: str):
        IMAGES.check_id(id)
        entry = IMAGES.get(id)
        if entry is None:
            return JSONResponse({"error": "Image not found"}, status_code=404)
        return Response(entry[0], media_type=entry[1], headers={"X-Content-Type-Options": "nosniff"})

    @api.put("/upload/{folder}/{filename:path}")
    async def upload(folder: str, filename: str, request: Request):
        return await receive_model(state, folder, filename, request)

    async def client_id(request: Request):
        try:
            body = await request.json() if safe_json.declared_json(request.headers) else None
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("client_id"), str):
            raise InvalidArgument("client_id: expected a JSON body {\"client_id\": ...}")
        return {"status": "success"}

    api.add_api_route("/workflow/subscribe", client_id, methods=["POST"])
    api.add_api_route("/workflow/unsubscribe", client_id, methods=["POST"])
    return api
