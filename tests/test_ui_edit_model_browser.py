"""The web UI's Image CFG scale (Chromium, a real server): shown only while the selected checkpoint
is an edit model (InstructPix2Pix, CosXL Edit: /opensd/v1/checkpoints says `edit`), sent as A1111's
image_cfg_scale then, and neither shown nor sent for other models."""
from __future__ import annotations

from dataclasses import replace

import httpx
import pytest
from server_live import LiveServer, models_dir
from test_ui_canvas_browser import source_png, upload
from test_ui_scripts_browser import submit_and_wait
from ui_browser import browser, open_page  # noqa: F401 (fixtures)

from opensd.library.synthetic import TINY, write_random_checkpoint
from opensd.server.settings import Settings

pytest.importorskip("playwright.sync_api", reason="playwright is a test dependency")

EDIT, PLAIN = "tiny-edit.safetensors", "tiny.safetensors"
FIELD = "#panel-{tab} input[name=image_cfg_scale]"


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("uiedit")
    folder = models_dir(root)
    write_random_checkpoint(folder / "Stable-diffusion" / EDIT, replace(TINY, unet=replace(TINY.unet, in_channels=8)))
    with LiveServer(Settings(models_dir=folder, outputs_dir=root / "out")) as server:
        yield server


def _open(browser, live, tab: str):
    page, log = open_page(browser, live.url + f"/#{tab}")
    page.wait_for_selector(f"#panel-{tab} form select[name=model] option", state="attached")
    return page, log


def _submit(page, live, tab: str):
    return submit_and_wait(page, live, f"#panel-{tab}")


def test_the_listing_says_which_checkpoints_are_edit_models(live):
    items = {c["name"]: c for c in httpx.get(live.url + "/opensd/v1/checkpoints").json()["items"]}
    assert items[EDIT]["edit"] is True and items[PLAIN]["edit"] is False
    assert items[EDIT]["schedule"] == "discrete" and items[EDIT]["prediction"] == "eps"


def test_image_cfg_scale_shows_and_is_sent_only_for_edit_models(browser, live):
    page, log = _open(browser, live, "generate")
    field = FIELD.format(tab="generate")
    page.select_option("#panel-generate select[name=model]", PLAIN)
    assert not page.is_visible(field)
    page.select_option("#panel-generate select[name=model]", EDIT)
    assert page.is_visible(field) and page.input_value(field) == "1.5"
    page.fill(field, "1.25")
    page.fill("#panel-generate input[name=steps]", "2")
    page.fill("#panel-generate input[name=seed]", "3")
    job = _submit(page, live, "generate")
    assert job.status == "done", job.error
    assert job.payload["request"]["image_cfg_scale"] == 1.25  # txt2img: used, not recorded (as A1111)

    page.select_option("#panel-generate select[name=model]", PLAIN)
    assert not page.is_visible(field)
    job = _submit(page, live, "generate")
    assert job.status == "done" and "image_cfg_scale" not in job.payload["request"]
    page.context.close()
    assert log.console_errors == [] and log.failures == [] and log.foreign() == []


def test_img2img_edits_with_it_and_records_it(browser, live):
    page, log = _open(browser, live, "img2img")
    field = FIELD.format(tab="img2img")
    page.select_option("#panel-img2img select[name=model]", PLAIN)
    assert not page.is_visible(field)
    page.select_option("#panel-img2img select[name=model]", EDIT)
    upload(page, "#panel-img2img", source_png())
    page.fill(field, "2")
    page.fill("#panel-img2img textarea[name=prompt]", "make it blue")
    page.fill("#panel-img2img input[name=steps]", "2")
    job = _submit(page, live, "img2img")
    assert job.status == "done", job.error
    assert job.payload["mode"] == "img2img" and job.payload["request"]["image_cfg_scale"] == 2
    assert "Image CFG scale: 2" in job.result["info"]["infotexts"][0]
    page.context.close()
    assert log.console_errors == [] and log.failures == [] and log.foreign() == []
