"""The web UI's "Describe image (tags)" (chromium via Playwright; a tiny ONNX WD14 tagger from
tests/wd14_files.py in the server's models folder) and four fixes for phone and keyboard users: a long
queue prompt can be read whole, Enter or Space on an empty canvas opens the file picker, several running
jobs' Interrupt buttons say which job and worker they stop, and Settings' Apply button stays in reach.
Each ends on an empty console."""
from __future__ import annotations

import base64
import io
import shutil
import threading

import httpx
import pytest
from server_live import LiveServer
from ui_browser import PHONE, browser, open_page, wait_for  # noqa: F401 (fixture)
from wd14_files import picture, write_tagger

from opensd.distributed.worker import Worker
from opensd.server.settings import Settings

pytest.importorskip("playwright.sync_api", reason="playwright is a test dependency")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

PHONE_390 = {**PHONE, "viewport": {"width": 390, "height": 844}}
TAGGER = "wd-v1-4-moat-tagger-v2"
DESCRIBE = "button.describe-image"


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A server whose models folder starts empty (the built-in model is listed anyway): taggers come and go."""
    root = tmp_path_factory.mktemp("uitag")
    (root / "models").mkdir()
    with LiveServer(Settings(models_dir=root / "models", outputs_dir=root / "out")) as server:
        yield server


def clean(log) -> None:
    assert log.console_errors == [] and log.failures == [] and log.foreign() == []


def png(image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def taggers(live):
    return live.state.folders.root / "wd14_tagger"


def open_canvas_tab(browser, live, tab, **context):
    page, log = open_page(browser, live.url + f"/#{tab}", **context)
    page.wait_for_selector(f"#panel-{tab} form select[name=model] option", state="attached")
    return page, log


def load_picture(page, tab):
    page.set_input_files(f"#panel-{tab} .canvas-editor input[type=file]",
                         files=[{"name": "picture.png", "mimeType": "image/png", "buffer": png(picture())}])
    wait_for(lambda: page.evaluate(f"document.querySelector('#panel-{tab} canvas.canvas-image').width") == 4,
             what="the picture on the canvas")


def api_tags(live) -> str:
    """The API's answer for picture(): the oracle for what the UI puts in."""
    r = httpx.post(f"{live.url}/sdapi/v1/interrogate",
                   json={"image": base64.b64encode(png(picture())).decode(), "model": "deepdanbooru"})
    assert r.status_code == 200 and "blue first" in r.json()["caption"] and "white corner" in r.json()["caption"]
    return r.json()["caption"]


def test_without_a_tagger_describe_image_says_where_the_model_files_go(browser, live):
    shutil.rmtree(taggers(live), ignore_errors=True)
    page, log = open_canvas_tab(browser, live, "inpaint")
    button = page.locator(f"#panel-inpaint {DESCRIBE}")
    button.click()  # no picture yet: said so, nothing sent
    alert = page.locator("#toasts .toast.error").last
    alert.wait_for()
    assert alert.inner_text().startswith("Load an image first")
    load_picture(page, "inpaint")
    page.fill("#panel-inpaint textarea[name=prompt]", "a cat")
    button.click()
    wait_for(lambda: "nor a WD14 tagger is installed" in page.locator("#toasts .toast.error").last.inner_text(),
             what="the server's reason")
    said = page.locator("#toasts .toast.error").last.inner_text()
    assert said.startswith("Describe image (tags):") and "models/wd14_tagger/" in said and ".onnx" in said
    assert button.is_enabled() and button.inner_text().strip() == "Describe image (tags)"
    assert page.input_value("#panel-inpaint textarea[name=prompt]") == "a cat"  # untouched
    page.context.close()
    # the browser logs the 422 it got; that answer is what was shown, and nothing else went wrong
    assert [url for _, url in log.console_errors] == [f"{live.url}/sdapi/v1/interrogate"]
    assert log.foreign() == []


