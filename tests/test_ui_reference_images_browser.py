"""The web UI's Reference images card (Chromium, a real server with a tiny FLUX.2 [klein] and a tiny
Stable Diffusion model): shown only while the selected model takes reference images (the checkpoint
list's `references`); images added by the picker, a drop and a paste are numbered in order, a
removed one goes, "Use the size of image 1" sizes the output, and Generate sends them in that order (the job's request and its infotext); for
Stable Diffusion nothing is sent (the images held stay, greyed, with why; with none the card is hidden). The phone layout keeps the card within the screen."""
from __future__ import annotations

import base64
import io

import pytest
from PIL import Image
from server_live import LiveServer
from test_ui_scripts_browser import submit_and_wait
from ui_browser import PHONE, browser, drop_file, no_horizontal_scroll, open_page, wait_for  # noqa: F401 (fixtures)

from flux2_fixtures import klein_models
from opensd.server.settings import Settings

pytest.importorskip("playwright.sync_api", reason="playwright is a test dependency")

KLEIN, SD = "flux-2-klein-4b.safetensors", "tiny.safetensors"
CARD = "#panel-{tab} [role=group][aria-label='Reference images']"


def png(color, size=(40, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("uirefs")
    models, _ = klein_models(root, sd=SD)
    with LiveServer(Settings(models_dir=models, outputs_dir=root / "out")) as server:
        yield server


def _open(browser, live, tab: str, **context):
    page, log = open_page(browser, live.url + f"/#{tab}", **context)
    page.wait_for_selector(f"#panel-{tab} form select[name=model] option", state="attached")
    return page, log


def _names(page, tab: str) -> list[str]:
    return page.eval_on_selector_all(f"{CARD.format(tab=tab)} .ref-list img", "els => els.map(e => e.alt)")


def _paste(page, selector: str, data: bytes, name: str) -> None:
    page.evaluate("""([selector, b64, name]) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], name, { type: "image/png" }));
        document.querySelector(selector).dispatchEvent(new ClipboardEvent("paste", { clipboardData: dt, bubbles: true, cancelable: true }));
    }""", [selector, base64.b64encode(data).decode(), name])


def test_card_follows_the_model_and_generate_sends_the_images_in_order(browser, live):
    page, log = _open(browser, live, "generate")
    card = CARD.format(tab="generate")
    page.select_option("#panel-generate select[name=model]", SD)
    assert not page.is_visible(card)
    page.select_option("#panel-generate select[name=model]", KLEIN)
    assert page.is_visible(card)
    page.set_input_files(f"{card} input[type=file]", files=[
        {"name": "red.png", "mimeType": "image/png", "buffer": png((220, 30, 30))},
        {"name": "green.png", "mimeType": "image/png", "buffer": png((30, 200, 30))}])
    wait_for(lambda: len(_names(page, "generate")) == 2, what="two thumbnails")
    drop_file(page, f"{card} .ref-drop", png((30, 30, 220)), "blue.png")
    wait_for(lambda: len(_names(page, "generate")) == 3, what="the dropped image")
    assert _names(page, "generate") == ["Reference 1: red.png", "Reference 2: green.png", "Reference 3: blue.png"]
    assert page.locator(f"{card} .ref-number").all_inner_texts() == ["1", "2", "3"]
    page.click(f"{card} button[aria-label='Remove reference 1 (red.png)']")
    assert _names(page, "generate") == ["Reference 1: green.png", "Reference 2: blue.png"]
    _paste(page, "#panel-generate textarea[name=prompt]", png((240, 240, 240)), "pasted.png")  # anywhere in the tab
    wait_for(lambda: len(_names(page, "generate")) == 3, what="the pasted image")
    page.click(f"{card} button[aria-label='Remove reference 3 (pasted.png)']")

    page.fill("#panel-generate textarea[name=prompt]", "make image 1 blue")
    page.click(f"{card} button:has-text('Use the size of image 1')")  # 40x48: whole 16-pixel steps
    assert (page.input_value("#panel-generate input[name=width]"), page.input_value("#panel-generate input[name=height]")) \
        == ("32", "48")
    for name, value in (("steps", "2"), ("seed", "4")):
        page.fill(f"#panel-generate input[name={name}]", value)
    job = submit_and_wait(page, live)
    assert job.status == "done", job.error
    sent = job.payload["request"]["reference_images"]
    colours = [Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))).getpixel((0, 0)) for s in sent]
    assert colours == [(30, 200, 30), (30, 30, 220)]
    assert "Reference images: 2" in job.result["info"]["infotexts"][0] and "Size: 32x48" in job.result["info"]["infotexts"][0]

    page.select_option("#panel-generate select[name=model]", SD)  # greyed with why, and not sent
    assert page.inner_text(f"{card} .ref-problem").startswith(f"{SD} takes no reference images: these are not sent.")
    page.fill("#panel-generate input[name=width]", "64")
    page.fill("#panel-generate input[name=height]", "64")
    job = submit_and_wait(page, live)
    assert job.status == "done", job.error
    assert job.payload["request"]["reference_images"] == []
    page.context.close()
    assert log.console_errors == [] and log.failures == [] and log.foreign() == []


def test_img2img_has_the_card_and_a_paste_on_it_is_not_the_canvas(browser, live):
    page, log = _open(browser, live, "img2img")
    card = CARD.format(tab="img2img")
    page.select_option("#panel-img2img select[name=model]", KLEIN)
    _paste(page, f"{card} .ref-drop", png((10, 120, 200)), "ref.png")
    wait_for(lambda: _names(page, "img2img") == ["Reference 1: ref.png"], what="the pasted reference")
    page.wait_for_timeout(300)
    assert page.evaluate("document.querySelector('#panel-img2img canvas.canvas-image').width") != 40  # not loaded there
    page.set_input_files(f"{card} input[type=file]", files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"hello"}])
    page.locator("#toasts .toast.error:has-text('notes.png: This file is not an image')").wait_for(timeout=10_000)
    assert _names(page, "img2img") == ["Reference 1: ref.png"]
    page.select_option("#panel-img2img select[name=model]", SD)
    assert not page.is_visible(f"{card} .ref-drop")  # greyed: nothing more to add
    page.click(f"{card} button.ref-remove")
    assert not page.is_visible(card)  # nothing held: hidden
    page.context.close()
    assert log.console_errors == [] and log.failures == [] and log.foreign() == []


def test_phone_layout_keeps_the_card_on_screen(browser, live):
    page, log = _open(browser, live, "generate", **PHONE)
    card = CARD.format(tab="generate")
    page.select_option("#panel-generate select[name=model]", KLEIN)
    page.set_input_files(f"{card} input[type=file]", files=[
        {"name": f"a-very-long-file-name-of-a-reference-{i}.png", "mimeType": "image/png", "buffer": png((i * 60, 90, 90))}
        for i in range(4)])
    wait_for(lambda: len(_names(page, "generate")) == 4, what="four thumbnails")
    assert no_horizontal_scroll(page)
    box = page.locator(f"{card} button.ref-remove").first.bounding_box()
    assert box["width"] >= 24 and box["height"] >= 24  # a finger's target
    page.context.close()
    assert log.console_errors == []
