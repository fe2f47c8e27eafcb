"""The web UI in a real browser (chromium via Playwright) against a real `opensd serve` app with the
built-in model. Each flow asserts on stored records or pixels, and on an empty console."""
from __future__ import annotations

import base64
import re
from io import BytesIO

import httpx
import numpy as np
import pytest
from PIL import Image
from browser_live import other_site
from ui_browser import PHONE, browser, drop_file, live, no_horizontal_scroll, open_page, wait_for  # noqa: F401 (fixtures)

from opensd.pipeline.infotext import read_infotext
from opensd.server.store import CANCELLED, DONE, FAILED, FINAL, INTERRUPTED, Job

pytest.importorskip("playwright.sync_api", reason="playwright is a test dependency")

HOSTILE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script> red heart'


@pytest.fixture
def page(browser, live):
    page, log = open_page(browser, live.url + "/#generate")
    page.wait_for_selector("#panel-generate form select[name=model] option", state="attached")
    yield page
    page.context.close()
    assert log.console_errors == [] and log.failures == [] and log.foreign() == []


def job_ids(live) -> set[str]:
    return {j.id for j in live.state.store.all()}


def new_jobs(live, before: set[str], n: int, final: bool = True):
    """The `n` jobs created since `before`, in submission order, once all are final (or just exist)."""
    def ready():
        jobs = [j for j in live.state.store.all() if j.id not in before]
        return jobs if len(jobs) == n and (not final or all(j.status in FINAL for j in jobs)) else None
    return wait_for(ready, what=f"{n} new jobs")


def fill_generate(page, prompt: str, **fields):
    page.click("#tab-generate")
    page.fill("#panel-generate textarea[name=prompt]", prompt)
    for name, value in fields.items():
        page.fill(f"#panel-generate input[name={name}]", str(value))


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_generate_then_gallery_shows_the_pngs_parameters(page, live):
    """Flow 1: the UI's form -> a queued job -> the image and its infotext in Generate and the Gallery."""
    before = job_ids(live)
    fill_generate(page, "red heart, noto emoji style", steps=6, seed=1234, cfg_scale=6)
    page.fill("#panel-generate textarea[name=negative_prompt]", "blurry")
    page.select_option("#panel-generate select[name=sampler]", "DPM++ 2M")
    page.select_option("#panel-generate select[name=scheduler]", "karras")
    page.click("#panel-generate summary:text('Variation seed')")
    page.check("#panel-generate input[name=variation]")
    page.fill("#panel-generate input[name=subseed]", "77")
    page.fill("#panel-generate input[name=subseed_strength]", "0.3")
    page.press("#panel-generate textarea[name=prompt]", "Control+Enter")
    (job,) = new_jobs(live, before, 1)
    assert job.status == DONE
    path = live.state.settings.outputs_dir / job.result["files"][0]
    stored = read_infotext(path)
    for part in ("Seed: 1234", "Sampler: DPM++ 2M", "Schedule type: Karras", "CFG scale: 6", "Variation seed: 77",
                 "Variation seed strength: 0.3", "Negative prompt: blurry"):
        assert part in stored, part
    page.wait_for_selector(f"#panel-generate .result-main img[src*='{job.id}']")
    assert page.inner_text("#panel-generate pre.infotext") == stored

    page.click("#tab-gallery")
    first = page.locator("#panel-gallery .thumbs button").first
    first.wait_for()
    first.click()
    page.wait_for_selector("dialog[open] pre.infotext")
    assert page.inner_text("dialog[open] pre.infotext") == stored
    src = page.get_attribute("dialog[open] img.full", "src")
    assert page.request.get(live.url + src).body() == path.read_bytes()
    page.keyboard.press("Escape")


