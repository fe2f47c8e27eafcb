"""The dataset routes (/opensd/v1/datasets...): image sets to train on, uploaded from the browser as
multipart/form-data (field `files`, several at once), each image's caption edited on its own."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from urllib.parse import quote

from ..errors import InvalidArgument
from .datasets import MAX_IMAGE_BYTES, DatasetMissing, Datasets
from .gallery_api import MEDIA, NOSNIFF
from .opensd_api import PREFIX
from .opensd_models import Deleted
from .train_bodies import Caption, Dataset, DatasetCreate, DatasetImageItem, DatasetList, DatasetSummary

MAX_FILES = 100  # per upload request
BASE = PREFIX + "/datasets"
MISSING = {404: {"description": "no such dataset or image"}}


def missing(e: DatasetMissing) -> JSONResponse:
    return JSONResponse({"error": "NotFound", "detail": str(e)}, status_code=404)


def view(datasets: Datasets, name: str, added: list[str] | None = None) -> Dataset:
    url = f"{BASE}/{quote(name)}/images/"
    return Dataset(name=name, added=added or [], images=[
        DatasetImageItem(file=i.file, caption=i.caption, width=i.width, height=i.height, url=url + quote(i.file))
        for i in datasets.images(name)])


def router(state) -> APIRouter:
    api = APIRouter(prefix=BASE, tags=["opensd training"])
    datasets = state.datasets = Datasets(state.settings.data_dir / "datasets", state.settings.max_image_pixels)

    @api.get("")
    def names() -> DatasetList:
        return DatasetList(items=[DatasetSummary(name=n, images=c) for n, c in datasets.names()])

    @api.post("", status_code=201)
    def create(body: DatasetCreate) -> Dataset:
        """Make an empty dataset (or answer the existing one of that name)."""
        return view(datasets, datasets.create(body.name))

    @api.get("/{name}", responses=MISSING)
    def dataset(name: str) -> Dataset:
        """The dataset's images with their captions."""
        try:
            return view(datasets, name)
        except DatasetMissing as e:
            return missing(e)

    @api.delete("/{name}", responses=MISSING)
    def delete(name: str) -> Deleted:
        """Delete the dataset's folder: its images and captions (trained models stay)."""
        try:
            datasets.delete(name)
        except DatasetMissing as e:
            return missing(e)
        return Deleted(deleted=True)

    @api.post("/{name}/images", responses=MISSING)
    async def upload(name: str, files: Annotated[list[UploadFile], File(description="image files")]) -> Dataset:
        """Add images (multipart/form-data, field `files`); each is decoded first and stored under a free name
        (PNG, JPEG and WebP as sent, other formats as PNG). All are checked before any is kept."""
        if len(files) > MAX_FILES:
            raise InvalidArgument(f"files: {len(files)} files in one upload, the limit is {MAX_FILES}")
        payload = [(f.filename, await f.read(MAX_IMAGE_BYTES + 1)) for f in files]
        try:
            added = await run_in_threadpool(_store, datasets, name, payload)
            return view(datasets, name, added)
        except DatasetMissing as e:
            return missing(e)

    @api.get("/{name}/images/{file}", response_class=FileResponse, responses=MISSING)
    def image(name: str, file: str):
        try:
            path = datasets.image(name, file)
        except DatasetMissing as e:
            return missing(e)
        return FileResponse(path, media_type=MEDIA.get(path.suffix.lower(), "application/octet-stream"),
                            headers=NOSNIFF)

    @api.put("/{name}/images/{file}/caption", responses=MISSING)
    def caption(name: str, file: str, body: Caption) -> DatasetImageItem:
        """Set the image's caption (saved as <image name>.txt beside it, one line; empty removes it)."""
        try:
            text = datasets.set_caption(name, file, body.caption)
            item = next(i for i in datasets.images(name) if i.file == file)
        except DatasetMissing as e:
            return missing(e)
        return DatasetImageItem(file=file, caption=text, width=item.width, height=item.height,
                                url=f"{BASE}/{quote(name)}/images/{quote(file)}")

    @api.delete("/{name}/images/{file}", responses=MISSING)
    def delete_image(name: str, file: str) -> Deleted:
        try:
            datasets.delete_image(name, file)
        except DatasetMissing as e:
            return missing(e)
        return Deleted(deleted=True)

    return api


def _store(datasets: Datasets, name: str, files: list[tuple[str | None, bytes]]) -> list[str]:
    datasets.folder(name)  # a missing dataset answers 404 before any image is decoded
    return datasets.add(name, [datasets.prepare(filename, data) for filename, data in files])
