"""Training image sets uploaded through the web UI: one folder per set under `<data dir>/datasets`,
each image with its caption beside it as `<image name>.txt` (kohya's layout, which the trainers read
as it is). Names are plain (file_names.py); every image is decoded before it is kept (size and pixel
caps), PNG, JPEG and WebP are kept as sent, any other format is stored as PNG."""
from __future__ import annotations

import io
import shutil
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..atomic import write_atomic
from ..errors import InvalidArgument
from ..training.finetune_data import IMAGE_EXTS
from . import disk_room, images_io
from .file_names import from_upload, plain_name

MAX_IMAGES = 1000            # per dataset
MAX_IMAGE_BYTES = 32 << 20   # per uploaded file
MAX_CAPTION = 2000           # characters; kohya reads one line
KEPT = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}


class DatasetMissing(InvalidArgument):
    """The named dataset or image does not exist (the routes answer 404)."""


@dataclass
class DatasetImage:
    file: str
    caption: str
    width: int
    height: int


class Datasets:
    def __init__(self, root: Path, max_pixels: int):
        self.root = Path(root)
        self.max_pixels = max_pixels

    def names(self) -> list[tuple[str, int]]:
        """(name, number of images) of every dataset, by name."""
        if not self.root.is_dir():
            return []
        return [(p.name, len(_images(p))) for p in sorted(self.root.iterdir(), key=lambda p: p.name.lower())
                if p.is_dir() and not p.name.startswith(".")]

    def create(self, name: str) -> str:
        name = plain_name(name, "name")
        (self.root / name).mkdir(parents=True, exist_ok=True)
        return name

    def folder(self, name: str) -> Path:
        name = plain_name(name, "dataset")
        path = self.root / name
        if not path.is_dir():
            raise DatasetMissing(f"dataset: no dataset named {name!r}")
        return path

    def images(self, name: str) -> list[DatasetImage]:
        out = []
        for path in _images(self.folder(name)):
            try:
                with Image.open(path) as im:
                    width, height = im.size
            except OSError:
                width = height = 0
            out.append(DatasetImage(path.name, _caption(path), width, height))
        return out

    def prepare(self, filename: str | None, data: bytes) -> tuple[str, bytes]:
        """An uploaded file checked (size, decodes, pixel cap): (a name for it, the bytes to keep)."""
        field = f"files: {filename or 'upload'}"
        if len(data) > MAX_IMAGE_BYTES:
            raise InvalidArgument(f"{field}: over the {MAX_IMAGE_BYTES >> 20} MiB limit per image")
        image = images_io.decode_bytes(data, field, self.max_pixels)
        fmt = Image.open(io.BytesIO(data)).format
        if fmt not in KEPT:
            buf = io.BytesIO()
            image.convert("RGBA" if "A" in image.getbands() else "RGB").save(buf, format="PNG")
            data = buf.getvalue()
        return from_upload(filename, KEPT.get(fmt, ".png")), data

    def add(self, name: str, files: list[tuple[str, bytes]]) -> list[str]:
        """Keep prepared images; returns their stored names (never replacing another image)."""
        folder = self.folder(name)
        if len(_images(folder)) + len(files) > MAX_IMAGES:
            raise InvalidArgument(f"files: dataset {name!r} would hold more than {MAX_IMAGES} images, the limit")
        disk_room.check(folder, sum(len(data) for _, data in files), "files")
        stored = []
        for wanted, data in files:
            path = _free(folder, wanted)
            with open(path, "xb") as f:  # x: a name taken meanwhile fails instead of being replaced
                f.write(data)
            stored.append(path.name)
        return stored

    def image(self, name: str, file: str) -> Path:
        file = plain_name(file, "file")
        path = self.folder(name) / file
        if path.suffix.lower() not in IMAGE_EXTS or not path.is_file():
            raise DatasetMissing(f"file: dataset {name!r} has no image {file!r}")
        return path

    def set_caption(self, name: str, file: str, caption: str) -> str:
        """Write the image's caption sidecar (one line; an empty caption removes it)."""
        if not isinstance(caption, str) or len(caption) > MAX_CAPTION:
            raise InvalidArgument(f"caption: at most {MAX_CAPTION} characters")
        path = self.image(name, file).with_suffix(".txt")
        text = " ".join(caption.split())
        if text:
            write_atomic(path, text + "\n")
        else:
            path.unlink(missing_ok=True)
        return text

    def delete_image(self, name: str, file: str) -> None:
        path = self.image(name, file)
        path.with_suffix(".txt").unlink(missing_ok=True)
        path.unlink()

    def delete(self, name: str) -> None:
        shutil.rmtree(self.folder(name))


def _images(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file()),
                  key=lambda p: p.name.lower())


def _caption(image: Path) -> str:
    try:
        lines = image.with_suffix(".txt").read_text(encoding="utf-8-sig", errors="replace").splitlines()
    except OSError:
        return ""
    return next((line.strip() for line in lines if line.strip()), "")


def _free(folder: Path, name: str) -> Path:
    """`folder/name`, or `stem-2.ext`, `-3`..., so no two images share a stem (and so a caption file)."""
    taken = {p.stem.lower() for p in folder.iterdir()}
    stem, suffix = Path(name).stem, Path(name).suffix
    candidate, n = stem, 2
    while candidate.lower() in taken:
        candidate, n = f"{stem}-{n}", n + 1
    return folder / (candidate + suffix)
