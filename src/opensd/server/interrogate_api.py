"""Image interrogation over HTTP: A1111's POST /sdapi/v1/interrogate and the A1111 tagger extension's
(toriato/stable-diffusion-webui-wd14-tagger) GET /tagger/v1/interrogators and POST /tagger/v1/interrogate.

A1111's "deepdanbooru" runs DeepDanbooru (tagging/deepdanbooru.py) when its model is in the models
folder's torch_deepdanbooru/ (model-resnet_custom_v3.pt, as in A1111), else one of SmilingWolf's WD14
taggers (tagging/wd14.py; the files in wd14_tagger/, the first installed by name); either is worded as
A1111's DeepDanbooru settings say (threshold, order, spaces, escaping, filtered tags, ranks). A1111's
"clip" (a BLIP caption ranked with CLIP against its flavour lists) is not available and is refused in
words. Naming an installed WD14 model instead of "deepdanbooru" picks that one.

Both run on the CPU (onnxruntime's CPU provider, torch on the CPU), leaving the GPU to the generation
queue: a WD14 tagging takes well under a second, a DeepDanbooru one a few seconds; they run in a worker
thread, one at a time, not through the job queue. Body sizes are capped by the server's guard like every request's.
"""
from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ..errors import InvalidArgument
from ..tagging import deepdanbooru, wd14
from ..tagging.tag_text import a1111_caption, tagger_caption
from . import images_io

DEEPDANBOORU, CLIP = "deepdanbooru", "clip"
NO_CLIP = ('model "clip": CLIP interrogation (a BLIP caption ranked with CLIP against A1111\'s flavour lists) '
           'is not available in opensd: there is no BLIP captioning model or CLIP interrogator here; use '
           '"deepdanbooru" (DeepDanbooru from the models folder\'s torch_deepdanbooru/, else a WD14 tagger '
           'from its wd14_tagger/)')


class InterrogateRequest(BaseModel):
    image: str = ""
    model: str = Field(CLIP, max_length=1024)


class TaggerInterrogateRequest(InterrogateRequest):
    model: str = Field(max_length=1024)
    threshold: float = Field(0.35, ge=0, le=1, allow_inf_nan=False)


def _not_found(folders, model: str, hint: str) -> JSONResponse:
    """A1111's and the extension's 404 "Model not found", saying what is installed."""
    names = ", ".join(sorted(wd14.installed(folders))) or "none"
    return JSONResponse({"error": "Not Found", "detail": f"Model not found: {model!r} ({hint}: {names})"},
                        status_code=404)


def router(state) -> APIRouter:
    api = APIRouter(tags=["AUTOMATIC1111"])
    s = state.settings
    one_at_a_time = asyncio.Lock()  # as A1111's queue lock: a burst of requests waits, not every core at once

    async def run(fn, *args):
        async with one_at_a_time:
            return await run_in_threadpool(fn, *args)

    def scores(name: str, image_b64: str):
        image = images_io.decode_b64(image_b64, "image", s.max_image_pixels)
        return wd14.tag(state.folders, name, image)

    def deepdanbooru_scores(image_b64: str):
        """DeepDanbooru's scores when its model is installed, else the first WD14 tagger's."""
        path = deepdanbooru.default_path(state.folders)
        if path is None:
            if not wd14.installed(state.folders):
                raise InvalidArgument(f'model "deepdanbooru": neither DeepDanbooru nor a WD14 tagger is installed; '
                                      f"{deepdanbooru.WHERE}, or {wd14.where()}")
            return scores(wd14.default_name(state.folders), image_b64)
        image = images_io.decode_b64(image_b64, "image", s.max_image_pixels)
        return deepdanbooru.score(deepdanbooru.load(path), image)

    @api.post("/sdapi/v1/interrogate")
    async def interrogate(req: InterrogateRequest):
        if req.model == CLIP:
            raise InvalidArgument(NO_CLIP)
        if req.model != DEEPDANBOORU and req.model not in wd14.installed(state.folders):
            return _not_found(state.folders, req.model, 'use "deepdanbooru" or an installed WD14 tagger')
        opts = state.options.effective(None)
        if req.model == DEEPDANBOORU:
            found = await run(deepdanbooru_scores, req.image)
        else:
            found = await run(scores, req.model, req.image)
        return {"caption": a1111_caption(
            found, threshold=opts["interrogate_deepbooru_score_threshold"], sort_alpha=opts["deepbooru_sort_alpha"],
            use_spaces=opts["deepbooru_use_spaces"], escape=opts["deepbooru_escape"],
            filter_tags=opts["deepbooru_filter_tags"], ranks=opts["interrogate_return_ranks"])}

    @api.get("/tagger/v1/interrogators", tags=["tagger"])
    def interrogators():
        return {"models": sorted(wd14.installed(state.folders))}

    @api.post("/tagger/v1/interrogate", tags=["tagger"])
    async def tagger_interrogate(req: TaggerInterrogateRequest):
        if req.model not in wd14.installed(state.folders):
            return _not_found(state.folders, req.model, f"{wd14.where()}; installed")
        found = await run(scores, req.model, req.image)
        return {"caption": tagger_caption(found, req.threshold)}

    return api