@pytest.mark.parametrize("tab", ["img2img", "inpaint"])
def test_describe_image_puts_the_tags_into_the_prompt_and_says_how(browser, live, tab):
    write_tagger(taggers(live), TAGGER)
    tags = api_tags(live)
    page, log = open_canvas_tab(browser, live, tab)
    load_picture(page, tab)
    prompt, status = f"#panel-{tab} textarea[name=prompt]", page.locator(f"#panel-{tab} .describe-status")
    button = page.locator(f"#panel-{tab} {DESCRIBE}")
    held = []
    hold = lambda route: held.append(route)  # noqa: E731
    page.route("**/sdapi/v1/interrogate", hold)  # held while the busy state is looked at
    page.fill(prompt, "")
    button.click()
    wait_for(lambda: held, what="the request")
    assert button.is_disabled() and button.get_attribute("aria-busy") == "true"
    assert button.inner_text().strip() == "Describing…" and "looking at the image" in status.inner_text()
    held[0].continue_()
    wait_for(lambda: page.input_value(prompt) == tags, what="the tags as the prompt")
    assert "it was empty" in status.inner_text() and button.is_enabled()
    page.unroute("**/sdapi/v1/interrogate", hold)

    page.fill(prompt, "a cat")
    button.click()
    wait_for(lambda: page.input_value(prompt) == f"a cat, {tags}", what="the tags after the prompt")
    assert "added at the end" in status.inner_text()
    page.reload()  # kept as if typed
    page.wait_for_selector(f"#panel-{tab} form select[name=model] option", state="attached")
    assert page.input_value(prompt) == f"a cat, {tags}"
    page.context.close()
    clean(log)


def test_png_info_describes_the_picture_into_a_tags_box(browser, live):
    write_tagger(taggers(live), TAGGER)
    tags = api_tags(live)
    page, log = open_page(browser, live.url + "/#pnginfo")
    page.wait_for_selector("#panel-pnginfo input[type=file]", state="attached")
    box = "#panel-pnginfo textarea[name=tags]"
    for n in range(2):  # a second picture starts an empty box again
        page.set_input_files("#panel-pnginfo input[type=file]",
                             files=[{"name": f"p{n}.png", "mimeType": "image/png", "buffer": png(picture())}])
        page.wait_for_selector(f"#panel-pnginfo img[alt='p{n}.png']")
        assert page.input_value(box) == ""
        page.click(f"#panel-pnginfo {DESCRIBE}")
        wait_for(lambda: page.input_value(box) == tags, what="the tags in the box")
        assert "Tags put into the Tags box (it was empty)" in page.inner_text("#panel-pnginfo .describe-status")
    page.context.close()
    clean(log)


@pytest.mark.parametrize("tab", ["img2img", "inpaint"])
@pytest.mark.parametrize("key", ["Enter", " "])
def test_enter_or_space_on_an_empty_canvas_opens_the_file_picker(browser, live, tab, key):
    page, log = open_canvas_tab(browser, live, tab)
    view = page.locator(f"#panel-{tab} .canvas-view")
    assert "press Enter to choose an image" in view.get_attribute("aria-label")
    opened = []
    page.on("filechooser", lambda chooser: opened.append(chooser))  # intercepted from now on (asked for at the key press, it came too late)
    page.wait_for_timeout(300)
    view.focus()
    page.keyboard.press(key)
    wait_for(lambda: page.wait_for_timeout(50) or opened, timeout=5, what="the file picker")  # events come during page calls
    opened.pop().set_files(files=[{"name": "picture.png", "mimeType": "image/png", "buffer": png(picture())}])
    wait_for(lambda: page.evaluate(f"document.querySelector('#panel-{tab} canvas.canvas-image').width") == 4,
             what="the chosen picture on the canvas")
    assert view.get_attribute("aria-label") == ("Inpainting canvas" if tab == "inpaint" else "img2img image")
    view.focus()
    page.keyboard.press(key)  # with an image the key is the canvas's own again (inpaint: the keyboard brush)
    page.wait_for_timeout(500)
    assert opened == []
    page.context.close()
    clean(log)


def test_on_a_phone_a_long_queued_prompt_can_be_read_whole(browser, live):
    long_prompt = "a very detailed watercolour of a lighthouse on a cliff at dawn, " * 6  # 390 characters
    live.state.queue.stop()  # hold the worker so the job waits
    try:
        r = httpx.post(f"{live.url}/opensd/v1/txt2img", json={"prompt": long_prompt, "steps": 2, "width": 64,
                                                                 "height": 64})
        assert r.status_code == 202, r.text
        job = r.json()["job_id"]
        page, log = open_page(browser, live.url + "/#queue", **PHONE_390)
        text = page.locator(f"#panel-queue li[data-job='{job}'] .job-text")
        text.wait_for()
        whole = " ".join(long_prompt.split())
        assert len(whole) > 300
        assert text.get_attribute("title") == whole and text.get_attribute("aria-expanded") == "false"
        cut = lambda: page.evaluate("(el) => el.scrollWidth > el.clientWidth", text.element_handle())  # noqa: E731
        assert cut()  # one line with "…"
        one_line = text.bounding_box()["height"]
        text.tap()
        assert text.get_attribute("aria-expanded") == "true" and not cut()
        assert text.bounding_box()["height"] > 2 * one_line
        text.focus()
        r = httpx.post(f"{live.url}/opensd/v1/txt2img", json={"prompt": "another", "steps": 2, "width": 64,
                                                                 "height": 64})
        rows = page.locator("#panel-queue ul[aria-label='Waiting jobs'] li[data-job]")
        wait_for(lambda: rows.count() == 2, what="the list redrawn with a second job")
        # the redrawn list keeps it open, and the keyboard focus on it
        assert text.get_attribute("aria-expanded") == "true" and not cut()
        assert page.evaluate("document.activeElement.dataset.key") == f"{job}:text"
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        page.keyboard.press("Enter")  # and the keyboard folds it again
        assert text.get_attribute("aria-expanded") == "false" and cut()
        page.context.close()
        clean(log)
    finally:
        live.state.queue.clear()
        live.state.queue.start()


