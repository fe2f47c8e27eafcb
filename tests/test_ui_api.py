"""Our own /opensd/v1 routes behind the web UI, without a browser: queued txt2img and the queue
view, the token counter against generation's own chunking, checkpoint families, image parameters
back to a request (same pixels), the gallery (index, SQL paging and search, thumbnails, delete),
the login cookie and the UI's static files (CSP, confinement, nothing fetched from elsewhere)."""
from __future__ import annotations

import base64
import io
import re
import sqlite3
from urllib.parse import quote

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from server_live import BASE

from opensd.library.models_dir import BUILTIN_CHECKPOINT
from opensd.library.synthetic import TINY, write_random_checkpoint
from opensd.pipeline.infotext import read_infotext, save_image
from opensd.pipeline.pipeline import load
from opensd.server.app import create_app
from opensd.server.login_redirect import safe_next
from opensd.server.session import COOKIE
from opensd.server.settings import Settings
from opensd.server.store import CANCELLED, DONE
from opensd.ui import STATIC_DIR

FAST = {"steps": 3, "width": 64, "height": 64, "seed": 7}


def client(tmp_path, **kw) -> TestClient:
    settings = Settings(outputs_dir=tmp_path / "out", **kw)
    return TestClient(create_app(settings), base_url=BASE, raise_server_exceptions=False)


def png(resp_image_b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(resp_image_b64)))


