"""Files a client stored (ComfyUI uploads, node outputs) served back on this origin: a file's type
follows its name only for images, video and audio, never for a type a browser would run (HTML,
SVG, JavaScript, CSS, XML); anything else is sent as bytes to save. With nosniff and a sandboxing
policy, an upload named "a.html" (a PNG with a script in a text chunk is still a valid image) cannot
become a page on this origin that drives the API with the user's session."""
from __future__ import annotations

import mimetypes
from pathlib import Path

from fastapi.responses import FileResponse

SHOWN = ("image/", "video/", "audio/")
NEVER_SHOWN = ("image/svg+xml",)  # an image type that runs scripts
HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox; default-src 'none'"}
# mimetypes answers from the machine's tables (/etc/mime.types): the common media names fixed here
KNOWN = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
         ".gif": "image/gif", ".mp4": "video/mp4", ".webm": "video/webm", ".flac": "audio/flac",
         ".mp3": "audio/mpeg", ".wav": "audio/wav", ".json": "application/json"}


def media_type(name: str) -> str:
    suffix = Path(name).suffix.lower()
    kind = KNOWN.get(suffix) or mimetypes.guess_type(name)[0] or ""
    if kind == "application/json" or (kind.startswith(SHOWN) and kind not in NEVER_SHOWN):
        return kind
    return "application/octet-stream"


def user_file(path: Path) -> FileResponse:
    kind = media_type(path.name)
    if kind == "application/octet-stream":
        return FileResponse(path, media_type=kind, headers=HEADERS, content_disposition_type="attachment",
                            filename=path.name)
    return FileResponse(path, media_type=kind, headers=HEADERS)
