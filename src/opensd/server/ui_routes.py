"""Serves the web UI: `/` (the app), `/login` (token login page) and its files under `/ui/`.

Every UI response carries a Content-Security-Policy that allows only this origin's scripts (no
inline scripts, no eval), styles and connections, plus nosniff and no framing. The files are the
same for every visitor (they hold no secret), so the Guard lets them through without a token; the
app's first API call tells it whether to show the login page."""
from __future__ import annotations

import mimetypes
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse

from ..ui import STATIC_DIR

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
           "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}
TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".svg": "image/svg+xml"}
UI_PREFIX = "/ui/"
LOGIN_API = "/opensd/v1/login"  # the login page posts the token here (opensd_api.py)
SESSION_API = "/opensd/v1/session"  # says whether this browser is signed in, so the UI asks before it calls
PUBLIC_PATHS = ("/", "/login", LOGIN_API, SESSION_API)  # plus everything under UI_PREFIX


def is_public(path: str) -> bool:
    """The UI's own files, which the Guard serves without a token."""
    return path in PUBLIC_PATHS or path.startswith(UI_PREFIX)


def _file(path: Path):
    kind = TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=kind, headers=HEADERS)


def router() -> APIRouter:
    api = APIRouter(include_in_schema=False)

    @api.api_route("/", methods=["GET", "HEAD"])  # HEAD: clients check the server is up with it (A1111's answers)
    def index():
        return _file(STATIC_DIR / "index.html")

    @api.get("/login")
    def login():
        return _file(STATIC_DIR / "login.html")

    @api.get(UI_PREFIX + "{name:path}")
    def asset(name: str):
        try:
            path = (STATIC_DIR / name).resolve()
            found = path.is_relative_to(STATIC_DIR) and path.is_file()
        except (OSError, ValueError):  # a NUL byte, a name too long for the file system
            found = False
        if not found:
            return JSONResponse({"error": "NotFound", "detail": f"ui: no file {name!r}"}, status_code=404,
                                headers={"X-Content-Type-Options": "nosniff"})
        return _file(path)

    return api