def test_png_info_drop_then_reuse_regenerates_identical_pixels(page, live):
    """Flow 3: a PNG made elsewhere, dropped on PNG info, sent to Generate, generated again."""
    made = httpx.post(live.url + "/sdapi/v1/txt2img", timeout=120, json={
        "prompt": "smiling face, (noto emoji:1.1)", "negative_prompt": "dark", "steps": 5, "width": 64,
        "height": 64, "seed": 4242, "sampler_name": "Euler a", "cfg_scale": 5, "subseed": 5,
        "subseed_strength": 0.2}).json()
    original = base64.b64decode(made["images"][0])
    page.click("#tab-pnginfo")
    page.wait_for_selector("#panel-pnginfo .drop")
    drop_file(page, "#panel-pnginfo .drop", original, "made-elsewhere.png")
    page.wait_for_selector("#panel-pnginfo table.params")
    assert "Seed: 4242" in page.inner_text("#panel-pnginfo pre.infotext")
    page.click("#panel-pnginfo button:text('Send to Generate')")
    page.wait_for_selector("#panel-generate:not([hidden])")
    assert page.input_value("#panel-generate textarea[name=prompt]") == "smiling face, (noto emoji:1.1)"
    before = job_ids(live)
    page.click("#panel-generate button[type=submit]")
    (job,) = new_jobs(live, before, 1)
    again = live.state.settings.outputs_dir / job.result["files"][0]
    assert np.array_equal(pixels(again), pixels(BytesIO(original)))


def test_hires_fields_round_trip_through_png_info_and_regenerate_identical_pixels(page, live):
    """The hires card's own sampler, schedule, prompts, size and checkpoint: a PNG that used them,
    sent from PNG info to Generate, fills them and generates the same pixels."""
    made = httpx.post(live.url + "/sdapi/v1/txt2img", timeout=120, json={
        "prompt": "red heart, noto emoji style", "steps": 3, "width": 64, "height": 64, "seed": 99,
        "sampler_name": "Euler", "scheduler": "karras", "cfg_scale": 5, "enable_hr": True, "hr_upscaler": "Latent",
        "hr_resize_x": 96, "hr_resize_y": 80, "hr_second_pass_steps": 2, "denoising_strength": 0.5,
        "hr_sampler_name": "DPM++ 2M", "hr_scheduler": "exponential", "hr_prompt": "blue heart, noto emoji style",
        "hr_negative_prompt": "dark", "hr_checkpoint_name": "opensd-emoji.safetensors"}).json()
    original = base64.b64decode(made["images"][0])
    page.click("#tab-pnginfo")
    page.wait_for_selector("#panel-pnginfo .drop")
    drop_file(page, "#panel-pnginfo .drop", original, "hires.png")
    page.wait_for_selector("#panel-pnginfo table.params")
    page.click("#panel-pnginfo button:text('Send to Generate')")
    page.wait_for_selector("#panel-generate:not([hidden])")
    form = "#panel-generate"
    assert page.is_checked(f"{form} input[name=enable_hr]")
    for name, value in (("hr_sampler_name", "DPM++ 2M"), ("hr_scheduler", "exponential"),
                        ("hr_checkpoint_name", "opensd-emoji.safetensors"), ("hr_resize_x", "96"),
                        ("hr_resize_y", "80"), ("hr_prompt", "blue heart, noto emoji style"),
                        ("hr_negative_prompt", "dark")):
        assert page.input_value(f"{form} [name={name}]") == value, name
    before = job_ids(live)
    page.click(f"{form} button[type=submit]")
    (job,) = new_jobs(live, before, 1)
    assert job.payload["request"]["hr_sampler_name"] == "DPM++ 2M"
    again = live.state.settings.outputs_dir / job.result["files"][0]
    assert np.array_equal(pixels(again), pixels(BytesIO(original)))


