"""No page of ours asks anything of another machine: every request the browser makes while loading
and rendering /docs (Swagger UI; /redoc redirects there), the web UI and ComfyUI's frontend is on the server's own
origin, and the API docs render from the assets we serve (they used to come from a CDN)."""
from __future__ import annotations

import pytest
from browser_live import PageLog, launch
from server_live import LiveServer

from opensd.server.comfy_frontend import static_dir
from opensd.server.settings import Settings

playwright_api = pytest.importorskip("playwright.sync_api")

# page -> a check that it has rendered (run in the page; true when done)
PAGES = {
    "/docs": """() => document.querySelector('.swagger-ui .info .title')?.textContent.includes('opensd')
                && document.querySelectorAll('.opblock').length > 10""",
    "/redoc": """() => location.pathname === '/docs'
                 && document.querySelectorAll('.opblock').length > 10""",  # redirected to /docs
    "/": "() => document.readyState === 'complete'",
    "/login": "() => document.readyState === 'complete'",
}
if static_dir() is not None:
    PAGES["/comfy/"] = "() => window.app && window.app.graph && document.querySelector('canvas')"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with LiveServer(Settings(outputs_dir=tmp_path_factory.mktemp("offline") / "out")) as srv:
        yield srv


@pytest.mark.parametrize("path", list(PAGES))
def test_page_makes_no_request_off_the_machine(server, path):
    with playwright_api.sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page()
        log = PageLog(server.url).attach(page)
        page.goto(server.url + path)
        page.wait_for_function(PAGES[path], timeout=60_000)
        page.wait_for_load_state("networkidle")
        browser.close()
    assert len(log.requests) > 1
    assert log.foreign() == []
    if path in ("/docs", "/redoc"):
        assert log.failures == [] and log.console_errors == []
