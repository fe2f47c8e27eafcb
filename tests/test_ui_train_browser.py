"""The Train and Models tabs in Debian's chromium (Playwright) against a real `opensd serve` app with
only the built-in model (so results are saved under its data folder): flow 5, a LoRA trained from
images uploaded through the file input, then picked in Generate where it changes the pixels; the
Models list with family and hash; a merge job whose result joins the list. Asserts on stored files
and pixels, and on an empty console."""
from __future__ import annotations

import numpy as np
import pytest
from playwright.sync_api import expect
from PIL import Image
from ui_browser import browser, live, open_page, wait_for  # noqa: F401 (fixtures)

from opensd.library.hashes import model_hash
from opensd.library.models_dir import BUILTIN_CHECKPOINT
from opensd.server.store import DONE, FINAL

BUILTIN = BUILTIN_CHECKPOINT.name


@pytest.fixture
def page(browser, live):
    page, log = open_page(browser, live.url + "/#generate")  # Generate mounts first: its pickers must refresh
    page.wait_for_selector("#panel-generate form select[name=model] option", state="attached")
    yield page
    page.context.close()
    assert log.console_errors == [] and log.failures == [] and log.foreign() == []


def run_job(page, live, button: str, kind: str):
    """Click `button`, then the one job of `kind` it queued, finished, which must have succeeded."""
    before = {j.id for j in live.state.store.all()}
    page.click(button)

    def ready():
        jobs = [j for j in live.state.store.all() if j.kind == kind and j.id not in before]
        return jobs[0] if jobs and jobs[0].status in FINAL else None
    job = wait_for(ready, timeout=300, what=f"a {kind} job")
    assert job.status == DONE, job.error
    return job


def generate(page, live, prompt: str) -> np.ndarray:
    page.fill("#panel-generate textarea[name=prompt]", prompt)
    job = run_job(page, live, "#panel-generate button[type=submit]", "a1111")
    return np.asarray(Image.open(live.state.settings.outputs_dir / job.result["files"][0]).convert("RGB"), dtype=float)


def test_a_lora_trained_in_the_train_tab_is_picked_in_generate_and_changes_the_image(page, live, tmp_path):
    """Flow 5."""
    page.click("#tab-train")
    page.fill("#panel-train input[name=new_dataset]", "zq squares")
    page.click("#panel-train button:text('Create')")
    page.wait_for_selector("#panel-train select[name=dataset] option[value='zq squares']", state="attached")
    files = []
    for i, color in enumerate([(230, 20, 30), (30, 40, 220), (250, 200, 10)]):
        path = tmp_path / f"square{i}.png"
        Image.new("RGB", (64, 64), color).save(path)
        files.append(str(path))
    page.set_input_files("#panel-train input[type=file]", files)
    page.wait_for_selector("#panel-train .dataset-grid figure >> nth=2")
    caption = page.locator("#panel-train textarea[data-file='square0.png']")
    caption.fill("zq square, red")
    caption.blur()
    folder = live.state.settings.data_dir / "datasets" / "zq squares"
    wait_for(lambda: (folder / "square0.txt").is_file(), what="the caption sidecar")
    assert (folder / "square0.txt").read_text() == "zq square, red\n"

    form = "#panel-train form[aria-label='Training settings']"
    page.select_option(f"{form} select[name=type]", "lora")
    page.select_option(f"{form} select[name=model]", BUILTIN)
    for name, value in {"output": "zq-square", "steps": 4, "lr": 0.05, "batch_size": 1, "rank": 4, "alpha": 4,
                        "caption": "zq square", "sample_every": 2, "sample_steps": 3,
                        "sample_prompt": "zq square"}.items():
        page.fill(f"{form} [name={name}]", str(value))
    run_job(page, live, f"{form} button[type=submit]", "train")
    lora = live.state.folders.save_folder("loras") / "zq-square.safetensors"
    assert lora.is_file()
    page.wait_for_selector("#panel-train .train-progress svg.chart[aria-label*='4 points']")
    page.wait_for_selector("#panel-train .samples img >> nth=1")
    # the <img> elements appear before their pictures have loaded: wait for every one to decode at 64 px
    page.wait_for_function(
        "() => { const imgs = [...document.querySelectorAll('#panel-train .samples img')];"
        " return imgs.length >= 2 && imgs.every((i) => i.complete && i.naturalWidth === 64); }", timeout=30_000)
    # the file is written before the job's end reaches the page's next poll: wait for it, do not race it
    expect(page.locator("#panel-train .train-progress [role=status]")).to_contain_text(
        "saved as zq-square.safetensors", timeout=30_000)

    page.click("#tab-generate")
    for name, value in {"steps": 6, "seed": 11, "width": 64, "height": 64, "cfg_scale": 7}.items():
        page.fill(f"#panel-generate input[name={name}]", str(value))
    page.select_option("#panel-generate select[name=model]", BUILTIN)
    plain = generate(page, live, "zq square")
    page.click("#panel-generate summary:text('LoRA (1)')")  # listed without reloading the page
    page.click("#panel-generate .picker-list button:text('zq-square')")
    assert page.input_value("#panel-generate textarea[name=prompt]").endswith("<lora:zq-square:1>")
    with_lora = generate(page, live, page.input_value("#panel-generate textarea[name=prompt]"))
    assert np.abs(with_lora - plain).mean() > 1.0  # same seed and settings: the LoRA alone changed it


def test_models_lists_the_builtin_checkpoint_and_a_merge_job_joins_the_list(page, live):
    page.click("#tab-models")
    row = f"#panel-models section[data-kind=checkpoints] li[data-name='{BUILTIN}']"
    page.wait_for_selector(f"{row} .pill.family:text('small')")
    page.wait_for_selector(f"{row} .hash code", timeout=60_000)  # hashed on request, in the background
    assert page.inner_text(f"{row} .hash code") == model_hash(BUILTIN_CHECKPOINT)
    page.click(f"{row} button:text('Metadata')")
    page.wait_for_selector(f"{row} pre:text('opensd.vae_scaling_factor: ')")

    merge = "#panel-models form[aria-label='Merge checkpoints']"
    page.select_option(f"{merge} select[name=a]", BUILTIN)
    page.select_option(f"{merge} select[name=b]", BUILTIN)
    page.fill(f"{merge} input[name=multiplier]", "0.3")
    page.fill(f"{merge} input[name=output]", "self-merge")
    run_job(page, live, f"{merge} button[type=submit]", "models")
    merged = live.state.folders.save_folder("checkpoints") / "self-merge.safetensors"
    assert merged.is_file()
    page.wait_for_selector("#panel-models section[data-kind=checkpoints] li[data-name='self-merge.safetensors'] "
                           ".pill.family:text('small')")
    expect(page.locator("#panel-models .progress-card [role=status]")).to_contain_text("saved", timeout=30_000)
    page.click("#tab-generate")  # the model picker lists it too
    page.wait_for_selector("#panel-generate select[name=model] option[value='self-merge.safetensors']", state="attached")
