"""A1111's extras API (/sdapi/v1/extra-single-image, /extra-batch-images) and its upscaler lists
(/upscalers, /latent-upscale-modes, /face-restorers), with A1111's field names and defaults.

Upscaling with a model is as heavy as a generation, so an extras request waits its turn in the
shared job queue like one (kind "extras"). The results are kept in outputs/extras-images, so an
answer survives a restart as a generation's does. Face restoration (GFPGAN, CodeFormer) is not
available here: a request asking for it is upscaled as asked and told so, as A1111 without a
restorer returns the image unrestored.
"""
from __future__ import annotations

import asyncio
import html
import io
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from pydantic import BaseModel, ConfigDict, Field

from ..errors import InvalidArgument
from ..pipeline.infotext import quote
from ..upscale.names import LATENT_MODES, NONE
from . import a1111_api, a1111_unsupported, images_io
from .jobs import QueueFull
from .store import INTERRUPTED

FOLDER = "extras-images"  # A1111's outputs/extras-images
NO_FACE_RESTORATION = "no face restoration model here (GFPGAN and CodeFormer are not available); " \
                      "the image is returned without face restoration"


def _unit(default: float = 0):
    return Field(default, ge=0, le=1, allow_inf_nan=False)


class ExtrasRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    resize_mode: Literal[0, 1] = 0
    show_extras_results: bool = True
    gfpgan_visibility: float = _unit()
    codeformer_visibility: float = _unit()
    codeformer_weight: float = _unit()
    upscaling_resize: float = Field(2, ge=1, le=8, allow_inf_nan=False)
    upscaling_resize_w: int = Field(512, ge=1, le=65536)
    upscaling_resize_h: int = Field(512, ge=1, le=65536)
    upscaling_crop: bool = True
    upscaler_1: str = Field("None", max_length=255)
    upscaler_2: str = Field("None", max_length=255)
    extras_upscaler_2_visibility: float = _unit()
    upscale_first: bool = False


class ExtrasSingleImageRequest(ExtrasRequest):
    image: str = ""


class FileData(BaseModel):
    data: str
    name: str = Field(max_length=1024)


class ExtrasBatchImagesRequest(ExtrasRequest):
    imageList: list[FileData] = Field(max_length=100)


def gaps(req: ExtrasRequest) -> list[tuple[str, str]]:
    """What of the request is not done here (a1111_unsupported's (field, message) pairs)."""
    out = [(f, NO_FACE_RESTORATION) for f in ("gfpgan_visibility", "codeformer_visibility") if getattr(req, f) > 0]
    return out + [(name, "not an AUTOMATIC1111 field; ignored") for name in sorted(req.model_extra or {})]


def _upscaler(upscalers, name: str, field: str):
    """None for A1111's "None" (no upscaling at all in the extras tab); else the checked name."""
    if not name or name.strip().lower() == NONE.lower():
        return None
    upscalers.find(name, field)
    return name


def _plan(req: ExtrasRequest, size: tuple[int, int]) -> tuple[float, tuple[int, int] | None]:
    """(scale, crop size or None) for an image of `size`, as A1111's extras compute them."""
    if req.resize_mode == 1:
        w, h = req.upscaling_resize_w, req.upscaling_resize_h
        return max(w / size[0], h / size[1]), ((w, h) if req.upscaling_crop else None)
    return req.upscaling_resize, None


def _check_size(req: ExtrasRequest, size: tuple[int, int], field: str, max_pixels: int) -> None:
    scale, crop = _plan(req, size)
    w, h = crop or (int(size[0] * scale), int(size[1] * scale))
    if w * h > max_pixels:
        what = "upscaling_resize_w/upscaling_resize_h" if req.resize_mode == 1 else "upscaling_resize"
        raise InvalidArgument(f"{what}: {field} would become {w}x{h}, over the {max_pixels}-pixel limit")