def test_upscale_button_hires_fixes_the_shown_image_as_its_first_pass(page, live):
    """A1111's ✨ upscale: the shown image, with this form's hires settings and its seed, as the first
    pass; the same pixels as generating with the hires fix on in the first place."""
    form = "#panel-generate"
    before = job_ids(live)
    fill_generate(page, "red heart, noto emoji style", steps=3, seed=21)
    page.click(f"{form} button[type=submit]")
    (first,) = new_jobs(live, before, 1)
    page.wait_for_selector(f"{form} .result-main img[src*='{first.id}']")
    page.click(f"{form} summary:has-text('Hires fix')")
    page.select_option(f"{form} select[name=hr_upscaler]", "Lanczos")
    page.fill(f"{form} input[name=hr_scale]", "1.5")
    page.fill(f"{form} input[name=hr_second_pass_steps]", "2")
    page.fill(f"{form} input[name=denoising_strength]", "0.5")
    page.fill(f"{form} input[name=seed]", "-1")  # the shown image's seed is used, not the form's
    before = job_ids(live)
    page.click(f"{form} button:text('Upscale')")
    (upscaled,) = new_jobs(live, before, 1)
    request = upscaled.payload["request"]
    assert request["enable_hr"] and request["seed"] == 21 and request["firstpass_image"].startswith("data:image/png")
    page.fill(f"{form} input[name=seed]", "21")
    page.check(f"{form} input[name=enable_hr]")
    before = job_ids(live)
    page.click(f"{form} button[type=submit]")
    (whole,) = new_jobs(live, before, 1)
    out = live.state.settings.outputs_dir
    a, b = pixels(out / upscaled.result["files"][0]), pixels(out / whole.result["files"][0])
    assert a.shape == (96, 96, 3) and np.array_equal(a, b)


def test_queue_three_cancel_the_second_it_never_runs(page, live):
    """Flow 4: three jobs queued from the UI, the second cancelled in the Queue tab."""
    live.state.queue.stop()  # hold the worker so the jobs wait
    try:
        before = job_ids(live)
        for name in ("first job", "second job", "third job"):
            fill_generate(page, name, steps=3, seed=1)
            page.click("#panel-generate button[type=submit]")
        jobs = new_jobs(live, before, 3, final=False)
        page.click("#tab-queue")
        rows = page.locator("#panel-queue ul[aria-label='Waiting jobs'] li[data-job]")
        wait_for(lambda: rows.count() == 3, what="three waiting jobs in the Queue tab")
        assert [rows.nth(i).locator(".pos").inner_text() for i in range(3)] == ["#1", "#2", "#3"]
        page.click(f"#panel-queue li[data-job='{jobs[1].id}'] button:text('Cancel')")
        wait_for(lambda: rows.count() == 2, what="the cancelled job to leave the list")
    finally:
        live.state.queue.start()
    jobs = new_jobs(live, before, 3)
    first, second, third = (live.state.store.get(j.id) for j in jobs)
    assert second.status == CANCELLED and second.started is None and second.run_order is None
    assert first.status == third.status == DONE and first.run_order < third.run_order
    gallery = httpx.get(live.url + "/opensd/v1/gallery", params={"q": "job"}).json()
    assert sorted(i["job_id"] for i in gallery["items"]) == sorted([first.id, third.id])

    live.state.queue.stop()  # clear-all cancels everything waiting
    try:
        before = job_ids(live)
        for name in ("fourth", "fifth"):
            fill_generate(page, name, steps=3)
            page.click("#panel-generate button[type=submit]")
        waiting = new_jobs(live, before, 2, final=False)
        page.click("#tab-queue")
        wait_for(lambda: rows.count() == 2, what="two waiting jobs")
        page.click("#panel-queue button:text('Clear queue')")
        page.click("dialog[open] button[data-answer=yes]")
        # the clear is a request of its own: the worker starts again only once it has landed
        wait_for(lambda: all(live.state.store.get(j.id).status == CANCELLED for j in waiting) or None,
                 what="the clear to cancel both")
    finally:
        live.state.queue.start()
    assert {j.status for j in new_jobs(live, before, 2)} == {CANCELLED}


