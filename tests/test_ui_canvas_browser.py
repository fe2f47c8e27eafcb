"""The web UI's img2img/Inpaint canvas and ControlNet units in a real browser (Debian's chromium via
Playwright) against a real app with the built-in model and its Canny ControlNet: a mask painted with
real mouse and touch input, inpainting and outpainting that keep the pixels outside the mask, a result
sent back onto the canvas, and a ControlNet unit's preview map and its record in the infotext."""
from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter
from ui_browser import PHONE, browser, live, no_horizontal_scroll, open_page, wait_for  # noqa: F401 (fixtures)

from opensd.server.store import DONE, FINAL

pytest.importorskip("playwright.sync_api", reason="playwright is a test dependency")

MASK_ALPHA = """(panel) => { const c = document.querySelector(`${panel} canvas.canvas-mask`);
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; }"""
CANVAS_PIXELS = """(panel) => { const c = document.querySelector(`${panel} canvas.canvas-image`);
  return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data); }"""


def source_png(size=64) -> bytes:
    im = Image.new("RGB", (size, size), (235, 225, 60))
    d = ImageDraw.Draw(im)
    d.ellipse((6, 6, size - 6, size - 6), fill=(210, 50, 70))
    d.rectangle((20, 40, 44, 50), fill=(30, 30, 40))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def rgb(data) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data) if isinstance(data, bytes) else data).convert("RGB")).astype(int)


def inpaint_page(browser, live, **context):
    """The Inpaint tab with the source image on its canvas: (page, its PageLog, the panel's selector)."""
    page, log = open_page(browser, live.url + "/#inpaint", **context)
    panel = "#panel-inpaint"
    page.wait_for_selector(f"{panel} form select[name=model] option", state="attached")
    upload(page, panel, source_png())
    return page, log, panel


def upload(page, panel: str, data: bytes, name="source.png", size=64):
    page.set_input_files(f"{panel} .canvas-editor input[type=file]",
                         files=[{"name": name, "mimeType": "image/png", "buffer": data}])
    wait_for(lambda: page.evaluate(f"document.querySelector('{panel} canvas.canvas-image').width") == size,
             what="the image on the canvas")


def to_screen(page, panel: str, x: float, y: float) -> tuple[float, float]:
    """Screen point of image pixel (x, y): the canvas's box scales with zoom and moves with pan."""
    box = page.locator(f"{panel} canvas.canvas-mask").bounding_box()
    w = page.evaluate(f"document.querySelector('{panel} canvas.canvas-mask').width")
    k = box["width"] / w
    return box["x"] + x * k, box["y"] + y * k


def finished_job(live, before: set[str]):
    def ready():
        jobs = [j for j in live.state.store.all() if j.id not in before]
        return jobs[0] if len(jobs) == 1 and jobs[0].status in FINAL else None
    return wait_for(ready, what="the job to finish")


def job_ids(live) -> set[str]:
    return {j.id for j in live.state.store.all()}


def decode(data_url: str) -> np.ndarray:
    return rgb(base64.b64decode(data_url.split(",", 1)[1]))


