"""Flows a first-time user hits (chromium via Playwright, the built-in model): a reload mid-job keeps
the job's progress and result, a file that is not a picture is refused with a message on every tab that
takes one, on a phone the progress comes into sight after Generate, and without a models folder the Models
tab says how to set one. Each ends on an empty console."""
from __future__ import annotations

import pytest
from ui_browser import PHONE, browser, live, open_page, wait_for  # noqa: F401 (fixtures)

from opensd.server.store import FINAL

pytest.importorskip("playwright.sync_api", reason="playwright is a test dependency")

READY = "#panel-generate form select[name=model] option"
NOT_A_PICTURE = {"name": "holiday.png", "mimeType": "image/png", "buffer": b"this is a text file, renamed" * 20}


def clean(log) -> None:
    assert log.console_errors == [] and log.failures == [] and log.foreign() == []


def test_a_reload_mid_job_still_shows_its_result_and_keeps_it_after_another_reload(browser, live):
    page, log = open_page(browser, live.url + "/#generate")
    page.wait_for_selector(READY, state="attached")
    page.fill("#panel-generate textarea[name=prompt]", "red heart, noto emoji style")
    page.fill("#panel-generate input[name=steps]", "20")
    before = {j.id for j in live.state.store.all()}
    page.click("#panel-generate button.primary")
    job = wait_for(lambda: next((j for j in live.state.store.all() if j.id not in before), None), what="the job")
    page.reload()  # while it waits or runs (or just after: either way its images come back)
    page.wait_for_selector(READY, state="attached")
    assert page.input_value("#panel-generate textarea[name=prompt]") == "red heart, noto emoji style"
    page.wait_for_selector(f"#panel-generate .result-main img[src*='{job.id}']", timeout=60_000)
    assert live.state.store.get(job.id).status in FINAL
    page.reload()
    page.wait_for_selector(READY, state="attached")
    page.wait_for_selector(f"#panel-generate .result-main img[src*='{job.id}']")
    assert "Seed:" in page.inner_text("#panel-generate pre.infotext")
    page.context.close()
    clean(log)


@pytest.mark.parametrize("tab", ["extras", "controlnet", "pnginfo", "img2img"])
def test_a_file_that_is_not_a_picture_is_refused_with_a_message(browser, live, tab):
    page, log = open_page(browser, live.url + f"/#{tab}")
    page.wait_for_selector(f"#panel-{tab}:not([hidden]) input[type=file]", state="attached")
    page.locator(f"#panel-{tab} input[type=file]").first.set_input_files(NOT_A_PICTURE)
    alert = page.locator("#toasts .toast.error")
    alert.wait_for(timeout=10_000)
    assert alert.inner_text().strip().startswith(("holiday.png: This file is not an image",
                                                  "This file is not an image"))
    # nothing taken: no broken picture shown, no ControlNet unit switched on
    assert page.locator(f"#panel-{tab} img[src^='blob:'], #panel-{tab} img[src^='data:']").count() == 0
    assert page.locator(f"#panel-{tab} input[type=checkbox][aria-label^='Enable ControlNet']:checked").count() == 0
    page.context.close()
    clean(log)


def test_on_a_phone_generate_brings_the_progress_into_sight(browser, live):
    page, log = open_page(browser, live.url + "/#generate", **PHONE)
    page.wait_for_selector(READY, state="attached")
    prompt = page.locator("#panel-generate textarea[name=prompt]")
    assert prompt.get_attribute("placeholder").startswith("Describe the picture")  # an example, not a value
    prompt.fill("smiling face, noto emoji style")
    page.fill("#panel-generate input[name=steps]", "4")
    card = page.locator("#panel-generate .progress-card")
    in_sight = "(el) => { const r = el.getBoundingClientRect(); return r.top < innerHeight && r.bottom > 0; }"
    assert not card.evaluate(in_sight)  # below the form, as on any phone
    page.tap("#panel-generate button.primary")
    wait_for(lambda: card.evaluate(in_sight), what="the progress card in sight")
    page.wait_for_selector("#panel-generate .result-main img")
    page.context.close()
    clean(log)


