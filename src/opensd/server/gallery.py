"""Every image the server has made, from either API, as rows of one SQLite table beside the job
queue's: found when its job finishes (and, at start, in jobs finished before this table existed),
paged and searched by prompt text in SQL, with 256-px WebP thumbnails made once and kept on disk.
Deleting an image removes its file, its thumbnail and its row; the job's record stays."""
from __future__ import annotations

import logging
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .. import safe_paths
from ..atomic import atomic_write
from ..pipeline.infotext import parse_infotext, read_infotext
from .store import DONE, INTERRUPTED, Job

log = logging.getLogger(__name__)
THUMB_SIDE = 256

_SCHEMA = """
CREATE TABLE IF NOT EXISTS gallery_images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    path TEXT UNIQUE NOT NULL,
    created REAL NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    prompt TEXT NOT NULL,
    negative_prompt TEXT NOT NULL,
    infotext TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS gallery_images_job ON gallery_images(job_id);
CREATE TABLE IF NOT EXISTS gallery_jobs (job_id TEXT PRIMARY KEY);
"""


@dataclass
class GalleryImage:
    id: int
    job_id: str
    path: str         # relative to the outputs folder, forward slashes
    created: float
    width: int
    height: int
    prompt: str
    negative_prompt: str
    infotext: str


class Gallery:
    def __init__(self, db_path: Path, outputs_dir: Path):
        self.db_path = str(db_path)
        self.outputs = Path(outputs_dir).resolve()
        self.thumbs = self.outputs / ".thumbs"
        with self._db() as db:
            db.executescript(_SCHEMA)

    @contextmanager
    def _db(self):
        """A connection per call: cheap for SQLite, safe from any thread, nothing left open."""
        db = sqlite3.connect(self.db_path, timeout=10, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            yield db
        finally:
            db.close()

    # --- indexing ---------------------------------------------------------------------------

    def catch_up(self, jobs: list[Job]) -> int:
        """Index the finished jobs not indexed yet (all of them the first time); returns images added."""
        done = [j for j in jobs if j.status in (DONE, INTERRUPTED)]
        seen: set[str] = set()
        with self._db() as db:
            for at in range(0, len(done), 500):  # SQLite caps the number of ? per statement
                ids = [j.id for j in done[at:at + 500]]
                marks = ",".join("?" * len(ids))
                seen.update(r[0] for r in db.execute(f"SELECT job_id FROM gallery_jobs WHERE job_id IN ({marks})", ids))
        return sum(self.add_job(j) for j in done if j.id not in seen)

    def add_job(self, job: Job) -> int:
        """Index a finished job's images (A1111 result files, ComfyUI saved outputs)."""
        rows = []
        for rel in _files_of(job):
            path = self._inside(rel)
            if path is None or not safe_paths.is_file(path):
                continue
            try:
                with Image.open(path) as im:
                    width, height = im.size
                text = read_infotext(path) or ""
            except OSError as e:
                log.warning("gallery: skipping unreadable %s: %s", path, e)
                continue
            prompt, negative = (parse_infotext(text)[:2] if text else (graph_text(job.payload), ""))
            rows.append((job.id, rel, job.finished or job.created, width, height, prompt, negative, text))
        with self._db() as db:
            db.execute("BEGIN")
            db.executemany(
                "INSERT OR IGNORE INTO gallery_images (job_id, path, created, width, height, prompt, "
                "negative_prompt, infotext) VALUES (?,?,?,?,?,?,?,?)", rows)
            db.execute("INSERT OR IGNORE INTO gallery_jobs (job_id) VALUES (?)", (job.id,))
            db.execute("COMMIT")
        return len(rows)

    # --- reading ----------------------------------------------------------------------------

    def page(self, offset: int, limit: int, search: str = "") -> tuple[int, list[GalleryImage]]:
        """Newest first; `search` matches prompt text (case-insensitive for ASCII)."""
        where, args = "", ()
        if search.strip():
            pattern = "%" + search.strip().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            where, args = "WHERE prompt LIKE ? ESCAPE '\\'", (pattern,)
        with self._db() as db:
            (total,) = db.execute(f"SELECT COUNT(*) FROM gallery_images {where}", args).fetchone()
            rows = db.execute(f"SELECT * FROM gallery_images {where} ORDER BY id DESC LIMIT ? OFFSET ?",
                                    (*args, limit, offset)).fetchall()
        return total, [GalleryImage(**dict(r)) for r in rows]

    def get(self, image_id: int) -> GalleryImage | None:
        if not 0 < image_id < 1 << 63:  # SQLite's INTEGER range; a larger id is no image, not an error
            return None
        with self._db() as db:
            row = db.execute("SELECT * FROM gallery_images WHERE id=?", (image_id,)).fetchone()
        return None if row is None else GalleryImage(**dict(row))

    def file(self, image: GalleryImage) -> Path | None:
        path = self._inside(image.path)
        return path if path is not None and path.is_file() else None

    def thumbnail(self, image: GalleryImage) -> Path | None:
        """The image's thumbnail, made on first use (WebP, longest side 256 px)."""
        thumb = self.thumbs / f"{image.id}.webp"
        if thumb.is_file():
            return thumb
        source = self.file(image)
        if source is None:
            return None
        self.thumbs.mkdir(parents=True, exist_ok=True)
        with Image.open(source) as im:
            im = im.convert("RGBA" if im.mode in ("RGBA", "LA", "P") else "RGB")
            im.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS)
            with atomic_write(thumb) as f:  # concurrent requests for one thumbnail each write their own temp
                im.save(f, format="WEBP", quality=82)
        return thumb

    # --- deleting ---------------------------------------------------------------------------

    def delete(self, image_id: int) -> bool:
        image = self.get(image_id)
        if image is None:
            return False
        for path in (self.file(image), self.thumbs / f"{image.id}.webp"):
            if path is not None:
                path.unlink(missing_ok=True)
        with self._db() as db:
            db.execute("DELETE FROM gallery_images WHERE id=?", (image_id,))
        return True

    def _inside(self, rel: str) -> Path | None:
        """The outputs-folder file `rel` names, or None if it would be outside the folder."""
        try:
            path = (self.outputs / rel).resolve()
        except (OSError, ValueError):
            return None
        return path if path.is_relative_to(self.outputs) else None


def _files_of(job: Job) -> list[str]:
    result = job.result or {}
    if job.kind == "a1111":
        files = result.get("files")
        return [str(f) for f in files] if isinstance(files, list) else []
    files = []  # ComfyUI: outputs[node]["images"] = [{filename, subfolder, type}], "output" under comfy/
    outputs = result.get("outputs")  # a damaged stored record may hold anything
    for node in outputs.values() if isinstance(outputs, dict) else ():
        images = node.get("images") if isinstance(node, dict) else None
        for item in images if isinstance(images, list) else ():
            if isinstance(item, dict) and item.get("type") == "output" and item.get("filename"):
                files.append("/".join(p for p in ("comfy", item.get("subfolder") or "", item["filename"]) if p))
    return files


def graph_text(payload: dict) -> str:
    """A ComfyUI graph's prompt texts (its CLIPTextEncode-style "text" inputs), for search."""
    graph = payload.get("prompt") if isinstance(payload, dict) else None
    texts = []
    for node in (graph or {}).values():
        text = (node.get("inputs") or {}).get("text") if isinstance(node, dict) else None
        if isinstance(text, str) and text:
            texts.append(text)
    return "\n".join(texts)
