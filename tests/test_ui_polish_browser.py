"""Gaps a non-programmer hits (chromium via Playwright, the built-in model): the Queue says what each job
does (txt2img, img2img, inpaint, extras, ...), not "txt2img/img2img" for all of them; the Hires fix numbers
count only while the fix is on (empty or out of range); the inpaint mask can be drawn with the keyboard alone (a brush
cursor moved by the arrow keys, or a rectangle by numbers). Each ends on an empty console."""
from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from ui_browser import PHONE, browser, live, open_page, wait_for  # noqa: F401 (fixtures)

from opensd.server.store import CANCELLED

pytest.importorskip("playwright.sync_api", reason="playwright is a test dependency")

READY = "#panel-generate form select[name=model] option"
FAST = {"steps": 2, "width": 64, "height": 64, "seed": 1}
PHONE_390 = {**PHONE, "viewport": {"width": 390, "height": 844}}


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


def test_a_cleared_or_out_of_range_hires_number_blocks_generate_only_while_hires_fix_is_on(browser, live):
    page, log = open_page(browser, live.url + "/#generate")
    page.wait_for_selector(READY, state="attached")
    page.fill("#panel-generate textarea[name=prompt]", "hires heart")
    for name, value in FAST.items():
        page.fill(f"#panel-generate input[name={name}]", str(value))
    hires = page.locator("#panel-generate details:has(summary:text('Hires fix'))")
    hires.locator("summary").click()
    page.fill("#panel-generate input[name=hr_scale]", "")  # off: the card is not sent, so no matter
    page.fill("#panel-generate input[name=hr_resize_x]", "5000")  # nor out of range (max 4096)
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

    hires.locator("summary").click()
    page.uncheck("#panel-generate input[name=enable_hr]")  # the Upscale button forces the fix on: refused too
    page.wait_for_selector(f"#panel-generate .result-main img[src*='{job.id}']")
    before = {j.id for j in live.state.store.all()}
    page.click("#panel-generate button:text('Upscale')")
    wait_for(lambda: page.evaluate("document.activeElement.name") == "hr_scale", what="hr_scale pointed at by Upscale")
    page.wait_for_timeout(300)
    assert {j.id for j in live.state.store.all()} == before
    # off again after: its fields no longer count
    assert page.eval_on_selector("#panel-generate input[name=hr_scale]", "el => Boolean(el.closest('[data-unsent]'))")
    page.context.close()
    clean(log)


MASK_ALPHA_AT = """([x, y]) => document.querySelector('#panel-inpaint canvas.canvas-mask')
  .getContext('2d').getImageData(x, y, 1, 1).data[3]"""


def test_the_inpaint_mask_can_be_drawn_with_the_keyboard_alone(browser, live):
    page, log = open_page(browser, live.url + "/#inpaint")
    panel = "#panel-inpaint"
    page.wait_for_selector(f"{panel} form select[name=model] option", state="attached")
    page.set_input_files(f"{panel} .canvas-editor input[type=file]",
                         files=[{"name": "source.png", "mimeType": "image/png", "buffer": png_bytes((64, 64))}])
    wait_for(lambda: page.evaluate(f"document.querySelector('{panel} canvas.canvas-image').width") == 64,
             what="the image on the canvas")
    alpha = lambda x, y: page.evaluate(MASK_ALPHA_AT, [x, y])  # noqa: E731
    view = page.locator(f"{panel} .canvas-view")
    assert view.get_attribute("role") == "application" and view.get_attribute("aria-label") == "Inpainting canvas"
    help_id = view.get_attribute("aria-describedby")
    assert "arrow keys move the brush" in page.inner_text(f"#{help_id}")  # what a screen reader reads out

    page.focus(f"{panel} input[name=pen_pressure]")
    page.keyboard.press("Tab")  # the canvas is next in the tab order
    assert page.evaluate("document.activeElement.classList.contains('canvas-view')")
    status = page.locator(f"{panel} .canvas-key-status")
    assert status.inner_text() == "Brush at x 32, y 32, size 8"  # the middle; the brush is 1/8 of the image
    assert page.locator(f"{panel} .canvas-key-cursor").is_visible()
    for _ in range(6):
        page.keyboard.press("ArrowLeft")  # a quarter brush a step: 2 pixels
    page.keyboard.down(" ")  # held: paints along the brush's path
    for _ in range(8):
        page.keyboard.press("ArrowRight")
    page.keyboard.up(" ")
    assert status.inner_text() == "Brush at x 36, y 32, size 8"
    assert alpha(17, 32) and alpha(28, 32) and alpha(39, 32)  # the stroke from x 20 to 36, 8 wide
    assert not alpha(14, 32) and not alpha(43, 32) and not alpha(28, 40) and not alpha(28, 24)
    page.keyboard.press("e")  # the eraser, as the Eraser button
    assert page.get_attribute(f"{panel} button[aria-label=Eraser]", "aria-pressed") == "true"
    page.keyboard.press("Enter")
    assert not alpha(36, 32) and alpha(28, 32)
    page.keyboard.press("Control+z")
    assert alpha(36, 32)
    page.keyboard.press("b")

    page.locator(f"{panel} summary:text('Mask a rectangle')").click()
    boxes = {name: page.get_by_label(name, exact=True).and_(page.locator(f"{panel} .mask-rect input"))
             for name in ("X (from the left)", "Y (from the top)", "Width", "Height")}
    assert [b.input_value() for b in boxes.values()] == ["16", "16", "32", "32"]  # the middle half
    mask_it = page.locator(f"{panel} button:text('Mask the rectangle')")
    boxes["X (from the left)"].fill("")
    mask_it.click()
    problem = page.locator(f"{panel} .mask-rect [role=alert]")
    assert problem.inner_text().startswith("X: give a whole number from 0 to 63")
    assert page.evaluate("document.activeElement.getAttribute('aria-invalid')") == "true"
    boxes["X (from the left)"].fill("40")
    assert problem.is_hidden()
    mask_it.click()
    assert problem.inner_text().startswith("Width: give a whole number from 1 to 24")  # past the right edge
    for name, value in {"Y (from the top)": 0, "Width": 20, "Height": 10}.items():
        boxes[name].fill(str(value))
    mask_it.click()
    assert problem.is_hidden() and status.inner_text() == "Masked 20 × 10 pixels at x 40, y 0"
    assert alpha(40, 0) and alpha(59, 9) and not alpha(60, 5) and not alpha(50, 10)

    page.fill(f"{panel} input[name=steps]", "2")
    before = {j.id for j in live.state.store.all()}
    page.focus(f"{panel} button.primary")
    page.keyboard.press("Enter")
    job = wait_for(lambda: next((j for j in live.state.store.all() if j.id not in before), None), what="the job")
    data = job.payload["request"]["mask"].split(",", 1)[1]
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("L")) > 127
    assert mask[32, 28] and mask[5, 50] and not mask[50, 10] and not mask[5, 62]
    page.context.close()
    clean(log)


