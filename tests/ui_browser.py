"""Helpers for the web UI's browser tests, on top of browser_live (Chromium via Playwright, the page
recorder): contexts for desktop and phone, dropping a file, waiting, the horizontal-scroll check.

For tabs added later: import the `live` and `browser` fixtures; `open_page(browser, url, **PHONE)`
gives a page and its PageLog (assert `log.console_errors == []` at the end); PHONE is the 360x740
touch context the layout test uses for every registered tab."""
from __future__ import annotations

import base64
import time
from urllib.parse import urlsplit

import pytest
from browser_live import PageLog, launch
from server_live import LiveServer

from opensd.server.settings import Settings

DESKTOP = {"viewport": {"width": 1280, "height": 800}}
PHONE = {"viewport": {"width": 360, "height": 740}, "has_touch": True, "is_mobile": True,
         "device_scale_factor": 2}


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """An `opensd serve` app with the built-in model (and its Canny ControlNet), for one test module."""
    with LiveServer(Settings(outputs_dir=tmp_path_factory.mktemp("ui") / "out")) as server:
        yield server


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium, for one test module (import this fixture and `live` into the module)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a test dependency")
    with sync_api.sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


def open_page(browser, url: str, **context):
    """A fresh context and page at `url`, recorded from its first request: (page, PageLog)."""
    page = browser.new_context(**(context or DESKTOP)).new_page()
    parts = urlsplit(url)
    log = PageLog(f"{parts.scheme}://{parts.netloc}").attach(page)
    page.goto(url)
    return page, log


def drop_file(page, selector: str, data: bytes, name: str, mime: str = "image/png") -> None:
    """Drop a file on an element as a user dragging it from the desktop would."""
    page.evaluate("""([selector, b64, name, mime]) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], name, { type: mime }));
        const target = document.querySelector(selector);
        for (const type of ["dragenter", "dragover", "drop"]) {
            target.dispatchEvent(new DragEvent(type, { dataTransfer: dt, bubbles: true, cancelable: true }));
        }
    }""", [selector, base64.b64encode(data).decode(), name, mime])


def wait_for(predicate, timeout: float = 60.0, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def no_horizontal_scroll(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