def test_markup_in_a_prompt_is_text_everywhere_and_cross_site_posts_are_refused(page, live, browser):
    """Flow 7: a prompt holding HTML/JS is shown as text in every view and runs nothing."""
    before = job_ids(live)
    fill_generate(page, HOSTILE, steps=3, seed=3)
    page.click("#panel-generate button[type=submit]")
    (job,) = new_jobs(live, before, 1)
    path = live.state.settings.outputs_dir / job.result["files"][0]
    page.wait_for_selector(f"#panel-generate .result-main img[src*='{job.id}']")
    assert HOSTILE in page.inner_text("#panel-generate pre.infotext")
    page.click("#tab-queue")
    page.wait_for_selector(f"#panel-queue li[data-job='{job.id}']")
    assert HOSTILE in page.inner_text(f"#panel-queue li[data-job='{job.id}']")
    page.click("#tab-gallery")
    thumb = page.locator("#panel-gallery .thumbs button").first  # newest first
    thumb.wait_for()
    assert HOSTILE in page.inner_text("#panel-gallery .thumbs figcaption >> nth=0")
    thumb.click()
    page.wait_for_selector("dialog[open] table.params")
    assert HOSTILE in page.inner_text("dialog[open] table.params")
    page.keyboard.press("Escape")
    page.click("#tab-pnginfo")
    page.wait_for_selector("#panel-pnginfo .drop")
    drop_file(page, "#panel-pnginfo .drop", path.read_bytes(), "hostile.png")
    page.wait_for_selector("#panel-pnginfo table.params")
    assert HOSTILE in page.inner_text("#panel-pnginfo pre.infotext")
    page.click("#tab-generate")  # the prompt box's highlighted copy
    assert page.evaluate("window.__pwned") is None
    assert page.locator("img[src='x']").count() == 0
    assert page.evaluate("document.scripts.length") == 1  # only the app's own module

    # A page on another origin posting to the API: a text/plain form and no-cors fetches.
    target = live.url
    evil = f"""<!doctype html><form id=f method=POST action="{target}/opensd/v1/txt2img" enctype="text/plain">
      <input name='{{"prompt":"evil","x":"' value='"}}'></form>
      <script>
        Promise.allSettled([
          fetch("{target}/sdapi/v1/txt2img", {{method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}},
                body: JSON.stringify({{prompt: "evil", steps: 1, width: 64, height: 64}})}}),
          fetch("{target}/opensd/v1/queue/clear", {{method: "POST", mode: "no-cors", body: "{{}}"}}),
        ]).then(() => document.getElementById("f").submit());  // the form last: it leaves the page
      </script>"""

    live.state.queue.stop()  # a waiting job, which the page's "clear queue" must not cancel
    try:
        waiting = httpx.post(live.url + "/opensd/v1/txt2img", json={"prompt": "kept", "steps": 2, "width": 64,
                                                                    "height": 64}).json()["job_id"]
        before = job_ids(live)
        other = browser.new_page()  # its console shows the refusals, as it should
        with other_site(evil) as url:
            other.goto(url)
            other.wait_for_url(f"{target}/opensd/v1/txt2img", timeout=10_000)
            assert '"Forbidden"' in other.content() or "Origin" in other.content()
            other.close()
        assert job_ids(live) == before and [j.id for j in live.state.queue.pending()] == [waiting]
    finally:
        live.state.queue.start()
    assert not any("evil" in str(j.payload) for j in live.state.store.all())


def test_phone_layout_has_no_horizontal_scroll_on_any_tab(browser, live):
    """Flow 8: every registered tab (later tabs included) at 360x740 with touch."""
    httpx.post(live.url + "/sdapi/v1/txt2img", json={"prompt": "phone", "steps": 2, "width": 64, "height": 64},
               timeout=120)
    page, log = open_page(browser, live.url + "/#generate", **PHONE)
    page.wait_for_selector("#panel-generate form select[name=model] option", state="attached")
    tabs = page.locator("#tabs [role=tab]")
    assert tabs.count() >= 4
    for i in range(tabs.count()):
        tabs.nth(i).click()
        panel = tabs.nth(i).get_attribute("aria-controls")
        page.wait_for_selector(f"#{panel}:not([hidden]) > *", state="attached")
        page.wait_for_load_state("networkidle")  # what the tab asked the server for is shown
        assert no_horizontal_scroll(page), tabs.nth(i).get_attribute("id")
    page.click("#tab-gallery")
    page.locator("#panel-gallery .thumbs button").first.click()
    page.wait_for_selector("dialog[open]")
    assert no_horizontal_scroll(page)
    page.context.close()
    assert log.console_errors == [] and log.failures == []


def test_queue_says_why_a_finished_job_failed(page, live):
    """A job that failed (here one from another client, recorded as failed) shows its reason in the Queue
    tab's finished list, not only the word 'failed'."""
    store = live.state.store
    job = store.add(Job(id="failedjob1", client="api", kind="a1111", payload={"request": {"prompt": "broken"}}))
    store.finish(job, FAILED, error="sd_model_checkpoint: no model named 'gone.safetensors'")
    listed = httpx.get(live.url + "/opensd/v1/queue").json()["recent"]
    assert [j["error"] for j in listed if j["id"] == job.id] == [job.error]
    page.click("#tab-queue")
    shown = page.locator(f"#panel-queue li[data-job={job.id}][data-status=failed] .job-error")
    shown.wait_for()
    assert shown.inner_text() == job.error


