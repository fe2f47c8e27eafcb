"""The web UI's static files (HTML, CSS, ES modules; no build step, no network). The server serves
them (server/ui_routes.py); they talk to it only through the documented /sdapi/v1 and /opensd/v1
routes. How the files are organised and how to add a tab: docs/ui.md."""
from __future__ import annotations

from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "static"
