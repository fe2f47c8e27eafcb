"""The web UI follows the model's family (Chromium, a real server): switching to a model whose family
recommends other settings (Z-Image Turbo: CFG 1, 8 steps, 1024 px) sets CFG and steps, says so in a
toast and gives the size presets of its native size; switching between two Stable Diffusion models
changes nothing the user set; values restored from the saved form stay."""
from __future__ import annotations

import pytest
from server_live import LiveServer
from ui_browser import browser, open_page  # noqa: F401 (fixtures)

from opensd.library.synthetic import write_random_checkpoint
from opensd.server.settings import Settings
from z_image_fixtures import z_image_models

pytest.importorskip("playwright.sync_api", reason="playwright is a test dependency")

DIT, SD_A, SD_B = "z_image_turbo_bf16.safetensors", "tiny-a.safetensors", "tiny-b.safetensors"


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("uiadvice")
    models, _ = z_image_models(root, seed=2)
    (models / "checkpoints").mkdir()
    for seed, name in enumerate((SD_A, SD_B)):
        write_random_checkpoint(models / "checkpoints" / name, seed=seed)
    with LiveServer(Settings(models_dir=models, outputs_dir=root / "out")) as server:
        yield server


def _settings(page, tab: str) -> tuple[str, str, str]:
    """(steps, CFG, the first size preset) the tab shows."""
    panel = f"#panel-{tab}"
    return (page.input_value(f"{panel} input[name=steps]"), page.input_value(f"{panel} input[name=cfg_scale]"),
            page.locator(f"{panel} .presets button").first.inner_text())


@pytest.mark.parametrize("tab", ["generate", "img2img"])
def test_switching_to_a_dit_model_sets_its_cfg_steps_and_presets_and_back(browser, live, tab):
    page, log = open_page(browser, live.url + f"/#{tab}")
    panel = f"#panel-{tab}"
    page.wait_for_selector(f"{panel} form select[name=model] option", state="attached")
    page.select_option(f"{panel} select[name=model]", SD_A)
    page.fill(f"{panel} input[name=steps]", "33")
    page.fill(f"{panel} input[name=cfg_scale]", "5")
    page.select_option(f"{panel} select[name=model]", SD_B)  # the same family's advice: nothing changes
    assert _settings(page, tab) == ("33", "5", "64×64")
    assert page.locator("#toasts .toast").count() == 0

    page.select_option(f"{panel} select[name=model]", DIT)
    assert _settings(page, tab) == ("8", "1", "1024×1024")
    page.locator("#toasts .toast:has-text('Z-Image: CFG 1, 8 steps')").wait_for(timeout=10_000)
    assert page.eval_on_selector(f"{panel} input[name=cfg_scale]", "n => n.previousSibling.value") == "1"  # slider

    page.fill(f"{panel} input[name=cfg_scale]", "2")  # the user's own value, kept over a reload
    page.wait_for_timeout(500)  # the form is saved a moment after an edit
    page.reload()
    page.wait_for_selector(f"{panel} form select[name=model] option", state="attached")
    assert page.input_value(f"{panel} select[name=model]") == DIT
    assert _settings(page, tab) == ("8", "2", "1024×1024")

    page.select_option(f"{panel} select[name=model]", SD_A)  # back: Stable Diffusion's CFG 7, 20 steps
    assert _settings(page, tab) == ("20", "7", "64×64")
    page.context.close()
    assert log.console_errors == [] and log.failures == [] and log.foreign() == []
