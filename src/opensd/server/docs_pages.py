"""/docs (Swagger UI) served entirely from this machine.

FastAPI's default pages load their scripts, styles, favicon and (ReDoc) Google Fonts from CDNs, so
they are blank offline and tell third parties who reads our docs. Swagger UI's assets come from the
`fastapi-offline` package (it tracks swagger-ui-dist 5); we only serve its files. Swagger UI's
online validator badge is off too: it would send the spec's URL to swagger.io. ReDoc is not
offered (/redoc redirects to /docs): its page always loads its maker's logo from their CDN."""
from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs-assets"
ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"


def install(app: FastAPI) -> None:
    """Add /docs and its OAuth2 redirect to an app built with docs_url=redoc_url=None."""
    openapi_url, title = app.openapi_url, f"{app.title} - API"
    oauth2_url = app.swagger_ui_oauth2_redirect_url
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS_DIR), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def swagger():
        return get_swagger_ui_html(
            openapi_url=openapi_url, title=title, oauth2_redirect_url=oauth2_url,
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js", swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon.png", swagger_ui_parameters={"validatorUrl": None})

    @app.get(oauth2_url, include_in_schema=False)
    def swagger_oauth2_redirect():
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    def redoc():
        return RedirectResponse("/docs")
