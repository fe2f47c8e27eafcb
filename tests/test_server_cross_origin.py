"""Requests a browser sends cross-site without a CORS preflight (forms; fetch in no-cors mode:
text/plain, form-encoded, multipart or no Content-Type, GET/HEAD/POST) never change state; GET
changes nothing anywhere; clients that are not browsers (no Origin, no Sec-Fetch-*) keep working."""
from __future__ import annotations

import io
import json
import re

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from server_live import BASE, COMFY_GRAPH, models_dir

from opensd.server.app import create_app
from opensd.server.settings import Settings
from opensd.server.store import DONE, Job

EVIL = "https://evil.example"
SAME = {"Origin": BASE, "Sec-Fetch-Site": "same-origin"}  # what a browser sends from our own page
GRAPH = json.dumps({"prompt": COMFY_GRAPH}).encode()


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("xorigin")
    settings = Settings(models_dir=models_dir(root), outputs_dir=root / "out", start_worker=False)
    with TestClient(create_app(settings), base_url=BASE) as c:
        c.root = root
        state = c.app.state.opensd
        state.store.finish(state.store.add(Job(id="old", client="x", kind="comfy", payload={"prompt": {}})),
                           DONE, {"outputs": {}})
        assert c.post("/prompt", json={"prompt": COMFY_GRAPH, "prompt_id": "waiting"}).status_code == 200
        yield c


def snapshot(c) -> tuple:
    """Everything a request could change: the job rows, and every file under the server's folders."""
    jobs = sorted((j.id, j.status) for j in c.app.state.opensd.store.all())
    files = sorted((str(p.relative_to(c.root)), p.stat().st_size, p.stat().st_mtime_ns)
                   for p in c.root.rglob("*") if p.is_file() and not p.name.startswith("opensd-jobs.sqlite3"))
    return jobs, files


def state_changing_routes(c) -> list[tuple[str, str]]:
    routes = [(method.upper(), re.sub(r"\{[^}]+\}", "x", path))
              for path, ops in c.app.openapi()["paths"].items() for method in ops if method != "get"]
    routes += [(m, "/api" + p) for m, p in routes if p in ("/prompt", "/upload/image", "/interrupt")]
    assert len(routes) > 20 and ("POST", "/upload/image") in routes
    return routes


BROWSER_CROSS_SITE = [  # (what, headers): a page on another site, however its browser labels it
    ("Sec-Fetch-Site cross-site, no Origin", {"Sec-Fetch-Site": "cross-site"}),
    ("Sec-Fetch-Site same-site, no Origin", {"Sec-Fetch-Site": "same-site"}),
    ("foreign Origin", {"Origin": EVIL}),
    ("Origin null (sandboxed frame, redirect)", {"Origin": "null"}),
    ("foreign Origin claiming same-origin", {"Origin": EVIL, "Sec-Fetch-Site": "same-origin"}),
]
SIMPLE_BODIES = [  # (Content-Type, body): what such a page can send without a preflight
    ("text/plain", GRAPH),
    ("application/x-www-form-urlencoded", GRAPH),
    ("multipart/form-data; boundary=B", b"--B\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\n{}\r\n--B--\r\n"),
    (None, GRAPH),
]


@pytest.mark.parametrize("what,headers", BROWSER_CROSS_SITE, ids=[w for w, _ in BROWSER_CROSS_SITE])
@pytest.mark.parametrize("kind,body", SIMPLE_BODIES, ids=[k or "no Content-Type" for k, _ in SIMPLE_BODIES])
def test_cross_site_browser_requests_change_nothing_on_any_route(client, what, headers, kind, body):
    before = snapshot(client)
    for method, path in state_changing_routes(client):
        sent = dict(headers, **({"Content-Type": kind} if kind else {}))
        r = client.request(method, path, content=body, headers=sent)
        assert r.status_code == 403, (method, path, r.status_code, r.text)
    assert snapshot(client) == before