def test_inpaint_with_a_mouse_painted_mask_keeps_far_pixels_and_the_result_goes_back_on_the_canvas(browser, live):
    """Flow 2: brush strokes by the mouse -> mask -> inpaint; pixels far outside the mask are the source's."""
    page, log, panel = inpaint_page(browser, live)
    src = source_png()
    assert page.input_value(f"{panel} input[name=width]") == "64"
    page.mouse.move(*to_screen(page, panel, 24, 30))
    page.mouse.down()
    page.mouse.move(*to_screen(page, panel, 40, 30), steps=8)
    page.mouse.up()
    painted = page.evaluate(MASK_ALPHA, panel)
    assert painted > 0
    page.locator(panel).get_by_role("button", name="Undo", exact=True).click()
    assert page.evaluate(MASK_ALPHA, panel) == 0
    page.locator(panel).get_by_role("button", name="Redo", exact=True).click()
    assert page.evaluate(MASK_ALPHA, panel) == painted
    shown = page.locator(f"{panel} canvas.canvas-mask").bounding_box()["width"]
    page.mouse.move(*to_screen(page, panel, 32, 32))
    page.keyboard.down("Control")  # Ctrl+wheel zooms the canvas (the plain wheel scrolls the page)
    page.mouse.wheel(0, -300)
    page.keyboard.up("Control")
    wait_for(lambda: page.locator(f"{panel} canvas.canvas-mask").bounding_box()["width"] > shown * 1.3, what="zoom")

    page.fill(f"{panel} textarea[name=prompt]", "red heart")
    page.fill(f"{panel} input[name=steps]", "4")
    page.fill(f"{panel} input[name=seed]", "11")
    page.fill(f"{panel} input[name=mask_blur]", "2")
    before = job_ids(live)
    page.click(f"{panel} button[type=submit]")
    job = finished_job(live, before)
    assert job.status == DONE and job.payload["mode"] == "img2img"
    mask = decode(job.payload["request"]["mask"])[..., 0] > 127
    assert mask[30, 32] and not mask[:, :16].any() and not mask[:, 50:].any()  # where the stroke went
    out = rgb(live.state.settings.outputs_dir / job.result["files"][0])
    grown = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(17))
    far = np.asarray(grown) == 0  # more than 8 pixels from the mask: beyond it and its blur
    assert np.array_equal(out[far], rgb(src)[far])
    assert np.abs(out[mask] - rgb(src)[mask]).max() > 0
    assert "Mask blur: 2" in job.result["info"]["infotexts"][0]

    page.wait_for_selector(f"{panel} .result-main img[src*='{job.id}']")
    page.click(f"{panel} button:text('Send to Inpaint')")  # back onto the canvas to keep editing
    wait_for(lambda: np.array_equal(np.array(page.evaluate(CANVAS_PIXELS, panel)).reshape(64, 64, 4)[..., :3], out),
             what="the result on the canvas")
    page.context.close()
    assert log.console_errors == [] and log.failures == []


def test_outpaint_extends_the_canvas_with_outpainting_defaults_and_keeps_the_old_image(browser, live):
    page, log, panel = inpaint_page(browser, live)
    src = source_png()
    page.fill(f"{panel} input[name=extend_by]", "16")
    page.click(f"{panel} button[data-side=right]")
    assert page.evaluate(f"document.querySelector('{panel} canvas.canvas-image').width") == 80
    assert page.input_value(f"{panel} input[name=width]") == "80"
    assert page.input_value(f"{panel} input[name=denoising_strength]") == "1"
    assert page.input_value(f"{panel} select[name=inpainting_fill]") == "0"  # fill
    page.fill(f"{panel} input[name=steps]", "3")
    before = job_ids(live)
    page.click(f"{panel} button[type=submit]")
    job = finished_job(live, before)
    assert job.status == DONE
    mask = decode(job.payload["request"]["mask"])[..., 0] > 127
    assert mask[:, 64:].all() and not mask[:, :56].any()  # the new border and an 8-pixel seam
    out = rgb(live.state.settings.outputs_dir / job.result["files"][0])
    assert out.shape == (64, 80, 3)
    assert np.array_equal(out[:, :40], rgb(src)[:, :40])
    info = job.result["info"]["infotexts"][0]
    assert "Denoising strength: 1" in info and "Masked content: fill" in info
    page.context.close()
    assert log.console_errors == [] and log.failures == []


def touch(cdp, kind: str, *points):
    cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": [{"x": x, "y": y, "id": i}
                                                                        for i, (x, y) in enumerate(points)]})