class Held(Worker):
    def __init__(self, name, release):
        super().__init__(name)
        self.release = release

    def run(self, job, ctl):
        self.release.wait(30)
        return {"files": []}, None


def test_several_running_jobs_have_interrupt_buttons_naming_job_and_worker(browser, live):
    q, release = live.state.queue, threading.Event()
    q.register("held", lambda job, ctl: (release.wait(30), ({"files": []}, None))[1])
    workers = [Held("gpu-1", release), Held("gpu-2", release)]
    for w in workers:
        q.add_worker(w)
    try:
        jobs = [q.submit("held", {"label": f"portrait number {n}"}, "api").id for n in range(3)]
        wait_for(lambda: len(q.running()) == 3, what="three jobs running")
        on = {p.job.id: p.worker for p in q.running()}
        assert sorted(on.values()) == ["gpu-1", "gpu-2", "local"]
        listed = httpx.get(f"{live.url}/opensd/v1/queue").json()["running_jobs"]
        assert {j["id"]: j["worker"] for j in listed} == on
        page, log = open_page(browser, live.url + "/#queue")
        buttons = page.locator("#panel-queue ul[aria-label='Running job'] button:text('Interrupt')")
        wait_for(lambda: buttons.count() == 3, what="three Interrupt buttons")
        names = [buttons.nth(i).get_attribute("aria-label") for i in range(3)]
        assert len(set(names)) == 3
        for job in jobs:
            n = jobs.index(job)
            assert f'Interrupt held job "portrait number {n}" on worker {on[job]}' in names
        target = listed[2]["id"]  # not the oldest (whose button is A1111's /sdapi/v1/interrupt)
        page.get_by_role("button", name=f'Interrupt held job "portrait number {jobs.index(target)}" '
                                        f"on worker {on[target]}", exact=True).click()
        wait_for(lambda: next(p for p in q.running() if p.job.id == target).interrupted, what="that job stopped")
        assert [p.job.id for p in q.running() if p.interrupted] == [target]  # that one only
        page.context.close()
        clean(log)
    finally:
        release.set()
        for w in workers:
            q.remove_worker(w)
        wait_for(lambda: not q.running(), what="the held jobs done")


def test_on_a_phone_apply_settings_stays_in_reach(browser, live):
    page, log = open_page(browser, live.url + "/#settings", **PHONE_390)
    page.wait_for_selector("#panel-settings select[name=samples_format]")
    apply = page.locator("#panel-settings button:text('Apply settings')")
    reachable = """(b) => { const r = b.getBoundingClientRect();
        return r.top >= 0 && r.bottom <= innerHeight && document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2)?.closest('button') === b; }"""
    assert page.evaluate("document.documentElement.scrollHeight > 2 * innerHeight")  # a long page on a phone
    for where in ("0", "document.documentElement.scrollHeight / 2", "document.documentElement.scrollHeight"):
        page.evaluate(f"window.scrollTo(0, {where})")
        page.wait_for_timeout(100)
        assert page.evaluate(reachable, apply.element_handle()), where
    page.evaluate("window.scrollTo(0, 0)")
    quality = page.locator("#panel-settings input[name=jpeg_quality]")
    before = httpx.get(f"{live.url}/sdapi/v1/options").json()["jpeg_quality"]
    quality.fill(str(before - 1 if before > 1 else 2))
    page.evaluate("window.scrollTo(0, 0)")
    apply.tap()
    page.locator("#toasts .toast:has-text('1 setting saved')").wait_for()
    assert httpx.get(f"{live.url}/sdapi/v1/options").json()["jpeg_quality"] != before
    page.context.close()
    clean(log)