def b64_file(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


# --- queue -----------------------------------------------------------------------------------

def test_queued_txt2img_answers_at_once_with_positions_and_clear_cancels_waiting(tmp_path):
    with client(tmp_path, start_worker=False) as c:
        first = c.post("/opensd/v1/txt2img", json={"prompt": "first", **FAST})
        second = c.post("/opensd/v1/txt2img", json={"prompt": "second <b>", **FAST})
        third = c.post("/opensd/v1/txt2img", json={"prompt": " ", **FAST})
        assert first.status_code == second.status_code == third.status_code == 202
        assert (first.json()["position"], second.json()["position"]) == (1, 2)
        view = c.get("/opensd/v1/queue").json()
        assert view["running"] is None
        assert [(j["id"], j["position"], j["label"]) for j in view["pending"]] == [
            (first.json()["job_id"], 1, "first"), (second.json()["job_id"], 2, "second <b>"),
            (third.json()["job_id"], 3, "(no prompt)")]  # not "(a1111 job)": the queue is read by people
        assert c.post("/opensd/v1/queue/clear", json={}).json() == {"cancelled": 3}
        state = c.app.state.opensd
        assert [state.store.get(r.json()["job_id"]).status for r in (first, second, third)] == [CANCELLED] * 3
        assert c.get("/opensd/v1/queue").json()["pending"] == []


def test_a_queue_label_is_the_whole_prompt_up_to_1000_characters_then_marked_cut(tmp_path):
    words = " ".join(f"word{n}" for n in range(300))  # 2089 characters
    with client(tmp_path, start_worker=False) as c:
        for prompt in (words[:990], words):
            assert c.post("/opensd/v1/txt2img", json={"prompt": prompt, **FAST}).status_code == 202
        whole, cut = [j["label"] for j in c.get("/opensd/v1/queue").json()["pending"]]
        assert whole == words[:990] and cut == words[:999] + "…" and len(cut) == 1000
        c.post("/opensd/v1/queue/clear", json={})


def test_queued_txt2img_refuses_bad_input_before_queueing(tmp_path):
    with client(tmp_path, start_worker=False) as c:
        r = c.post("/opensd/v1/txt2img", json={"prompt": "x", "sampler_name": "Nope", **FAST})
        assert r.status_code == 422 and "sampler" in r.json()["detail"]
        assert c.get("/opensd/v1/queue").json()["pending"] == []


# --- token counter ---------------------------------------------------------------------------

@pytest.mark.parametrize("prompt, tokens, max_tokens", [
    ("", 0, 75), ("a cat", 2, 75), ("a cat <lora:style:0.8>", 2, 75), ("(red:1.3) cat", 2, 75),
    ("a BREAK b", 76, 150), (" ".join(["cat"] * 80), 80, 150),
    ("[short:" + " ".join(["dog"] * 90) + ":0.5]", 90, 150),  # the longest text of the schedule counts
    ("cat AND " + " ".join(["dog"] * 10), 10, 75),          # the longest AND part counts
])
def test_token_counter_counts_as_a1111(tmp_path, prompt, tokens, max_tokens):
    with client(tmp_path, start_worker=False) as c:
        r = c.post("/opensd/v1/tokens", json={"prompt": prompt, "steps": 20}).json()
    assert (r["tokens"], r["max_tokens"]) == (tokens, max_tokens)


def test_token_counter_chunks_equal_generation_chunks(tmp_path):
    pipe = load(BUILTIN_CHECKPOINT)
    texts = [" ".join(["red heart"] * 40), "a, " * 70 + "b c d e f g h", "x BREAK y BREAK z", "(a:1.2) " * 90]
    with client(tmp_path, start_worker=False) as c:
        for text in texts:
            r = c.post("/opensd/v1/tokens", json={"prompt": text}).json()
            assert r["chunks"] == len(pipe.conditioner().chunks(text)), text


# --- checkpoints -----------------------------------------------------------------------------

def test_checkpoint_families_come_from_file_headers(tmp_path):
    models = tmp_path / "models" / "Stable-diffusion"
    models.mkdir(parents=True)
    write_random_checkpoint(models / "tiny.safetensors")
    (models / "old.ckpt").write_bytes(b"PK\x03\x04 not really a checkpoint")
    with client(tmp_path, start_worker=False, models_dir=tmp_path / "models") as c:
        items = {m["name"]: m for m in c.get("/opensd/v1/checkpoints").json()["items"]}
    assert (items["opensd-emoji.safetensors"]["family"], items["opensd-emoji.safetensors"]["resolution"]) == ("small", 64)
    assert (items["tiny.safetensors"]["family"], items["tiny.safetensors"]["resolution"]) == (TINY.family, TINY.resolution)
    assert items["old.ckpt"]["family"] is None  # a pickle says nothing before it is loaded


# --- image parameters -> request -------------------------------------------------------------

@pytest.mark.parametrize("extra", [
    {"sampler_name": "DPM++ 2M", "scheduler": "karras", "cfg_scale": 5.5, "subseed": 99, "subseed_strength": 0.4},
    {"sampler_name": "Euler a", "enable_hr": True, "hr_scale": 1.5, "hr_second_pass_steps": 2,
     "denoising_strength": 0.5, "hr_upscaler": "Latent"},
])
def test_image_info_request_remakes_the_same_pixels(tmp_path, extra):
    body = {"prompt": "red heart, (noto:1.1) emoji", "negative_prompt": "blurry", **FAST, "seed": 1234, **extra}
    with client(tmp_path) as c:
        first = c.post("/sdapi/v1/txt2img", json=body).json()["images"][0]
        info = c.post("/opensd/v1/image-info", json={"image": b64_file(base64.b64decode(first))}).json()
        assert info["notes"] == []
        assert info["parameters"]["Prompt"] == body["prompt"]
        assert info["request"]["override_settings"]["sd_model_checkpoint"] == "opensd-emoji.safetensors"
        again = c.post("/sdapi/v1/txt2img", json=info["request"]).json()["images"][0]
    a, b = np.asarray(png(first).convert("RGB")), np.asarray(png(again).convert("RGB"))
    assert a.shape == b.shape and np.array_equal(a, b)


def test_image_info_reads_jpeg_exif_and_comfyui_chunks(tmp_path):
    text = "a cat\nNegative prompt: dog\nSteps: 5, Sampler: Euler, CFG scale: 7, Seed: 3, Size: 64x64, Model: gone"
    save_image(Image.new("RGB", (64, 64), "red"), tmp_path / "a.jpg", text)
    meta = PngInfo()
    meta.add_text("prompt", '{"3": {"class_type": "KSampler"}}')
    meta.add_text("workflow", '{"nodes": []}')
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG", pnginfo=meta)
    with client(tmp_path, start_worker=False) as c:
        jpeg = c.post("/opensd/v1/image-info", json={"image": b64_file((tmp_path / "a.jpg").read_bytes())}).json()
        comfy = c.post("/opensd/v1/image-info", json={"image": b64_file(buf.getvalue())}).json()
        bad = c.post("/opensd/v1/image-info", json={"image": "not base64!"})
    assert jpeg["infotext"] == text and jpeg["request"]["seed"] == 3 and jpeg["request"]["negative_prompt"] == "dog"
    assert any("Model: gone" in n for n in jpeg["notes"])  # said, not silently dropped
    assert comfy["infotext"] == "" and comfy["request"] is None
    assert set(comfy["items"]) == {"prompt", "workflow"}
    assert bad.status_code == 422 and "image" in bad.json()["detail"]


# --- gallery ---------------------------------------------------------------------------------

def test_gallery_pages_searches_thumbnails_and_deletes_one_image_only(tmp_path):
    with client(tmp_path) as c:
        c.post("/sdapi/v1/txt2img", json={"prompt": "alpha 100%_x", **FAST, "batch_size": 3})
        c.post("/sdapi/v1/txt2img", json={"prompt": "alpha 100 px", **FAST})
        page = c.get("/opensd/v1/gallery", params={"limit": 2}).json()
        assert page["total"] == 4 and len(page["items"]) == 2
        assert page["items"][0]["prompt"] == "alpha 100 px"  # newest first
        rest = c.get("/opensd/v1/gallery", params={"limit": 2, "offset": 2}).json()["items"]
        assert {i["id"] for i in rest}.isdisjoint(i["id"] for i in page["items"])
        found = c.get("/opensd/v1/gallery", params={"q": "100%_"}).json()  # % and _ are literal
        assert found["total"] == 3 and all(i["prompt"] == "alpha 100%_x" for i in found["items"])

        item = found["items"][0]
        detail = c.get(f"/opensd/v1/gallery/{item['id']}").json()
        state = c.app.state.opensd
        path = state.settings.outputs_dir / state.gallery.get(item["id"]).path
        assert detail["infotext"] == read_infotext(path)
        assert c.get(item["image_url"]).content == path.read_bytes()
        thumb = c.get(item["thumb_url"])
        assert thumb.headers["content-type"] == "image/webp" and max(Image.open(io.BytesIO(thumb.content)).size) <= 256
        thumb_file = state.gallery.thumbs / f"{item['id']}.webp"
        made = thumb_file.stat().st_mtime_ns
        c.get(item["thumb_url"])
        assert thumb_file.stat().st_mtime_ns == made  # made once

        job_id = detail["job_id"]
        files_before = sorted(p.name for p in path.parent.iterdir())
        assert c.delete(f"/opensd/v1/gallery/{item['id']}").json() == {"deleted": True}
        assert not path.exists() and not thumb_file.exists()
        assert sorted(p.name for p in path.parent.iterdir()) == sorted(set(files_before) - {path.name})
        assert c.get(f"/opensd/v1/gallery/{item['id']}").status_code == 404
        assert c.get("/opensd/v1/gallery").json()["total"] == 3
        assert state.store.get(job_id).status == DONE  # the job's record stays
        index = state.store.get(job_id).result["files"].index(str(path.relative_to(state.settings.outputs_dir)))
        assert c.get(f"/opensd/v1/jobs/{job_id}/images/{index}").status_code == 404  # not a 500
        assert c.delete(f"/opensd/v1/gallery/{item['id']}").status_code == 404
        assert c.get(f"/opensd/v1/gallery/{item['id']}", params={}).status_code == 404


def test_gallery_keeps_images_across_restarts_and_indexes_older_jobs(tmp_path):
    with client(tmp_path) as c:
        c.post("/sdapi/v1/txt2img", json={"prompt": "kept", **FAST})
    with sqlite3.connect(tmp_path / "out" / "opensd-jobs.sqlite3") as db:  # as if made before the gallery
        db.execute("DROP TABLE gallery_images")
        db.execute("DROP TABLE gallery_jobs")
    with client(tmp_path) as c:
        items = c.get("/opensd/v1/gallery").json()["items"]
    assert [i["prompt"] for i in items] == ["kept"]


# --- login and the UI's files ----------------------------------------------------------------

def test_login_sets_an_httponly_strict_cookie_the_guard_accepts(tmp_path):
    with client(tmp_path, start_worker=False, api_token="s3cret") as c:
        assert c.get("/").status_code == 200 and c.get("/login").status_code == 200  # no secret in them
        assert c.get("/opensd/v1/session").json()["authorized"] is False
        assert c.get("/opensd/v1/queue").status_code == 401
        assert c.post("/opensd/v1/login", json={"token": "wrong"}).status_code == 401
        ok = c.post("/opensd/v1/login", json={"token": "s3cret"})
        assert ok.status_code == 200
        cookie = ok.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        assert "s3cret" not in cookie
        assert c.get("/opensd/v1/session").json()["authorized"] is True  # the client kept the cookie
        assert c.get("/opensd/v1/queue").status_code == 200
        assert c.post("/opensd/v1/txt2img", json={"prompt": "x", **FAST}).status_code == 202
        c.post("/opensd/v1/logout", json={})
        assert c.get("/opensd/v1/queue").status_code == 401
        c.cookies.set(COOKIE, "0" * 64)
        assert c.get("/opensd/v1/queue").status_code == 401
        assert c.get("/opensd/v1/session").json()["authorized"] is False


PAGE = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}  # what a browser's navigation sends


