"""The web UI's Generate tab lists the models folder's hypernetworks (A1111's extra network) and
inserts <hypernet:name:1> into the prompt; without any, no picker is shown."""
from __future__ import annotations

import pytest
from hypernet_fixtures import write_hypernet
from server_live import LiveServer, models_dir
from ui_browser import browser, open_page  # noqa: F401 (fixture)

from opensd.server.settings import Settings

pytest.importorskip("playwright.sync_api", reason="playwright is a test dependency")


def test_hypernetwork_picker_inserts_the_tag(browser, tmp_path):  # noqa: F811
    models = models_dir(tmp_path)
    write_hypernet(models / "hypernetworks" / "anime.pt", (64, 32))
    with LiveServer(Settings(models_dir=models, outputs_dir=tmp_path / "out")) as live:
        page, log = open_page(browser, live.url + "/#generate")
        page.click("#panel-generate summary:text('Hypernetworks (1)')")
        page.fill("#panel-generate textarea[name=prompt]", "a cat ")
        page.click("#panel-generate .picker-list button:text('anime')")
        assert page.input_value("#panel-generate textarea[name=prompt]").endswith("<hypernet:anime:1>")
        (models / "hypernetworks" / "anime.pt").unlink()
        page.reload()
        page.wait_for_selector("#panel-generate summary:text('LoRA (0)')")
        assert page.locator("#panel-generate summary:text('Hypernetworks')").count() == 0
        page.context.close()
    assert log.console_errors == [] and log.failures == []
