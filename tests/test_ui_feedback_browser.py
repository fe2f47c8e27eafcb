"""What Generate tells a user instead of guessing (chromium via Playwright, the built-in model, no models
folder): a cleared number is refused next to the field, not sent as the default; the LoRA and
embedding pickers say how to set a models folder when there is none; before the first step the
progress says what the server does (its phase), not a bare "Starting"."""
from __future__ import annotations

import json

import pytest
from ui_browser import browser, live, open_page, wait_for  # noqa: F401 (fixtures)

from opensd.server.store import FINAL

pytest.importorskip("playwright.sync_api", reason="playwright is a test dependency")

READY = "#panel-generate form select[name=model] option"


def clean(log) -> None:
    assert log.console_errors == [] and log.failures == [] and log.foreign() == []


@pytest.mark.parametrize("name", ["steps", "width", "seed"])
def test_a_cleared_number_is_refused_next_to_the_field_not_sent_as_the_default(browser, live, name):
    page, log = open_page(browser, live.url + "/#generate")
    page.wait_for_selector(READY, state="attached")
    page.fill(f"#panel-generate input[name={name}]", "")
    before = len(live.state.store.all())
    page.click("#panel-generate button.primary")
    wait_for(lambda: page.evaluate("document.activeElement.name") == name, what="the cleared field pointed at")
    assert page.eval_on_selector(f"#panel-generate input[name={name}]", "el => el.validationMessage")
    page.wait_for_timeout(300)
    assert len(live.state.store.all()) == before  # nothing queued with a made-up value
    page.context.close()
    clean(log)


def test_without_a_models_folder_the_pickers_say_how_to_set_one(browser, live):
    page, log = open_page(browser, live.url + "/#generate")
    page.wait_for_selector(READY, state="attached")
    for title in ("LoRA", "Embeddings"):
        picker = page.locator(f"#panel-generate details:has(summary:text('{title} (0)'))")
        picker.locator("summary").click()
        text = picker.locator(".picker-list").inner_text()
        assert "opensd serve --models-dir PATH" in text and "none found" not in text
    page.context.close()
    clean(log)


def test_before_the_first_step_the_progress_says_what_the_server_does(browser, live):
    page, log = open_page(browser, live.url + "/#generate")
    page.wait_for_selector(READY, state="attached")
    seen = []

    def before_first_step(route):  # the real answer, held before its first step (a large CPU image)
        body = route.fetch().json()
        seen.append(body["state"]["phase"])
        body["state"].update(sampling_step=0, sampling_steps=0)
        body["progress"] = 0
        route.fulfill(status=200, content_type="application/json", body=json.dumps(body))

    page.route("**/sdapi/v1/progress*", before_first_step)
    page.fill("#panel-generate textarea[name=prompt]", "slow heart")
    for name, value in {"steps": 150, "width": 192, "height": 192}.items():
        page.fill(f"#panel-generate input[name={name}]", str(value))
    before = {j.id for j in live.state.store.all()}
    page.click("#panel-generate button.primary")
    status = page.locator("#panel-generate .progress-card [role=status]")
    wait_for(lambda: "first step" in status.inner_text(), what="the sampling phase shown")
    assert "sampling" in seen  # the server's own phase, not a guess of the page
    page.click("#panel-generate .progress-card button:text('Interrupt')")
    wait_for(lambda: next((j for j in live.state.store.all() if j.id not in before and j.status in FINAL), None),
             what="the interrupted job")
    page.context.close()
    clean(log)
