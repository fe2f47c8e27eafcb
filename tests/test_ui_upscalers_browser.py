"""The web UI's hires fix offers what the server has: A1111's latent modes, None/Lanczos/Nearest
and the installed upscaler models; a model picked there upscales the first pass (in Chromium)."""
from __future__ import annotations

import pytest
from server_live import LiveServer
from ui_browser import browser, open_page, wait_for  # noqa: F401 (fixtures)
from upscaler_files import srvgg, write_safetensors

from opensd.server.settings import Settings
from opensd.server.store import DONE

pytest.importorskip("playwright.sync_api", reason="playwright is a test dependency")


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("uiup")
    write_safetensors(root / "models" / "upscale_models" / "2x-compact.safetensors", srvgg(scale=2))
    with LiveServer(Settings(models_dir=root / "models", outputs_dir=root / "out")) as server:
        yield server


def test_hires_fix_lists_the_upscalers_and_runs_a_model(browser, live):
    page, log = open_page(browser, live.url + "/#generate")
    page.wait_for_selector("#panel-generate select[name=hr_upscaler] option", state="attached")
    options = page.eval_on_selector_all("#panel-generate select[name=hr_upscaler] option", "os => os.map(o => o.value)")
    assert options == ["Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)",
                       "Latent (nearest)", "Latent (nearest-exact)", "None", "Lanczos", "Nearest", "2x-compact"]
    page.fill("#panel-generate textarea[name=prompt]", "a red heart")
    page.fill("#panel-generate input[name=steps]", "1")
    page.click("#panel-generate summary:has-text('Hires fix')")
    page.check("#panel-generate input[name=enable_hr]")
    page.select_option("#panel-generate select[name=hr_upscaler]", "2x-compact")
    page.fill("#panel-generate input[name=hr_second_pass_steps]", "1")
    page.click("#panel-generate button[type=submit]")
    job = wait_for(lambda: next((j for j in live.state.store.all() if j.status == DONE), None), what="a finished job")
    assert job.payload["kwargs"]["hires"]["upscaler"] == "2x-compact"
    assert "Hires upscaler: 2x-compact" in job.result["info"]["infotexts"][0]
    page.context.close()
    assert log.console_errors == [] and log.failures == [] and log.foreign() == []
