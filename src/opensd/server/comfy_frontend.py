"""ComfyUI's own node editor at /comfy/, from the optional `comfyui-frontend-package` distribution
(GPL-3.0, so installed by `pip install "opensd[comfyui]"`, never vendored), plus the small routes
its start-up calls beyond the ComfyUI API proper (/extensions, /i18n, /features, user data).

The frontend derives its API base from its page path: served at /comfy/ it calls /comfy/api/...,
opens /comfy/ws and loads its own static files from /comfy/... . So the ComfyUI routers are
mounted once more under /comfy/api (the WebSocket under /comfy), before the static folder."""
from __future__ import annotations

import base64
import hashlib
import logging
import re
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from . import comfy_jobs, comfy_support, comfy_userdata

log = logging.getLogger(__name__)
PREFIX = "/comfy"
# The frontend names some of its own images by absolute path (favicon, progress-favicon frames,
# logos), whatever folder it is served from: those two are served from its folder at the root too.
ROOT_IMAGES = "/assets/images"
ROOT_FAVICON = "/assets/favicon.ico"
TEMPLATES = Path(__file__).parent / "comfy_templates"
TEMPLATE_FILES = frozenset(p.name for p in TEMPLATES.iterdir() if p.is_file())


def static_dir() -> Path | None:
    """The frontend's built files, or None when the optional package is not installed."""
    try:
        import comfyui_frontend_package
    except ImportError:  # the optional extra opensd[comfyui]
        return None
    folder = Path(comfyui_frontend_package.__file__).parent / "static"
    return folder if (folder / "index.html").is_file() else None


def page_policy(index_html: str) -> str:
    """The page's Content-Security-Policy: everything from this origin only (so the frontend cannot
    reach another machine even if some panel tried), no JavaScript eval (WebAssembly compiling is
    allowed: the frontend uses a wasm module); its one inline script by hash."""
    inline = re.findall(r"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", index_html, re.S)
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in inline)
    return (f"default-src 'self'; script-src 'self' 'wasm-unsafe-eval' {hashes}; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data: blob:; media-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; "
            "worker-src 'self' blob:; object-src 'none'; base-uri 'self'; form-action 'self'; "
            "frame-ancestors 'none'")


def install(app: FastAPI, state, comfy_router_factory) -> None:
    """User data and support routes at / and /api; the frontend (when installed) at /comfy/."""
    store = comfy_userdata.UserFiles(state.settings.data_dir)
    extra = [comfy_userdata.router(store), comfy_support.router(state), comfy_jobs.router(state)]
    for prefix in ("", "/api"):
        for r in extra:
            app.include_router(r, prefix=prefix, include_in_schema=prefix == "")
    folder = static_dir()
    if folder is None:
        log.info('ComfyUI frontend not installed (pip install "opensd[comfyui]"): /comfy/ is off')
        return
    comfy = comfy_router_factory()
    for r in [comfy, *extra]:
        app.include_router(r, prefix=PREFIX + "/api", include_in_schema=False)
    app.include_router(comfy, prefix=PREFIX, include_in_schema=False)  # for /comfy/ws

    @app.get(PREFIX, include_in_schema=False)
    def comfy_root():
        return RedirectResponse(PREFIX + "/")

    index = folder / "index.html"
    headers = {"Content-Security-Policy": page_policy(index.read_text(encoding="utf-8")),
               "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}

    @app.get(PREFIX + "/", include_in_schema=False)
    def page():
        return FileResponse(index, media_type="text/html", headers=headers)

    @app.get(PREFIX + "/templates/{name}", include_in_schema=False)
    def templates(name: str):
        # The template browser (shown on first visit) reads index.json, index.<locale>.json and
        # index_logo.json; ComfyUI's own templates are a separate package we do not ship, so ours
        # is the one graph that runs on the built-in model.
        if name == "index_logo.json":
            return {}
        if name.startswith("index.") and name.endswith(".json"):
            name = "index.json"
        if name in TEMPLATE_FILES:
            return FileResponse(TEMPLATES / name)
        return JSONResponse({"error": "NotFound", "detail": f"template: no file {name!r}"}, status_code=404)

    @app.get(PREFIX + "/user.css", include_in_schema=False)
    def page_css():
        # the page links ./user.css as ComfyUI's web root does; user styling lives in userdata
        return Response("", media_type="text/css")

    @app.get(ROOT_FAVICON, include_in_schema=False)
    def favicon():
        return FileResponse(folder / ROOT_FAVICON.lstrip("/"))

    app.mount(ROOT_IMAGES, StaticFiles(directory=folder / ROOT_IMAGES.lstrip("/")), name="comfy-images")
    app.mount(PREFIX, StaticFiles(directory=folder, html=True), name="comfy-frontend")