def test_phone_touch_brush_paints_pinch_zooms_and_nothing_scrolls_sideways(browser, live):
    """Flow 8: 360x740 with touch: a finger paints the mask, two fingers zoom without painting."""
    page, log, panel = inpaint_page(browser, live, **PHONE)
    assert no_horizontal_scroll(page)
    page.locator(f"{panel} .canvas-view").scroll_into_view_if_needed()
    cdp = page.context.new_cdp_session(page)
    a, b = to_screen(page, panel, 20, 20), to_screen(page, panel, 44, 44)
    touch(cdp, "touchStart", a)
    for k in range(1, 9):
        touch(cdp, "touchMove", (a[0] + (b[0] - a[0]) * k / 8, a[1] + (b[1] - a[1]) * k / 8))
    touch(cdp, "touchEnd")
    painted = page.evaluate(MASK_ALPHA, panel)
    assert painted > 0
    width = page.locator(f"{panel} canvas.canvas-mask").bounding_box()["width"]
    c = to_screen(page, panel, 32, 32)
    touch(cdp, "touchStart", (c[0] - 20, c[1]), (c[0] + 20, c[1]))
    for k in range(1, 6):
        touch(cdp, "touchMove", (c[0] - 20 - 10 * k, c[1]), (c[0] + 20 + 10 * k, c[1]))
    touch(cdp, "touchEnd")
    assert page.locator(f"{panel} canvas.canvas-mask").bounding_box()["width"] > width * 1.5
    assert page.evaluate(MASK_ALPHA, panel) == painted  # the pinch painted nothing
    assert no_horizontal_scroll(page)
    page.context.close()
    assert log.console_errors == [] and log.failures == []


def test_controlnet_unit_previews_its_map_and_its_generation_records_the_unit(browser, live):
    page, log = open_page(browser, live.url + "/#controlnet")
    unit = "#panel-controlnet form[aria-label='ControlNet unit 1']"
    page.wait_for_selector(f"{unit} select[name=module]")
    page.set_input_files(f"{unit} input[type=file]", files=[{"name": "shapes.png", "mimeType": "image/png",
                                                              "buffer": source_png()}])
    page.wait_for_selector(f"{unit} .cn-map img")
    edges = decode(page.get_attribute(f"{unit} .cn-map img", "src"))
    assert edges.shape == (512, 512, 3) and 0.001 < (edges > 127).mean() < 0.1  # thin edges at 512 px: a Canny map
    assert page.input_value(f"{unit} select[name=module]") == "canny"
    assert page.input_value(f"{unit} select[name=model]").startswith("opensd-emoji-canny")
    assert page.input_value(f"{unit} select[name=union_control_type]") == "Unknown"  # not a union model: unset

    page.click("#tab-generate")
    page.wait_for_selector("#panel-generate .controlnet-note:text('unit 1 (canny)')")
    page.fill("#panel-generate textarea[name=prompt]", "smiling face")
    page.fill("#panel-generate input[name=steps]", "4")
    page.fill("#panel-generate input[name=seed]", "21")
    before = job_ids(live)
    page.click("#panel-generate button[type=submit]")
    job = finished_job(live, before)
    assert job.status == DONE
    info = job.result["info"]["infotexts"][0]
    assert 'ControlNet 0: "Module: canny, Model: opensd-emoji-canny' in info
    assert job.payload["request"]["alwayson_scripts"]["controlnet"]["args"][0]["union_control_type"] == "Unknown"
    request = {k: v for k, v in job.payload["request"].items() if k != "alwayson_scripts"}
    plain = httpx.post(live.url + "/sdapi/v1/txt2img", json={**request, "send_images": True}, timeout=120).json()
    out = rgb(live.state.settings.outputs_dir / job.result["files"][0])
    assert not np.array_equal(out, rgb(base64.b64decode(plain["images"][0])))  # the unit changed the image
    page.context.close()
    assert log.console_errors == [] and log.failures == []