def test_a_browser_page_without_a_session_goes_to_login_and_api_clients_keep_the_401(tmp_path):
    with client(tmp_path, start_worker=False, api_token="s3cret") as c:
        def get(path, **headers):
            return c.get(path, headers=headers, follow_redirects=False)

        r = get("/comfy/", **PAGE)
        assert (r.status_code, r.headers["location"]) == (303, "/login?next=%2Fcomfy%2F")
        r = get("/comfy/?a=1&b=x%2Fy", **PAGE, **{"Sec-Fetch-Mode": "navigate"})
        assert r.headers["location"] == "/login?next=" + quote("/comfy/?a=1&b=x%2Fy", safe="")
        # Scripts, fetch() and JSON clients, a wrong token, other methods: the API's 401 as before.
        for r in (get("/comfy/"), get("/sdapi/v1/options", Accept="application/json"), get("/comfy/", Accept="*/*"),
                  get("/comfy/", **PAGE, **{"Sec-Fetch-Mode": "cors"}),
                  get("/comfy/", **PAGE, Authorization="Bearer wrong"),
                  c.post("/comfy/api/prompt", json={}, headers=PAGE, follow_redirects=False)):
            assert r.status_code == 401 and r.json()["error"] == "Unauthorized", r.request.url
        # A path a browser would read as another host never becomes `next`.
        for trick in ("//evil.example/x", "//evil.example"):
            r = c.get(BASE + trick, headers=PAGE, follow_redirects=False)
            assert (r.status_code, r.headers["location"]) == (303, "/login"), trick
        c.post("/opensd/v1/login", json={"token": "s3cret"})
        assert get("/comfy/", **PAGE).status_code != 303  # signed in: the page itself


