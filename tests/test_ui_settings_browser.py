"""The web UI's Settings tab (Chromium, a real server): it shows the A1111 settings opensd acts on
with their current values, "Apply settings" stores only what changed and generation follows it,
"Defaults" brings A1111's values back, and a value outside a slider's range is stopped in the form.
Plus, without a browser: every setting the tab lists is one of A1111's, and /opensd/v1/options-info
describes each as the server checks it."""
from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from ui_browser import browser, live, open_page, wait_for  # noqa: F401 (fixtures)

from opensd.server.a1111_option_table import DEFAULTS

SETTINGS_JS = Path(__file__).parents[1] / "src" / "opensd" / "ui" / "static" / "js" / "tabs" / "settings.js"


def listed_keys() -> list[str]:
    sections = SETTINGS_JS.read_text().split("export const SECTIONS = [", 1)[1].split("\n];", 1)[0]
    return re.findall(r'\["([A-Za-z_0-9]+)", "', sections)


def test_every_listed_setting_is_an_a1111_setting_and_is_described(live):
    keys = listed_keys()
    assert len(keys) >= 20 and len(set(keys)) == len(keys)
    assert [k for k in keys if k not in DEFAULTS] == []
    info = httpx.get(live.url + "/opensd/v1/options-info").json()
    assert set(info) == set(DEFAULTS)
    assert info["randn_source"] == {"default": "GPU", "kind": "choice", "choices": ["GPU", "CPU"]}  # NV is refused
    assert info["uni_pc_variant"]["choices"] == ["bh1", "bh2"]
    assert info["jpeg_quality"] == {"default": 80, "kind": "int", "min": 1, "max": 100}
    assert info["webp_lossless"]["kind"] == "bool" and info["eta_ancestral"]["kind"] == "float"
    for key, entry in info.items():  # each choice offered is one the server takes
        for choice in entry.get("choices", []):
            assert httpx.post(live.url + "/sdapi/v1/options", json={key: choice}).status_code == 200, (key, choice)
        httpx.post(live.url + "/sdapi/v1/options", json={key: entry["default"]})


@pytest.fixture
def page(browser, live):
    page, log = open_page(browser, live.url + "/#settings")
    page.wait_for_selector("#panel-settings select[name=samples_format]")
    yield page
    page.context.close()
    assert log.console_errors == [] and log.failures == [] and log.foreign() == []


def options(live) -> dict:
    return httpx.get(live.url + "/sdapi/v1/options").json()


def test_apply_stores_what_changed_and_generation_follows_it(page, live):
    form = "#panel-settings form"
    assert page.input_value(f"{form} [name=jpeg_quality]") == str(options(live)["jpeg_quality"])
    page.select_option(f"{form} select[name=samples_format]", "jpg")
    page.fill(f"{form} input[name=eta_ancestral]", "0.5")
    page.check(f"{form} input[name=webp_lossless]")
    page.click(f"{form} button[type=submit]")
    wait_for(lambda: options(live)["samples_format"] == "jpg" or None, what="the saved format")
    now = options(live)
    assert (now["eta_ancestral"], now["webp_lossless"]) == (0.5, True)
    r = httpx.post(live.url + "/sdapi/v1/txt2img", timeout=120, json={
        "prompt": "red heart", "steps": 2, "width": 64, "height": 64, "sampler_name": "Euler a", "seed": 3})
    assert r.status_code == 200
    info = r.json()["info"]
    assert "Eta: 0.5" in info  # the ancestral sampler took the setting
    files = sorted(live.state.settings.outputs_dir.rglob("*.jpg"))
    assert files, "a JPEG was saved"

    page.click(f"{form} section[aria-label='Sampler parameters'] button:text('Defaults')")
    page.click(f"{form} section[aria-label='Saving images'] button:text('Defaults')")
    page.click(f"{form} button[type=submit]")
    wait_for(lambda: options(live)["samples_format"] == "png" or None, what="the defaults saved")
    now = options(live)
    assert (now["eta_ancestral"], now["webp_lossless"]) == (DEFAULTS["eta_ancestral"], DEFAULTS["webp_lossless"])


def test_a_value_outside_the_slider_range_is_stopped_in_the_form(page, live):
    form = "#panel-settings form"
    before = options(live)["jpeg_quality"]
    page.fill(f"{form} input[name=jpeg_quality]", "500")
    page.click(f"{form} button[type=submit]")
    assert page.evaluate("document.querySelector('#panel-settings input[name=jpeg_quality]').validity.rangeOverflow")
    assert options(live)["jpeg_quality"] == before
