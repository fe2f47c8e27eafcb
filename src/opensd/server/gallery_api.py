"""The gallery routes (/opensd/v1/gallery...): every image made, newest first, paged and searched by
prompt in SQL; its file, its thumbnail, its parameters (and the request that remakes it); delete."""
from __future__ import annotations

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, JSONResponse

from ..pipeline.infotext import parse_infotext
from .gallery import Gallery, GalleryImage
from .infotext_request import request_from_infotext
from .opensd_api import PREFIX, checkpoint_list
from .opensd_models import Deleted, GalleryDetail, GalleryItem, GalleryPage

MEDIA = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
NOSNIFF = {"X-Content-Type-Options": "nosniff"}
RECENT_JOBS = 50  # finished jobs checked for new images on each page request


def _item(image: GalleryImage) -> GalleryItem:
    base = f"{PREFIX}/gallery/{image.id}"
    return GalleryItem(id=image.id, job_id=image.job_id, created=image.created, width=image.width,
                       height=image.height, prompt=image.prompt, negative_prompt=image.negative_prompt,
                       image_url=f"{base}/image", thumb_url=f"{base}/thumb")


def _missing(image_id: int, what: str = "image") -> JSONResponse:
    return JSONResponse({"error": "NotFound", "detail": f"id: no gallery {what} {image_id}"}, status_code=404)


SQLITE_MAX_INT = 2**63 - 1  # a larger offset was an OverflowError binding it, an HTTP 500


def router(state) -> APIRouter:
    api = APIRouter(prefix=PREFIX + "/gallery", tags=["opensd gallery"])
    gallery = state.gallery = Gallery(state.settings.db_path, state.settings.outputs_dir)
    gallery.catch_up(state.store.all())
    state.queue.listeners.append(lambda event, job: gallery.add_job(job) if event == "finished" else None)

    @api.get("")
    def page(offset: int = Query(0, ge=0, le=SQLITE_MAX_INT), limit: int = Query(48, ge=1, le=500),
             q: str = Query("", max_length=1000, description="text the prompt contains")) -> GalleryPage:
        """Images newest first, `limit` from `offset`, optionally only those whose prompt contains `q`."""
        if offset == 0:  # a job that finished a moment ago may not be indexed by its listener yet
            gallery.catch_up(state.store.history(limit=RECENT_JOBS))
        total, images = gallery.page(offset, limit, q)
        return GalleryPage(total=total, offset=offset, limit=limit, items=[_item(i) for i in images])

    @api.get("/{image_id}", responses={404: {"description": "no such image"}})
    def detail(image_id: int) -> GalleryDetail:
        """One image with its A1111 parameters and the txt2img request that makes it again."""
        image = gallery.get(image_id)
        if image is None:
            return _missing(image_id)
        params, request, notes = {}, None, []
        if image.infotext:
            prompt, negative, parsed = parse_infotext(image.infotext)
            params = {"Prompt": prompt, "Negative prompt": negative, **parsed}
            request, notes = request_from_infotext(image.infotext, [(c.name, c.hash) for c in checkpoint_list(state)])
        return GalleryDetail(**_item(image).model_dump(), infotext=image.infotext, parameters=params,
                             request=request, notes=notes)

    def send(image_id: int, locate, headers: dict):
        image = gallery.get(image_id)
        path = locate(image) if image else None
        if path is None:
            return _missing(image_id)
        return FileResponse(path, media_type=MEDIA.get(path.suffix.lower(), "application/octet-stream"),
                            headers={**NOSNIFF, **headers})

    @api.get("/{image_id}/image", response_class=FileResponse, responses={404: {"description": "no such image"}})
    def image_file(image_id: int):
        return send(image_id, gallery.file, {})

    @api.get("/{image_id}/thumb", response_class=FileResponse, responses={404: {"description": "no such image"}})
    def thumb(image_id: int):
        """A WebP thumbnail (longest side 256 px), made on first request and kept."""
        return send(image_id, gallery.thumbnail, {"Cache-Control": "private, max-age=86400"})

    @api.delete("/{image_id}", responses={404: {"description": "no such image"}})
    def delete(image_id: int) -> Deleted:
        """Delete the image's file, thumbnail and record (its job's record stays)."""
        if not gallery.delete(image_id):
            return _missing(image_id)
        return Deleted(deleted=True)

    return api
