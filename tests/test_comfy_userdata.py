"""ComfyUI's /userdata, /settings and /users routes: plain files in one folder per user, every path
confined to it (no .., absolute, NUL, over-long names or escaping symlinks), size caps, and the
Guard's token and cross-site rules on every route, under /, /api and the frontend's /comfy/api."""
from __future__ import annotations

import os

import pytest
from fastapi.testclient import TestClient
from server_live import BASE

from opensd.server import comfy_userdata
from opensd.server.app import create_app
from opensd.server.settings import Settings

EVIL = "http://evil.example"


@pytest.fixture()
def setup(tmp_path):
    settings = Settings(outputs_dir=tmp_path / "out", data_dir=tmp_path / "data", start_worker=False)
    with TestClient(create_app(settings), base_url=BASE) as c:
        yield c, tmp_path / "data" / "comfy-users" / "default"


@pytest.mark.parametrize("prefix", ["", "/api", "/comfy/api"])
def test_store_list_read_move_delete(setup, prefix):
    c, root = setup
    r = c.post(f"{prefix}/userdata/workflows%2Fmy%20flow.json", content=b'{"nodes": []}')
    assert r.status_code == 200 and r.json() == "workflows/my flow.json"
    assert (root / "workflows" / "my flow.json").read_bytes() == b'{"nodes": []}'
    listing = c.get(f"{prefix}/userdata", params={"dir": "workflows", "recurse": "true", "full_info": "true"}).json()
    assert [(e["path"], e["size"]) for e in listing] == [("my flow.json", 13)]
    assert isinstance(listing[0]["modified"], int)
    got = c.get(f"{prefix}/userdata/workflows%2Fmy%20flow.json")
    assert got.content == b'{"nodes": []}'
    assert got.headers["x-content-type-options"] == "nosniff" and "attachment" in got.headers["content-disposition"]
    assert c.post(f"{prefix}/userdata/workflows%2Fmy%20flow.json", params={"overwrite": "false"},
                  content=b"{}").status_code == 409
    moved = c.post(f"{prefix}/userdata/workflows%2Fmy%20flow.json/move/workflows%2Fsub%2Fb.json",
                   params={"full_info": "true"})
    assert moved.status_code == 200 and moved.json()["path"] == "workflows/sub/b.json"
    assert not (root / "workflows" / "my flow.json").exists()
    assert c.get(f"{prefix}/userdata", params={"dir": "workflows", "recurse": "true", "split": "true"}).json() \
        == [["sub/b.json", "sub", "b.json"]]
    assert c.delete(f"{prefix}/userdata/workflows%2Fsub%2Fb.json").status_code == 204
    assert c.get(f"{prefix}/userdata/workflows%2Fsub%2Fb.json").status_code == 404


def test_hidden_files_are_stored_but_not_listed_as_workflows(setup):
    c, _ = setup
    assert c.post("/userdata/workflows%2F.index.json", content=b'{"favorites": []}').status_code == 200
    assert c.get("/userdata", params={"dir": "workflows"}).json() == []
    assert c.get("/userdata/workflows%2F.index.json").json() == {"favorites": []}


@pytest.mark.parametrize("name, status", [
    ("..%2F..%2Fopensd-jobs.sqlite3", 400),
    ("workflows%2F..%2F..%2Fescape.json", 400),
    ("%2Fetc%2Fpasswd", 400),
    ("C:%5Cwindows%5Cx.json", 400),
    ("a%00b.json", 400),
    ("a%0Ab.json", 404),  # no route matches a path holding a newline
    ("x" * 300 + ".json", 400),
    ("%2F".join(["d"] * 20) + "%2Fx.json", 400),
    ("workflows%2F%2Fx.json", 400),
    ("%2E%2Fx.json", 400),
    ("%FF%FE.json", 400),
])
def test_names_outside_the_folder_are_refused(setup, name, status):
    c, root = setup
    before = sorted(p for p in root.parent.parent.rglob("*"))
    for method in ("get", "post", "delete"):
        r = getattr(c, method)(f"/userdata/{name}")
        assert r.status_code == status, (method, name, r.text)
        assert "detail" in r.json()
    assert c.post(f"/userdata/ok.json/move/{name}").status_code in (status, 404)
    assert sorted(p for p in root.parent.parent.rglob("*")) == before


def test_symlink_out_of_the_folder_is_refused(setup, tmp_path):
    c, root = setup
    secret = tmp_path / "secret.txt"
    secret.write_text("do not read")
    os.symlink(secret, root / "link.txt")
    os.symlink(tmp_path, root / "outside")
    assert c.get("/userdata/link.txt").status_code == 403
    assert c.post("/userdata/outside%2Fplanted.py", content=b"print(1)").status_code == 403
    assert not (tmp_path / "planted.py").exists()
    assert c.get("/userdata", params={"dir": "outside"}).status_code == 403
    assert secret.read_text() == "do not read"


def test_listing_needs_a_dir_and_an_existing_folder(setup):
    c, _ = setup
    assert c.get("/userdata").status_code == 400
    assert c.get("/userdata", params={"dir": "nope"}).status_code == 404
    assert c.get("/userdata", params={"dir": "../"}).status_code == 400
    assert c.get("/userdata", params={"dir": "workflows"}).json() == []
    assert c.get("/userdata/workflows").status_code == 404  # a folder is not a file


