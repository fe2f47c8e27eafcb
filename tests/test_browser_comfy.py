"""ComfyUI's own frontend at /comfy/ in a real browser: first visit -> its template browser -> our
built-in txt2img template -> Run -> the image shows in the SaveImage node's own preview, fetched
from /view, with the pixels of the PNG on disk. Every request stays on this server. A page on
another site cannot write the frontend's user data."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from browser_live import PageLog, launch, other_site
from PIL import Image
from server_live import LiveServer

from opensd.server.comfy_frontend import static_dir
from opensd.server.settings import Settings

pytestmark = pytest.mark.skipif(static_dir() is None, reason="needs the comfyui extra (in the test extras)")
playwright_api = pytest.importorskip("playwright.sync_api")

# The frontend asks for an optional user file that does not exist yet; ComfyUI answers 404 as we do
# and the frontend handles it, but Chromium still logs every 404 as a console error.
EXPECTED_404 = ("/comfy/api/userdata/comfy.templates.json",)

PREVIEW_PIXELS = """() => {
    const img = window.app.graph.getNodeById(9).imgs[0];
    const c = document.createElement('canvas');
    c.width = img.naturalWidth; c.height = img.naturalHeight;
    const ctx = c.getContext('2d');
    ctx.drawImage(img, 0, 0);
    return {src: img.src, width: c.width, height: c.height,
            rgba: Array.from(ctx.getImageData(0, 0, c.width, c.height).data)};
}"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with LiveServer(Settings(outputs_dir=tmp_path_factory.mktemp("browser-comfy") / "out")) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


def test_template_queue_and_preview(server, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    log = PageLog(server.url).attach(page)
    page.goto(server.url + "/comfy/")
    page.wait_for_function("() => window.app && window.app.graph", timeout=60_000)
    page.get_by_test_id("template-workflow-opensd-txt2img").click(timeout=30_000)  # first visit: templates
    page.wait_for_function("() => window.app.graph.getNodeById(9) !== null", timeout=30_000)
    nodes = page.evaluate("""() => window.app.graph._nodes.map(n => [n.type, !!LiteGraph.registered_node_types[n.type]])""")
    assert sorted(t for t, _ in nodes) == sorted(["CheckpointLoaderSimple", "CLIPTextEncode", "CLIPTextEncode",
                                                 "EmptyLatentImage", "KSampler", "VAEDecode", "SaveImage"])
    assert all(known for _, known in nodes), nodes  # no "missing node"
    page.evaluate("""() => { const k = window.app.graph.getNodeById(3);
        k.widgets.find(w => w.name === 'steps').value = 4; }""")  # the test's only change: fewer steps
    page.get_by_role("button", name="Run").first.click()
    page.wait_for_function("""() => { const n = window.app.graph.getNodeById(9);
        return n.imgs && n.imgs.length && n.imgs[0].complete && n.imgs[0].naturalWidth > 0; }""", timeout=180_000)
    shown = page.evaluate(PREVIEW_PIXELS)
    assert shown["src"].startswith(server.url + "/comfy/api/view?") and "type=output" in shown["src"]
    rgba = np.array(shown["rgba"], dtype=np.uint8).reshape(shown["height"], shown["width"], 4)
    assert (shown["width"], shown["height"]) == (64, 64) and rgba[..., :3].std() > 10  # not blank
    saved = sorted((Path(server.settings.outputs_dir) / "comfy").glob("opensd_*.png"))
    assert len(saved) == 1
    on_disk = np.asarray(Image.open(saved[0]).convert("RGB"))
    assert np.abs(on_disk.astype(int) - rgba[..., :3]).max() <= 1  # the preview is the saved image
    history = server.state.store.history("comfy")
    assert [j.result["status"]["status_str"] for j in history] == ["success"]
    assert history[0].payload["prompt"]["3"]["inputs"]["steps"] == 4
    assert history[0].payload["prompt"]["4"]["inputs"]["ckpt_name"] == "opensd-emoji.safetensors"

    assert log.foreign() == []
    unexpected = [(s, u) for s, u in log.failures if not u.startswith(tuple(server.url + p for p in EXPECTED_404))]
    assert unexpected == []
    errors = [(t, u) for t, u in log.console_errors
              if not (t.startswith("Failed to load resource") and u.startswith(tuple(server.url + p for p in EXPECTED_404)))]
    assert errors == []
    page.close()


def _evil_page(t: str) -> str:
    """Another site's page: it posts to the opensd server at `t` with a form and with no-cors fetches."""
    return f"""<!doctype html><form id=f method=post enctype=text/plain
            action="{t}/comfy/api/userdata/workflows%2Fform.json"><input name='{{"a":' value='1}}'></form>
            <script>
            fetch("{t}/comfy/api/userdata/workflows%2Ffetch.json", {{method: "POST", mode: "no-cors",
                  body: '{{"nodes": []}}'}}).finally(() => fetch("{t}/comfy/api/settings", {{method: "POST",
                  mode: "no-cors", body: '{{"Comfy.Evil": true}}'}})).finally(() => {{
                  document.title = "sent"; document.getElementById("f").submit(); }});
            </script>"""


def test_another_site_cannot_write_user_data(server, browser):
    with other_site(_evil_page(server.url)) as url:
        page = browser.new_page()
        statuses = []
        page.on("response", lambda r: statuses.append((r.status, r.url)) if server.url in r.url else None)
        page.goto(url)
        page.wait_for_url(f"{server.url}/**", timeout=30_000)  # the form navigated to the target
        page.close()
    root = Path(server.settings.data_dir) / "comfy-users" / "default"
    assert not (root / "workflows" / "form.json").exists() and not (root / "workflows" / "fetch.json").exists()
    settings = root / "comfy.settings.json"
    assert not settings.exists() or "Comfy.Evil" not in settings.read_text()
    assert statuses and all(s in (403, 415) for s, _ in statuses), statuses


def test_token_login_then_the_frontend_works(tmp_path, browser):
    """With a token set, opening /comfy/ before signing in lands on /login, which returns to /comfy/
    afterwards; then the session cookie carries every call, the WebSocket included. A crafted login
    link cannot send the signed-in browser to another host."""
    settings = Settings(outputs_dir=tmp_path / "out", api_token="s3cret-token")
    with LiveServer(settings) as srv:
        page = browser.new_page()
        log = PageLog(srv.url).attach(page)
        page.goto(srv.url + "/comfy/")
        page.wait_for_url(srv.url + "/login?next=%2Fcomfy%2F")
        page.fill("input[name=token]", "s3cret-token")
        page.locator("#login-form").evaluate("f => f.requestSubmit()")
        page.wait_for_url(srv.url + "/comfy/", timeout=30_000)
        page.wait_for_function("() => window.app && window.app.graph", timeout=60_000)
        page.wait_for_function("() => window.app.api.socket && window.app.api.socket.readyState === 1",
                               timeout=30_000)
        assert [f for f in log.failures if f[0] == 401] == []
        for bad in ("//evil.example/x", "/\\evil.example", "https://evil.example/", "/\t/evil.example"):
            page.goto(srv.url + "/login?next=" + quote(bad, safe=""))  # signed in: it forwards at once
            page.wait_for_url(srv.url + "/", timeout=15_000)
        assert log.foreign() == []
        page.close()