BROWSER_WITHOUT_PROOF = [  # a browser request that does not prove it comes from our own page
    ("Referer only (a browser without Sec-Fetch-*)", {"Referer": EVIL + "/page"}),
    ("Sec-Fetch-Mode only", {"Sec-Fetch-Mode": "no-cors"}),
    ("Sec-Fetch-Site none", {"Sec-Fetch-Site": "none"}),
]


@pytest.mark.parametrize("what,headers", BROWSER_WITHOUT_PROOF, ids=[w for w, _ in BROWSER_WITHOUT_PROOF])
@pytest.mark.parametrize("kind", ["text/plain", "application/x-www-form-urlencoded"])
def test_text_and_form_bodies_are_refused_everywhere_without_a_same_origin_proof(client, kind, what, headers):
    before = snapshot(client)
    for method, path in state_changing_routes(client):
        r = client.request(method, path, content=GRAPH, headers={"Content-Type": kind, **headers})
        assert r.status_code == 415 and "application/json" in r.text, (method, path, r.text)
    assert snapshot(client) == before


@pytest.mark.parametrize("kind", ["application/x-www-form-urlencoded", "text/plain", None],
                         ids=["urllib default (ComfyUI's examples)", "text/plain", "requests data= (none)"])
def test_scripts_posting_json_under_another_type_are_served_as_json(client, kind):
    """No browser sends a POST without Origin, Sec-Fetch-* and Referer: such a client is a script,
    and ComfyUI's own urllib examples post the graph form-encoded."""
    sent = {"Content-Type": kind} if kind else {}
    r = client.post("/prompt", content=GRAPH, headers=sent)
    assert r.status_code == 200 and r.json()["prompt_id"], r.text
    client.post("/queue", json={"delete": [r.json()["prompt_id"]]})
    r = client.post("/prompt", content=b'{"prompt": "not a graph"}', headers=sent)
    assert r.status_code == 400, r.text  # ComfyUI's own words for a bad graph, not a 415
    r = client.post("/prompt", content=b"a=1&b=2", headers=sent)
    assert 400 <= r.status_code < 500, r.text


JSON_ROUTES = [("/prompt", GRAPH), ("/api/prompt", GRAPH), ("/sdapi/v1/options", b'{"sd_model_checkpoint": "x"}'),
               ("/queue", b'{"clear": true}'), ("/history", b'{"clear": true}')]


@pytest.mark.parametrize("kind,headers", [("text/plain", SAME), ("multipart/form-data; boundary=B", {}),
                                          (None, SAME), ("application/xml", {})],
                         ids=["same-origin text/plain", "multipart", "no Content-Type", "xml"])
def test_json_routes_parse_only_bodies_declared_json(client, kind, headers):
    before = snapshot(client)
    for path, body in JSON_ROUTES:
        sent = dict(headers, **({"Content-Type": kind} if kind else {}))
        r = client.post(path, content=body, headers=sent)
        assert 400 <= r.status_code < 500, (path, kind, r.text)
    assert snapshot(client) == before


def test_uploads_and_bodyless_posts_keep_working_for_clients_that_are_not_browsers(client):
    files = {"image": ("ok.png", png(), "image/png")}
    assert client.post("/upload/image", files=files).status_code == 200  # python requests: no Origin
    assert client.post("/upload/image", files=files, headers=SAME).status_code == 200  # our own page
    assert client.post("/upload/image", files=files, headers={"Sec-Fetch-Site": "none"}).status_code == 200
    assert client.post("/interrupt").status_code == 200
    assert client.post("/sdapi/v1/interrupt").status_code == 200
    assert client.post("/queue", json={"delete": ["nothing"]}).status_code == 200


def test_get_changes_nothing_anywhere(client):
    before = snapshot(client)
    paths = [re.sub(r"\{[^}]+\}", "x", p) for p, ops in client.app.openapi()["paths"].items() if "get" in ops]
    for path in paths + ["/api/prompt", "/api/queue", "/api/history"]:
        for headers in ({}, {"Origin": EVIL}, {"Sec-Fetch-Site": "cross-site"}):
            r = client.get(path, headers=headers)
            assert r.status_code < 500, (path, r.text)
    assert snapshot(client) == before
    assert ("waiting", "queued") in before[0] and ("old", DONE) in before[0]