def test_without_a_models_folder_the_models_tab_says_how_to_add_one(browser, live):
    page, log = open_page(browser, live.url + "/#models")
    note = page.locator("#panel-models .models-folder")
    wait_for(lambda: "--models-dir" in note.inner_text(), what="the models folder note")
    assert "only the built-in model" in note.inner_text()
    page.context.close()
    clean(log)


def test_interrupt_and_skip_are_usable_only_while_this_tabs_job_runs(browser, live):
    page, log = open_page(browser, live.url + "/#generate")
    page.wait_for_selector(READY, state="attached")
    interrupt = page.locator("#panel-generate .progress-card button:text('Interrupt')")
    skip = page.locator("#panel-generate .progress-card button:text('Skip')")
    assert interrupt.is_disabled() and skip.is_disabled()  # nothing to stop: not a silent no-op
    page.fill("#panel-generate textarea[name=prompt]", "slow heart")
    for name, value in {"steps": 150, "width": 192, "height": 192}.items():
        page.fill(f"#panel-generate input[name={name}]", str(value))
    before = {j.id for j in live.state.store.all()}
    page.click("#panel-generate button.primary")
    wait_for(interrupt.is_enabled, what="Interrupt enabled while the job runs")
    assert skip.is_enabled()
    interrupt.click()
    job = wait_for(lambda: next((j for j in live.state.store.all() if j.id not in before and j.status in FINAL), None),
                   what="the interrupted job")
    assert job.status == "interrupted"
    wait_for(interrupt.is_disabled, what="Interrupt disabled again")
    page.context.close()
    clean(log)


def test_creating_a_dataset_without_a_name_says_so_before_asking_the_server(browser, live):
    page, log = open_page(browser, live.url + "/#train")
    page.click("#panel-train button:text-is('Create')")
    page.locator("#toasts .toast.error:has-text('Type a name for the new dataset')").wait_for(timeout=10_000)
    assert page.evaluate("document.activeElement.name") == "new_dataset"
    page.context.close()
    clean(log)  # no refused request either


def test_a_wrong_value_in_a_collapsed_card_is_shown_not_a_silent_generate(browser, live):
    page, log = open_page(browser, live.url + "/#generate")
    page.wait_for_selector(READY, state="attached")
    variation = page.locator("#panel-generate details:has(summary:text('Variation seed'))")
    variation.locator("summary").click()
    page.fill("#panel-generate input[name=subseed_strength]", "5")
    variation.locator("summary").click()  # collapsed again, the wrong value inside
    before = len(live.state.store.all())
    page.click("#panel-generate button.primary")
    wait_for(lambda: variation.evaluate("d => d.open"), what="the card opened on the wrong value")
    assert page.evaluate("document.activeElement.name") == "subseed_strength"  # the browser points at it
    assert len(live.state.store.all()) == before
    page.context.close()
    clean(log)  # and no "An invalid form control ... is not focusable" in the console


def test_extras_points_at_a_wrong_value_in_the_hidden_scale_to_fields(browser, live):
    page, log = open_page(browser, live.url + "/#extras")
    page.wait_for_selector("#panel-extras select[name=resize_mode]")
    page.select_option("#panel-extras select[name=resize_mode]", "1")
    page.fill("#panel-extras input[name=upscaling_resize_w]", "0")
    page.select_option("#panel-extras select[name=resize_mode]", "0")  # "Scale to" hidden again
    page.click("#panel-extras button.primary")
    page.locator("#toasts .toast.error:has-text('Width: Value must be greater than or equal to 1')").wait_for(timeout=10_000)
    page.context.close()
    clean(log)


def test_a_tab_that_could_not_load_says_why_and_loads_on_try_again(browser, live):
    page, log = open_page(browser, live.url + "/#generate")
    page.wait_for_selector(READY, state="attached")
    page.route("**/ui/js/tabs/gallery.js", lambda route: route.abort())  # as if the server were stopped
    page.click("#tab-gallery")
    page.wait_for_selector("#panel-gallery p.error:has-text('the server cannot be reached')")
    page.unroute("**/ui/js/tabs/gallery.js")
    page.click("#panel-gallery button:text('Try again')")
    page.wait_for_selector("#panel-gallery input[type=search]")
    assert page.locator("#panel-gallery p.error").count() == 0
    page.context.close()
    assert not [e for e in log.console_errors if e[0].startswith("uncaught")]  # the failure is handled