def postprocess(upscalers, image: Image.Image, req: ExtrasRequest, tile: int, overlap: int,
                progress=None) -> tuple[Image.Image, dict]:
    """A1111's extras upscale step for one image: upscaler 1, blended with upscaler 2 at its
    visibility, then the centre crop to the target size (resize mode 1 with crop). Returns the image
    and the "Postprocess ..." entries A1111 records."""
    info: dict = {}
    first = _upscaler(upscalers, req.upscaler_1, "upscaler_1")
    second = _upscaler(upscalers, req.upscaler_2, "upscaler_2")
    if first is None:
        return image, info
    scale, crop = _plan(req, image.size)
    if req.resize_mode == 1:
        info["Postprocess upscale to"] = f"{req.upscaling_resize_w}x{req.upscaling_resize_h}"
    else:
        info["Postprocess upscale by"] = scale

    def one(name: str) -> Image.Image:
        out = upscalers.upscale(image.convert("RGB"), scale, name, tile=tile, overlap=overlap, progress=progress)
        if crop:
            canvas = Image.new("RGB", crop)
            canvas.paste(out, (crop[0] // 2 - out.width // 2, crop[1] // 2 - out.height // 2))
            out = canvas
            info["Postprocess crop to"] = f"{out.width}x{out.height}"
        return out

    result = one(first)
    info["Postprocess upscaler"] = first
    if second is not None and req.extras_upscaler_2_visibility > 0:
        result = Image.blend(result, one(second), req.extras_upscaler_2_visibility)
        info["Postprocess upscaler 2"] = second
    return result, info


def info_text(info: dict) -> str:
    return ", ".join(k if k == v else f"{k}: {quote(str(v))}" for k, v in info.items() if v is not None)


def html_info(text: str) -> str:
    """A1111's plaintext_to_html."""
    return "<p>" + "<br>\n".join(html.escape(line) for line in text.split("\n")) + "</p>"


def _png(image: Image.Image, source_params: str | None, text: str) -> bytes:
    meta = PngInfo()
    if source_params:
        meta.add_text("parameters", source_params)
    if text:
        meta.add_text("postprocessing", text)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=meta)
    return buf.getvalue()


def run(state, job, ctl):
    """The queued extras job: every image through postprocess(), saved under outputs/extras-images."""
    p = job.payload
    req = ExtrasRequest.model_validate(p["request"])
    opts = state.options.effective(None)
    limit = state.settings.max_image_pixels
    folder = state.settings.outputs_dir / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    files, pngs, texts = [], [], []
    for k, (name, data) in enumerate(p["images"]):
        ctl.image(k, len(p["images"]))
        image = images_io.decode_b64(data, name, limit)
        # RGB, as A1111's run_postprocessing takes it: a CMYK JPEG's PNG could not be written (a 500)
        out, info = postprocess(state.cache.upscalers, image.convert("RGB"), req, opts["ESRGAN_tile"],
                                opts["ESRGAN_tile_overlap"], progress=ctl.step)
        text = info_text(info)
        png = _png(out, image.info.get("parameters") if isinstance(image.info.get("parameters"), str) else None,
                   text)
        path = folder / f"{job.id}-{k}.png"
        path.write_bytes(png)
        files.append(f"{FOLDER}/{path.name}")
        pngs.append(png)
        texts.append(text)
    result = {"files": files, "html_info": html_info(texts[0] if texts else "")}
    return result, {"pngs": pngs, "html_info": result["html_info"]}


def router(state) -> APIRouter:
    api = APIRouter(prefix="/sdapi/v1", tags=["AUTOMATIC1111"])
    s = state.settings
    upscalers = state.cache.upscalers
    state.queue.register("extras", lambda job, ctl: run(state, job, ctl))

    def prepare(req: ExtrasRequest, images: list[tuple[str, str]]) -> dict:
        for field in ("upscaler_1", "upscaler_2"):
            _upscaler(upscalers, getattr(req, field), field)
        for name, data in images:
            image = images_io.decode_b64(data, name, s.max_image_pixels)
            if _upscaler(upscalers, req.upscaler_1, "upscaler_1"):
                _check_size(req, image.size, name, s.max_image_pixels)
        request = req.model_dump(mode="json", exclude={"image", "imageList"})
        return {"request": request, "images": images, "gaps": gaps(req)}

    async def extras(request: Request, req: ExtrasRequest, images: list[tuple[str, str]]):
        payload = await run_in_threadpool(prepare, req, images)  # decoding stays off the event loop
        try:
            job = await state.waiting.submit("extras", payload, a1111_api.client_id(request), request.is_disconnected)
        except QueueFull as e:
            return a1111_api.queue_full(e)
        if job is None:
            return JSONResponse({"error": "Gone", "detail": "the client disconnected"}, status_code=499)
        job, live = await asyncio.wrap_future(state.queue.future(job.id))
        bad = a1111_api.failure(job, live)
        if bad is not None:
            return bad
        if job.status == INTERRUPTED:
            return JSONResponse({"error": "Interrupted", "detail": f"job {job.id} was interrupted"}, status_code=409)
        if isinstance(live, dict):
            pngs, info = live["pngs"], live["html_info"]
        else:  # finished by an earlier process: read the files back
            stored = job.result or {}
            pngs = [(s.outputs_dir / f).read_bytes() for f in stored.get("files", [])]
            info = stored.get("html_info", "")
        # A1111 answers with the images whatever show_extras_results says (it only hides a folder run's)
        return {"images": [images_io.b64(p) for p in pngs], "html_info": info,
                **a1111_unsupported.info_fields(payload["gaps"])}

    @api.post("/extra-single-image")
    async def extra_single_image(req: ExtrasSingleImageRequest, request: Request):
        answer = await extras(request, req, [("image", req.image)])
        if isinstance(answer, dict):
            images = answer.pop("images")
            answer["image"] = images[0] if images else None
        return answer

    @api.post("/extra-batch-images")
    async def extra_batch_images(req: ExtrasBatchImagesRequest, request: Request):
        return await extras(request, req, [(f"imageList[{i}]", f.data) for i, f in enumerate(req.imageList)])

    @api.get("/upscalers")
    def list_upscalers():
        return upscalers.listing()

    @api.get("/latent-upscale-modes")
    def latent_upscale_modes():
        return [{"name": name} for name in LATENT_MODES]

    @api.get("/face-restorers")
    def face_restorers():
        return []  # none: GFPGAN needs a face detector we do not have, CodeFormer's licence is non-commercial

    return api