@pytest.mark.parametrize("target, expected", [
    ("/comfy/", "/comfy/"), ("/?x=1#gallery", "/?x=1#gallery"), ("/a//b", "/a//b"),
    ("//evil.example", None), ("/\\evil.example", None), ("/\\/evil.example", None), ("https://evil.example", None),
    ("http:/evil.example", None), ("evil.example", None), ("/\t/evil.example", None), ("/\n/evil.example", None),
    ("", None), ("javascript:alert(1)", None)])
def test_login_next_is_a_same_origin_path_only(target, expected):
    assert safe_next(target) == expected


def test_ui_pages_carry_a_strict_csp_and_files_stay_inside_the_ui_folder(tmp_path):
    with client(tmp_path, start_worker=False) as c:
        page = c.get("/")
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        assert c.get("/ui/js/main.js").headers["content-type"].startswith("text/javascript")
        for bad in ("/ui/../app.py", "/ui/%2e%2e/%2e%2e/server/app.py", "/ui/" + "a" * 400, "/ui/a%00b"):
            assert c.get(bad).status_code == 404, bad


def test_ui_assets_are_small_and_fetch_nothing_from_elsewhere():
    files = [p for p in STATIC_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 1_000_000
    for p in files:
        text = p.read_text(encoding="utf-8")
        urls = set(re.findall(r"(?:https?:)?//[\w.-]+\.\w+[^\s\"')]*", text)) - {"http://www.w3.org/2000/svg"}
        assert not urls, (p.name, urls)
        assert "innerHTML" not in text and "insertAdjacentHTML" not in text and "eval(" not in text, p.name


def test_progress_says_what_a_job_does_before_its_first_step(tmp_path, monkeypatch):
    """/sdapi/v1/progress's added state.phase: loading the model, then sampling (prompt encoding and the
    first step, which for a large image on a CPU takes minutes) while no step has been counted yet."""
    from opensd.server import jobs

    seen, phase = [], jobs.Control.phase

    def spy(ctl, name):
        phase(ctl, name)
        state = c.get("/sdapi/v1/progress").json()["state"]  # asked as the page asks, mid-job
        seen.append((state["phase"], state["sampling_step"], state["sampling_steps"]))

    monkeypatch.setattr(jobs.Control, "phase", spy)
    with client(tmp_path) as c:
        assert c.post("/sdapi/v1/txt2img", json={"prompt": "a heart", **FAST}).status_code == 200
        assert seen == [("loading", 0, 0), ("sampling", 0, 0)]
        assert c.get("/sdapi/v1/progress").json()["state"]["phase"] == ""  # idle