def test_gallery_sends_an_image_with_its_parameters_to_img2img_and_to_a_controlnet_unit(browser, live):
    made = httpx.post(live.url + "/sdapi/v1/txt2img", timeout=120, json={
        "prompt": "thumbs up", "steps": 3, "width": 64, "height": 64, "seed": 8}).json()
    image = rgb(base64.b64decode(made["images"][0]))
    page, log = open_page(browser, live.url + "/#gallery")
    page.locator("#panel-gallery .thumbs button").first.click()
    page.click("dialog[open] button:text('img2img')")
    panel = "#panel-img2img"
    page.wait_for_selector(f"{panel}:not([hidden]) canvas.canvas-image")
    wait_for(lambda: page.evaluate(f"document.querySelector('{panel} canvas.canvas-image').width") == 64,
             what="the sent image on the canvas")
    assert np.array_equal(np.array(page.evaluate(CANVAS_PIXELS, panel)).reshape(64, 64, 4)[..., :3], image)
    assert page.input_value(f"{panel} textarea[name=prompt]") == "thumbs up"
    page.click("#tab-gallery")
    page.locator("#panel-gallery .thumbs button").first.click()
    page.click("dialog[open] button:text('ControlNet')")
    page.wait_for_selector("#panel-controlnet form[aria-label='ControlNet unit 1'] .cn-map img")
    assert page.is_checked("#panel-controlnet form[aria-label='ControlNet unit 1'] input[type=checkbox] >> nth=0")
    page.context.close()
    assert log.console_errors == [] and log.failures == []


def test_a_pen_paints_with_its_pressure(browser, live):
    page, log, panel = inpaint_page(browser, live)
    cdp = page.context.new_cdp_session(page)

    def pen_stroke(force: float) -> int:
        page.locator(panel).get_by_role("button", name="Clear mask", exact=True).click()
        (x0, y), (x1, _) = to_screen(page, panel, 10, 32), to_screen(page, panel, 54, 32)
        pen = {"pointerType": "pen", "force": force, "button": "left"}
        cdp.send("Input.dispatchMouseEvent", {"type": "mousePressed", "x": x0, "y": y, "clickCount": 1, "buttons": 1, **pen})
        for k in range(1, 9):
            cdp.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x0 + (x1 - x0) * k / 8, "y": y,
                                                  "buttons": 1, **pen})
        cdp.send("Input.dispatchMouseEvent", {"type": "mouseReleased", "x": x1, "y": y, "clickCount": 1, **pen})
        return page.evaluate(MASK_ALPHA, panel)

    firm, light = pen_stroke(1.0), pen_stroke(0.25)
    assert 0 < light < firm * 0.5
    page.context.close()
    assert log.console_errors == [] and log.failures == []


def test_soft_inpainting_card_sends_a1111s_script_args_and_the_image_records_them(browser, live):
    page, log, panel = inpaint_page(browser, live)
    page.mouse.move(*to_screen(page, panel, 20, 30))
    page.mouse.down()
    page.mouse.move(*to_screen(page, panel, 44, 30), steps=8)
    page.mouse.up()
    page.fill(f"{panel} textarea[name=prompt]", "red heart")
    page.fill(f"{panel} input[name=steps]", "3")
    page.fill(f"{panel} input[name=mask_blur]", "8")
    page.click(f"{panel} summary:text('Soft inpainting')")
    page.check(f"{panel} input[name=soft_inpainting]")
    page.fill(f"{panel} input[name=soft_preservation_strength]", "1.5")
    before = job_ids(live)
    page.click(f"{panel} button[type=submit]")
    job = finished_job(live, before)
    assert job.status == DONE
    assert job.payload["request"]["alwayson_scripts"]["soft inpainting"]["args"] == [True, 1, 1.5, 4, 0, 0.5, 2]
    text = job.result["info"]["infotexts"][0]
    assert "Soft inpainting enabled: True" in text and "Soft inpainting preservation strength: 1.5" in text
    assert "soft inpainting" not in " ".join(job.result["info"]["unsupported_fields"])
    page.context.close()
    assert log.console_errors == [] and log.failures == []
