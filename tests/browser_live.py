"""Browser-test helpers: Debian's Chromium driven by Playwright for Python (Playwright's own browser
download is not used), and a recorder of every request, failed load and console error of a page.

Without Chromium the browser tests fail with one clear line (.ci/run installs it with
scripts/install_test_browser.sh); OPENSD_SKIP_BROWSER_TESTS=1 skips them instead, for local
development only. OPENSD_CHROMIUM names another binary."""
from __future__ import annotations

import http.server
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

CHROMIUM = Path(os.environ.get("OPENSD_CHROMIUM", "/usr/bin/chromium"))
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def launch(playwright):
    if not CHROMIUM.is_file():
        message = (f"no Chromium at {CHROMIUM}: run scripts/install_test_browser.sh "
                   "(or set OPENSD_SKIP_BROWSER_TESTS=1 to skip the browser tests locally)")
        if os.environ.get("OPENSD_SKIP_BROWSER_TESTS") == "1":
            pytest.skip(message)
        pytest.fail(message, pytrace=False)
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)


@dataclass
class PageLog:
    """What a page asked for and complained about, recorded from the moment it is attached."""
    origin: str
    requests: list[str] = field(default_factory=list)
    failures: list[tuple[int, str]] = field(default_factory=list)   # (status, url) of answers >= 400
    console_errors: list[tuple[str, str]] = field(default_factory=list)  # (text, url it names)

    def attach(self, page) -> PageLog:
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("response", lambda r: self.failures.append((r.status, r.url)) if r.status >= 400 else None)
        page.on("console", lambda m: self.console_errors.append((m.text, m.location.get("url", "")))
                if m.type == "error" else None)
        page.on("pageerror", lambda e: self.console_errors.append((f"uncaught: {e}", "")))
        return self

    def foreign(self) -> list[str]:
        """Requests that would leave this server (blob: and data: URLs stay in the page)."""
        own = urlsplit(self.origin)
        out = []
        for url in self.requests:
            parts = urlsplit(url)
            if parts.scheme == "data" or (parts.scheme == "blob" and url.startswith(f"blob:{self.origin}/")):
                continue
            if (parts.scheme, parts.netloc) != (own.scheme, own.netloc):
                out.append(url)
        return out


@contextmanager
def other_site(html: str):
    """`html` served as the only page of another site (another port on this machine); yields its URL."""
    body = html.encode()

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://localhost:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