@pytest.mark.parametrize("tab, name", [("img2img", "denoising_strength"), ("inpaint", "mask_blur"), ("extras", "upscaling_resize")])
def test_a_cleared_number_on_img2img_inpaint_and_extras_is_refused_at_the_field_not_sent_as_0(browser, live, tab, name):
    page, log = open_page(browser, live.url + f"/#{tab}")
    panel = f"#panel-{tab}"
    page.wait_for_selector(f"{panel} button.primary")
    page.set_input_files(f"{panel} input[type=file]",
                         files=[{"name": "source.png", "mimeType": "image/png", "buffer": png_bytes((64, 64))}])
    page.wait_for_selector(f"{panel} canvas.canvas-image[width='64'], {panel} .drop img")
    if tab == "inpaint":  # a mask, so that only the cleared field stands in the way
        page.locator(f"{panel} summary:text('Mask a rectangle')").click()
        page.click(f"{panel} button:text('Mask the rectangle')")
    page.fill(f"{panel} input[name={name}]", "")
    before = {j.id for j in live.state.store.all()}
    page.click(f"{panel} button.primary")
    wait_for(lambda: page.evaluate("document.activeElement.name") == name, what="the cleared field pointed at")
    assert page.eval_on_selector(f"{panel} input[name={name}]", "el => el.validationMessage")
    page.wait_for_timeout(300)
    assert {j.id for j in live.state.store.all()} == before  # nothing queued with a 0 in its place
    page.context.close()
    clean(log)


def test_a_controlnet_number_cleared_keeps_the_units_value_and_says_why(browser, live):
    page, log = open_page(browser, live.url + "/#controlnet")
    weight = page.locator("#panel-controlnet form >> nth=0").locator("input[name=weight]")
    weight.fill("1.5")
    weight.press("Tab")
    weight.fill("")
    weight.press("Tab")  # leaving it: the browser says what is missing; the unit keeps 1.5, not 0
    assert weight.evaluate("el => el.validationMessage")
    assert page.evaluate("JSON.parse(localStorage.getItem('opensd.controlnet'))[0].weight") == 1.5
    page.context.close()
    clean(log)


def test_the_train_form_checks_only_the_fields_of_the_chosen_type(browser, live):
    page, log = open_page(browser, live.url + "/#train")
    form = page.locator("#panel-train form[aria-label='Training settings']")
    page.fill("#panel-train input[name=rank]", "")  # a LoRA's: cleared, so a LoRA cannot start
    assert not form.evaluate("f => f.checkValidity()")
    page.select_option("#panel-train select[name=type]", "embedding")  # the rank is hidden now
    assert page.locator("#panel-train input[name=rank]").is_disabled()
    assert form.evaluate("f => f.checkValidity()")  # before, the browser blocked Start without a word
    page.fill("#panel-train input[name=lr]", "")
    assert not form.evaluate("f => f.checkValidity()")  # not sent as a learning rate of 0
    page.context.close()
    clean(log)