def test_a_refused_request_says_why_until_the_next_one_and_its_error_stays_until_dismissed(browser, live):
    page, log = open_page(browser, live.url + "/#generate")
    page.wait_for_selector("#panel-generate form select[name=model] option", state="attached")
    before = job_ids(live)
    fill_generate(page, "too much work", width=4096, height=4096, steps=150, batch_size=8)
    page.click("#panel-generate button[type=submit]")
    status = page.locator("#panel-generate .progress-card [role=status].error")
    status.wait_for()
    assert status.inner_text().startswith("Not queued: ") and "megapixel-steps" in status.inner_text()
    alert = page.locator("#toasts .toast.error[role=alert]")
    alert.wait_for()
    page.wait_for_timeout(5500)  # past the 5 s an info toast lasts
    assert "megapixel-steps" in alert.inner_text() and "megapixel-steps" in status.inner_text()
    alert.get_by_role("button", name="Dismiss").click()
    alert.wait_for(state="detached")
    assert job_ids(live) == before
    fill_generate(page, "small heart", width=64, height=64, steps=2, batch_size=1)
    page.click("#panel-generate button[type=submit]")
    status.wait_for(state="detached")  # the next request clears it
    new_jobs(live, before, 1)
    page.context.close()
    assert [status for status, _ in log.failures] == [422]  # the refusal, and nothing else went wrong


def test_progress_shows_steps_and_the_latent_preview_then_interrupt_stops_the_job(page, live):
    before = job_ids(live)
    fill_generate(page, "slow heart", steps=150, seed=2, width=256, height=256)
    page.click("#panel-generate button[type=submit]")
    page.wait_for_selector("#panel-generate .preview img:not([hidden])", timeout=60_000)
    assert re.match(r"Step \d+/150", page.inner_text("#panel-generate .progress-card [role=status]"))
    preview = page.get_attribute("#panel-generate .preview img", "src")
    latent = Image.open(BytesIO(base64.b64decode(preview.split(",", 1)[1])))
    assert latent.size[0] == latent.size[1] < 256 and np.asarray(latent).std() > 0  # the latent, not the image
    page.click("#panel-generate button:text('Interrupt')")
    (job,) = new_jobs(live, before, 1)
    assert job.status == INTERRUPTED


LABELS = """() => [...document.querySelectorAll('[role=tabpanel]:not([hidden]) :is(input, select, textarea, button, a[href])')]
  .filter((el) => el.getAttribute('aria-hidden') !== 'true' && el.type !== 'hidden' && !el.closest('[hidden]'))
  .filter((el) => !((el.labels && el.labels.length) || el.getAttribute('aria-label') || el.textContent.trim()))
  .map((el) => el.outerHTML.slice(0, 80))"""


def test_every_control_is_labelled_tabs_work_by_keyboard_and_the_theme_toggles(page, live):
    page.focus("#tab-generate")
    for i in range(page.locator("#tabs [role=tab]").count()):
        selected = page.get_attribute("#tabs [aria-selected=true]", "id")
        page.wait_for_selector(f"#{selected.replace('tab-', 'panel-')} > *", state="attached")
        page.wait_for_timeout(200)
        assert page.evaluate(LABELS) == [], selected
        page.keyboard.press("ArrowRight")
    assert page.get_attribute("#tabs [aria-selected=true]", "id") == "tab-generate"  # wrapped around
    page.emulate_media(color_scheme="dark")
    background = "getComputedStyle(document.body).backgroundColor"
    dark = page.evaluate(background)
    page.click("#theme-toggle")
    assert page.evaluate("document.documentElement.dataset.theme") == "light"
    light = page.evaluate(background)
    assert dark != light
    page.reload()
    page.wait_for_selector("#panel-generate form")
    assert page.evaluate(background) == light  # remembered