def test_size_caps(setup, monkeypatch):
    c, _ = setup
    monkeypatch.setattr(comfy_userdata, "MAX_FILE_BYTES", 100)
    monkeypatch.setattr(comfy_userdata, "MAX_USER_BYTES", 150)
    assert c.post("/userdata/big.json", content=b"x" * 101).status_code == 413
    assert c.post("/userdata/a.json", content=b"x" * 100).status_code == 200
    assert c.post("/userdata/b.json", content=b"x" * 60).status_code == 413  # 160 > 150 in all
    assert c.post("/userdata/a.json", content=b"x" * 90).status_code == 200  # replacing counts the new size


def test_settings_round_trip(setup):
    c, root = setup
    assert c.get("/settings").json() == {}
    # the frontend posts without a Content-Type header: the browser sends text/plain, same-origin
    same_origin = {"Origin": BASE, "Sec-Fetch-Site": "same-origin", "Content-Type": "text/plain;charset=UTF-8"}
    assert c.post("/settings/Comfy.Locale", content=b'"en"', headers=same_origin).status_code == 200
    assert c.post("/settings", content=b'{"Comfy.TutorialCompleted": true}', headers=same_origin).status_code == 200
    assert c.get("/settings").json() == {"Comfy.Locale": "en", "Comfy.TutorialCompleted": True}
    assert c.get("/api/settings/Comfy.Locale").json() == "en"
    assert c.get("/settings/unknown").json() is None
    assert (root / "comfy.settings.json").is_file()
    assert c.post("/settings", content=b"[1, 2]").status_code == 400
    assert c.post("/settings", content=b"{not json").status_code == 400
    deep = b'{"a": ' + b"[" * 200 + b"]" * 200 + b"}"
    assert c.post("/settings", content=deep, headers=same_origin).status_code == 422
    assert c.get("/users").json() == {"storage": "server", "migrated": True}
    assert c.post("/users", json={"username": "bob"}).status_code == 400


def test_user_css_is_an_empty_stylesheet_until_written(setup):
    c, _ = setup
    r = c.get("/comfy/api/userdata/user.css")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/css") and r.content == b""
    c.post("/userdata/user.css", content=b"body { color: red }")
    assert c.get("/userdata/user.css").content == b"body { color: red }"


@pytest.mark.parametrize("headers", [
    {"Origin": EVIL},
    {"Sec-Fetch-Site": "cross-site"},
    # a no-preflight type from a browser (it marks every request) without its same-origin mark
    {"Content-Type": "text/plain", "Sec-Fetch-Mode": "no-cors"},
    {"Content-Type": "application/x-www-form-urlencoded", "Referer": EVIL + "/"},
    {"Origin": BASE, "Sec-Fetch-Site": "same-site", "Content-Type": "text/plain"},
])
def test_cross_site_writes_are_refused(setup, headers):
    c, root = setup
    for path in ("/userdata/workflows%2Fx.json", "/comfy/api/userdata/workflows%2Fx.json", "/settings",
                 "/comfy/api/settings/Comfy.Locale", "/userdata/a.json/move/b.json"):
        r = c.post(path, content=b'{"a": 1}', headers=headers)
        assert r.status_code in (403, 415), (path, headers, r.status_code)
    assert c.delete("/userdata/workflows%2Fx.json", headers={"Origin": EVIL}).status_code == 403
    assert not (root / "workflows" / "x.json").exists() and not (root / "comfy.settings.json").exists()


def test_token_guards_userdata(tmp_path):
    settings = Settings(outputs_dir=tmp_path / "out", api_token="s3cret", start_worker=False)
    with TestClient(create_app(settings), base_url=BASE) as c:
        for method, path in (("get", "/comfy/api/userdata?dir=workflows"), ("post", "/userdata/a.json"),
                             ("get", "/settings"), ("get", "/comfy/api/users")):
            assert getattr(c, method)(path).status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        assert c.post("/userdata/a.json", content=b"{}", headers=auth).status_code == 200


def test_v2_listing(setup, tmp_path):
    c, root = setup
    c.post("/userdata/workflows%2Fb.json", content=b"{}")
    c.post("/userdata/keybindings%2Fmine.json", content=b"[1]")
    os.symlink(tmp_path, root / "workflows" / "out")  # a link out: neither listed nor followed
    entries = c.get("/v2/userdata").json()
    # folders first, then files, each by name (as ComfyUI orders them)
    assert [(e["type"], e["path"]) for e in entries] == [
        ("directory", "keybindings"), ("directory", "subgraphs"), ("directory", "workflows"),
        ("file", "workflows/b.json"), ("file", "keybindings/mine.json")]
    assert {k: entries[3][k] for k in ("name", "size")} == {"name": "b.json", "size": 2}
    assert [e["path"] for e in c.get("/v2/userdata", params={"path": "workflows"}).json() if e["type"] == "file"] \
        == ["workflows/b.json"]
    assert c.get("/v2/userdata", params={"path": "../.."}).status_code == 400
    assert c.get("/v2/userdata", params={"path": "nope"}).status_code == 404
    assert c.get("/v2/userdata", params={"path": "workflows/b.json"}).status_code == 400


def test_a_file_where_a_folder_is_needed_is_a_clear_refusal(setup):
    c, _ = setup
    assert c.post("/userdata/a.json", content=b"{}").status_code == 200
    r = c.post("/userdata/a.json%2Fb.json", content=b"{}")
    assert r.status_code == 409 and "a.json" in r.json()["detail"]
    assert c.post("/userdata/a.json/move/a.json%2Fc.json").status_code == 409
    assert c.get("/userdata/a.json%2Fb.json").status_code == 404