def test_on_a_phone_every_fold_out_title_is_big_enough_for_a_finger(browser, live):
    page, log = open_page(browser, live.url + "/#generate", **PHONE_390)
    page.wait_for_selector(READY, state="attached")
    heights = page.eval_on_selector_all("#panel-generate summary", "els => els.filter((el) => el.checkVisibility())"
                                        ".map((el) => el.getBoundingClientRect().height)")
    assert len(heights) >= 5 and min(heights) >= 24, heights  # WCAG's smallest target: 24 px (they were 20)
    page.context.close()
    clean(log)


def test_a_cleared_setting_is_refused_at_the_field_not_saved_as_0(browser, live):
    page, log = open_page(browser, live.url + "/#settings")
    field = page.get_by_label("Sigma noise", exact=True)
    before = httpx.get(live.url + "/sdapi/v1/options").json()["s_noise"]
    field.fill("")
    page.click("#panel-settings button:text('Apply settings')")
    wait_for(lambda: page.evaluate("document.activeElement.name") == "s_noise", what="the cleared setting pointed at")
    assert field.evaluate("el => el.validationMessage")
    page.wait_for_timeout(300)
    assert httpx.get(live.url + "/sdapi/v1/options").json()["s_noise"] == before == 1.0
    page.context.close()
    clean(log)


def test_train_says_why_start_is_not_available_yet(browser, live):
    page, log = open_page(browser, live.url + "/#train")
    start = page.locator("#panel-train button:text('Start training')")
    wait_for(start.is_disabled, what="Start disabled without images")
    note = page.locator(f"#{start.get_attribute('aria-describedby')}")  # what a screen reader adds to the button
    assert note.inner_text() == "Add images to a dataset first (Dataset, above)." and note.is_visible()
    page.context.close()
    clean(log)


def test_an_enabled_controlnet_unit_that_requests_leave_out_says_why(browser, live):
    page, log = open_page(browser, live.url + "/#controlnet")
    unit = page.locator("#panel-controlnet form >> nth=0")
    note = unit.locator(".cn-unused")
    unit.get_by_label("Enable ControlNet unit 1").check()
    assert note.inner_text() == "Not used yet: choose a model below."  # was: enabled, and silently left out
    model = page.eval_on_selector("#panel-controlnet form select[name=model]", "s => s.options[1].value")
    unit.locator("select[name=model]").select_option(model)
    assert note.inner_text().startswith("Generate leaves it out until it has an image")
    unit.locator("input[type=file]").set_input_files(
        files=[{"name": "edges.png", "mimeType": "image/png", "buffer": png_bytes((64, 64))}])
    note.wait_for(state="hidden")  # used by every request now
    unit.get_by_label("Enable ControlNet unit 1").uncheck()
    page.context.close()
    clean(log)


COVERED = """() => { const a = document.activeElement, r = a.getBoundingClientRect();
  const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
  return a === document.body || (hit && a.contains(hit)) ? null : `${a.name || a.textContent.trim()} under ${hit?.className}`; }"""


@pytest.mark.parametrize("context", [{"viewport": {"width": 1280, "height": 700}}, {"viewport": {"width": 900, "height": 700}},
                                     PHONE_390], ids=["desktop", "narrow window (tab bar on two lines)", "phone"])
@pytest.mark.parametrize("tab", ["generate", "inpaint"])
def test_a_field_reached_with_tab_is_not_hidden_under_the_sticky_bars(browser, live, context, tab):
    page, log = open_page(browser, live.url + f"/#{tab}", **context)
    page.wait_for_selector(f"#panel-{tab} form select[name=model] option", state="attached")
    page.focus(f"#tab-{tab}")
    covered = []
    for key in ["Tab"] * 70 + ["Shift+Tab"] * 70:  # down to Generate and the results, then back up
        page.keyboard.press(key)
        covered.append(page.evaluate(COVERED))
    assert [c for c in covered if c] == []  # was: sizes, CFG, Script... under Generate; Model... under the tab bar
    page.context.close()
    clean(log)


def test_a_delete_question_has_the_focus_on_cancel_so_enter_deletes_nothing(browser, live):
    r = httpx.post(live.url + "/sdapi/v1/txt2img", json={"prompt": "keep me", **FAST}, timeout=120)
    assert r.status_code == 200
    page, log = open_page(browser, live.url + "/#gallery")
    thumb = page.locator("#panel-gallery .thumbs button[aria-label*='keep me']").first
    delete = page.get_by_role("button", name="Delete", exact=True)
    for _ in range(3):  # the gallery may redraw its thumbnails just after it opens (a loaded machine)
        thumb.focus()
        page.keyboard.press("Enter")
        try:
            delete.wait_for(timeout=5000)
            break
        except PlaywrightTimeout:
            continue
    delete.focus()
    page.keyboard.press("Enter")  # asks first
    page.wait_for_selector("dialog.small[open]")
    assert page.evaluate("document.activeElement.textContent") == "Cancel"  # was: the Delete button
    page.keyboard.press("Enter")
    page.wait_for_selector("dialog.small", state="detached")
    assert "keep me" in httpx.get(live.url + "/opensd/v1/gallery", params={"q": "keep me"}).text  # still there
    page.context.close()
    clean(log)
