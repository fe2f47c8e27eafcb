"""`opensd serve --open` opens the web UI in the user's browser once the server answers: run as a
real process with $BROWSER (which Python's webbrowser module honours) set to a recorder that fetches
the URL it is given, as a browser would."""
from __future__ import annotations

import os
import subprocess
import sys
import time

from server_live import free_port

from opensd.cli.serve import ui_url

RECORDER = """import sys, urllib.request
url = sys.argv[1]
with urllib.request.urlopen(url, timeout=30) as r:
    page = r.read().decode()
open(sys.argv[2], "w").write(f"{url}\\n{r.status}\\n{page}")
"""


def test_serve_open_launches_the_browser_on_the_ui(tmp_path):
    recorder, seen = tmp_path / "browser.py", tmp_path / "seen.txt"
    recorder.write_text(RECORDER)
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", BROWSER=f"{sys.executable} {recorder} %s {seen}")
    proc = subprocess.Popen([sys.executable, "-m", "opensd.cli", "serve", "--open", "--port", str(port),
                             "--outputs-dir", str(tmp_path / "out")], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 90
        while not seen.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        url, status, page = seen.read_text().split("\n", 2)
    finally:
        proc.terminate()
        proc.wait(30)
    assert url == f"http://127.0.0.1:{port}/" and status == "200"
    assert '<script type="module" src="/ui/js/main.js">' in page


def test_ui_url_maps_wildcard_binds_to_this_machine():
    assert ui_url("0.0.0.0", 80) == "http://127.0.0.1:80/"
    assert ui_url("::", 7860) == "http://[::1]:7860/"
    assert ui_url("fe80::1", 1) == "http://[fe80::1]:1/"
    assert ui_url("myhost.local", 7860) == "http://myhost.local:7860/"
