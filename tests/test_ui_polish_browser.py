"""Gaps a non-programmer hits (chromium via Playwright, the built-in model): the Queue says what each job
does (txt2img, img2img, inpaint, extras, ...), not "txt2img/img2img" for all of them; the Hires fix numbers
are required only while the fix is on; the inpaint mask can be drawn with the keyboard alone (a brush
cursor moved by the arrow keys, or a rectangle by numbers). Each ends on an empty console."""
from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image
from ui_browser import browser, live, open_page, wait_for  # noqa: F401 (fixtures)

from opensd.server.store import CANCELLED

pytest.importorskip("playwright.sync_api", reason="playwright is a test dependency")

READY = "#panel-generate form select[name=model] option"
FAST = {"steps": 2, "width": 64, "height": 64, "seed": 1}


def clean(log) -> None:
    assert log.console_errors == [] and log.failures == [] and log.foreign() == []


def png_bytes(size=(64, 48), colour=(40, 120, 200)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def test_the_queue_says_what_each_job_does(browser, live):
    live.state.queue.stop()  # hold the worker so the jobs wait
    try:
        image = data_url(png_bytes())
        mask = data_url(png_bytes(colour=(255, 255, 255)))
        for path, body in [("txt2img", {"prompt": "a heart"}), ("img2img", {"prompt": "a cat", "init_images": [image]}),
                           ("img2img", {"prompt": "a dog", "init_images": [image], "mask": mask})]:
            r = httpx.post(f"{live.url}/opensd/v1/{path}", json={**body, **FAST})
            assert r.status_code == 202, r.text
        live.state.queue.submit("extras", {"request": {}, "images": [], "gaps": []}, "api")
        page, log = open_page(browser, live.url + "/#queue")
        rows = page.locator("#panel-queue ul[aria-label='Waiting jobs'] li[data-job]")
        wait_for(lambda: rows.count() == 4, what="four waiting jobs")
        shown = page.locator("#panel-queue ul[aria-label='Waiting jobs'] .job-task").all_inner_texts()
        assert sorted(shown) == ["extras", "img2img", "inpaint", "txt2img"]  # clients take turns: any order
        page.context.close()
        clean(log)
    finally:
        cancelled = live.state.queue.clear()
        live.state.queue.start()
    assert cancelled == 4 and {j.status for j in live.state.store.history(limit=4)} == {CANCELLED}


def test_a_cleared_hires_number_blocks_generate_only_while_hires_fix_is_on(browser, live):
    page, log = open_page(browser, live.url + "/#generate")
    page.wait_for_selector(READY, state="attached")
    page.fill("#panel-generate textarea[name=prompt]", "hires heart")
    for name, value in FAST.items():
        page.fill(f"#panel-generate input[name={name}]", str(value))
    hires = page.locator("#panel-generate details:has(summary:text('Hires fix'))")
    hires.locator("summary").click()
    page.fill("#panel-generate input[name=hr_scale]", "")  # off: the card is not sent, so no matter
    before = {j.id for j in live.state.store.all()}
    page.click("#panel-generate button.primary")
    job = wait_for(lambda: next((j for j in live.state.store.all() if j.id not in before), None), what="the job")
    assert not job.payload["request"]["enable_hr"]

    page.check("#panel-generate input[name=enable_hr]")  # on: refused at the field, nothing queued
    for attempt in ("now", "after a reload"):
        before = {j.id for j in live.state.store.all()}
        page.click("#panel-generate button.primary")
        wait_for(lambda: page.evaluate("document.activeElement.name") == "hr_scale", what=f"hr_scale pointed at {attempt}")
        assert page.eval_on_selector("#panel-generate input[name=hr_scale]", "el => el.validationMessage")
        page.wait_for_timeout(300)
        assert {j.id for j in live.state.store.all()} == before, attempt
        page.reload()  # the form comes back as it was left: the fix on, the field empty
        page.wait_for_selector(READY, state="attached")
        assert page.input_value("#panel-generate input[name=hr_scale]") == ""
    page.context.close()
    clean(log)
