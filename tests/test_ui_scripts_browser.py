"""Issue 22's features in the web UI (Chromium, a real server with the built-in model): the X/Y/Z plot
from the Generate tab (grid and cells equal to single generations), styles picked and applied, the
sampler knobs, the Extras tab's upscale, and the prompt editor's wildcard and {a|b} colours."""
from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image
import torch
from server_live import LiveServer, models_dir
from test_refiner import TINY_REFINER
from ui_browser import browser, drop_file, open_page, wait_for  # noqa: F401 (fixtures)
from workflow_models import TINY_SDXL

from opensd.library.synthetic import write_random_checkpoint

from opensd.pipeline.infotext import parse_infotext, read_infotext
from opensd.server.settings import Settings
from opensd.server.store import FINAL

pytest.importorskip("playwright.sync_api", reason="playwright is a test dependency")

STYLES = 'name,prompt,negative_prompt\nink,"{prompt}, ink drawing",blurry\nglossy,shiny glossy,\n'


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("uiscripts")
    (root / "styles.csv").write_text(STYLES)
    folder = models_dir(root)  # the built-in model, a tiny SD1 one, and a tiny SDXL base with its refiner
    write_random_checkpoint(folder / "Stable-diffusion" / "xl-base.safetensors", TINY_SDXL, dtype=torch.float32)
    write_random_checkpoint(folder / "Stable-diffusion" / "xl-refiner.safetensors", TINY_REFINER, seed=1,
                            dtype=torch.float32)
    with LiveServer(Settings(models_dir=folder, outputs_dir=root / "out",
                             styles_file=root / "styles.csv")) as server:
        yield server


@pytest.fixture
def page(browser, live):
    page, log = open_page(browser, live.url + "/#generate")
    page.wait_for_selector("#panel-generate form select[name=model] option", state="attached")
    page.wait_for_selector("#panel-generate select[name=script]")
    page.select_option("#panel-generate select[name=model]", "opensd-emoji.safetensors")  # its size too: 64
    yield page
    page.context.close()
    assert log.console_errors == [] and log.failures == [] and log.foreign() == []


def submit_and_wait(page, live, panel: str = "#panel-generate"):
    before = {j.id for j in live.state.store.all()}
    page.click(f"{panel} button[type=submit]")

    def done():
        jobs = [j for j in live.state.store.all() if j.id not in before]
        return jobs[0] if jobs and jobs[0].status in FINAL else None
    return wait_for(done, what="the job")


def pixels(source) -> np.ndarray:
    return np.asarray(Image.open(source).convert("RGB"))


def test_xyz_plot_over_steps_gives_the_grid_then_cells_equal_to_single_generations(page, live):
    page.fill("#panel-generate textarea[name=prompt]", "red heart, noto emoji style")
    page.fill("#panel-generate input[name=seed]", "5")
    page.select_option("#panel-generate select[name=script]", label="X/Y/Z plot")
    page.select_option("#panel-generate select[name=xyz_x_type]", label="Steps")
    page.fill("#panel-generate input[name=xyz_x_values]", "2, 4")
    page.check("#panel-generate input[name=xyz_include_lone_images]")
    job = submit_and_wait(page, live)
    request = job.payload["request"]
    assert request["script_name"] == "X/Y/Z plot"
    assert request["script_args"][:3] == [4, "2, 4", []]  # A1111's index of Steps in txt2img
    out = live.state.settings.outputs_dir
    grid, *cells = (pixels(out / f) for f in job.result["files"])
    assert len(cells) == 2 and job.result["info"]["index_of_first_image"] == 1
    single = {k: v for k, v in request.items() if k not in ("script_name", "script_args")}
    for steps, cell in zip((2, 4), cells):
        made = httpx.post(live.url + "/sdapi/v1/txt2img", json={**single, "steps": steps, "send_images": True},
                          timeout=120).json()
        assert np.array_equal(cell, pixels(io.BytesIO(base64.b64decode(made["images"][0])))), steps
    h, w = cells[0].shape[:2]  # the cells side by side under their labels
    assert grid.shape[1] == 2 * w and grid.shape[0] > h
    assert np.array_equal(grid[-h:, :w], cells[0]) and np.array_equal(grid[-h:, w:], cells[1])
    # the results show the grid first, marked as a grid, then the cells
    page.wait_for_selector(f"#panel-generate .result-main img[src*='{job.id}/images/0']")
    labels = page.eval_on_selector_all("#panel-generate .results button", "bs => bs.map(b => b.getAttribute('aria-label'))")
    assert labels == ["Grid 1", "Image 1", "Image 2"]
    assert "X Type: Steps" in page.inner_text("#panel-generate pre.infotext")


def test_scripts_lists_follow_the_mode_and_choice_axes_send_their_dropdown(page, live):
    options = page.eval_on_selector_all("#panel-generate select[name=script] option", "os => os.map(o => o.text)")
    assert options == ["None", "X/Y/Z plot", "Prompt matrix", "Prompts from file or textbox"]
    page.select_option("#panel-generate select[name=script]", label="X/Y/Z plot")
    page.select_option("#panel-generate select[name=xyz_x_type]", label="Sampler")
    assert page.is_hidden("#panel-generate input[name=xyz_x_values]")
    page.click("#panel-generate [aria-label='X values to plot'] button:text-is('Euler a')")
    page.click("#panel-generate [aria-label='X values to plot'] button:text-is('DPM++ 2M')")
    page.select_option("#panel-generate select[name=xyz_y_type]", label="CFG Scale")
    page.fill("#panel-generate input[name=xyz_y_values]", "5-7 [2]")
    page.fill("#panel-generate textarea[name=prompt]", "star")
    page.fill("#panel-generate input[name=steps]", "2")
    job = submit_and_wait(page, live)
    args = job.payload["request"]["script_args"]
    assert args[2] == ["Euler a", "DPM++ 2M"] and args[3:5] == [6, "5-7 [2]"]
    assert len(job.result["files"]) == 1  # the grid only (Include Sub Images is off, as in A1111)
    assert "Y Values: 5-7 [2]" in read_infotext(live.state.settings.outputs_dir / job.result["files"][0])
    page.click("#tab-img2img")
    page.wait_for_selector("#panel-img2img select[name=script] option", state="attached")
    options = page.eval_on_selector_all("#panel-img2img select[name=script] option", "os => os.map(o => o.text)")
    assert options[-1] == "SD upscale"


def test_a_picked_style_goes_with_the_request_and_apply_writes_it_into_the_prompt(page, live):
    page.fill("#panel-generate textarea[name=prompt]", "red heart")
    page.fill("#panel-generate input[name=steps]", "2")
    page.click("#panel-generate summary:text('Styles (2)')")
    page.click("#panel-generate [aria-label='Styles to apply'] button:text-is('ink')")
    assert page.inner_text("#panel-generate .styles-picker [role=status]") == "Active: ink"
    job = submit_and_wait(page, live)
    assert job.payload["request"]["styles"] == ["ink"]
    text = read_infotext(live.state.settings.outputs_dir / job.result["files"][0])
    assert text.startswith("red heart, ink drawing\nNegative prompt: blurry\n")
    page.click("#panel-generate [aria-label='Styles to apply'] button:text-is('ink')")  # off again
    page.click("#panel-generate [aria-label='Styles to apply'] button:text-is('glossy')")
    page.click("#panel-generate button:text('Apply to prompt')")
    assert page.input_value("#panel-generate textarea[name=prompt]") == "red heart, shiny glossy"
    assert page.inner_text("#panel-generate .styles-picker [role=status]") == "No style active"


def test_sampler_knobs_and_the_refiner_go_with_the_request(page, live):
    page.click("#panel-generate summary:text('Advanced')")
    page.fill("#panel-generate textarea[name=prompt]", "blue heart")
    page.fill("#panel-generate input[name=steps]", "4")
    page.select_option("#panel-generate select[name=sampler]", "Euler")
    page.fill("#panel-generate input[name=s_churn]", "0.5")
    page.fill("#panel-generate input[name=s_noise]", "0.9")
    job = submit_and_wait(page, live)
    request = job.payload["request"]
    assert request["s_churn"] == 0.5 and request["s_noise"] == 0.9 and request["eta"] is None
    assert job.payload["kwargs"]["sampler_options"] == {"s_churn": 0.5, "s_noise": 0.9}
    assert request["refiner_checkpoint"] is None  # "None" sends no refiner

    # the server lists A1111's Refiner script, so its controls are shown and used
    page.select_option("#panel-generate select[name=model]", "xl-base.safetensors")
    page.fill("#panel-generate input[name=width]", "64")
    page.fill("#panel-generate input[name=height]", "64")
    page.select_option("#panel-generate select[name=refiner_checkpoint]", "xl-refiner.safetensors")
    page.fill("#panel-generate input[name=refiner_switch_at]", "0.5")
    job = submit_and_wait(page, live)
    assert job.status == "done", job.error
    _, _, params = parse_infotext(job.result["info"]["infotexts"][0])
    assert params["Refiner"].startswith("xl-refiner [") and params["Refiner switch at"] == "0.5"


def test_prompt_matrix_prompts_from_a_file_and_sd_upscale_send_a1111s_script_args(page, live):
    page.fill("#panel-generate textarea[name=prompt]", "heart | red | glossy")
    page.fill("#panel-generate input[name=steps]", "2")
    page.fill("#panel-generate input[name=seed]", "3")
    page.select_option("#panel-generate select[name=script]", label="Prompt matrix")
    page.check("#panel-generate input[name=pm_put_at_start]")
    page.select_option("#panel-generate select[name=pm_delimiter]", "space")
    job = submit_and_wait(page, live)
    assert job.payload["request"]["script_args"] == [True, False, "positive", "space", 0]
    assert job.result["info"]["all_prompts"] == ["heart ", "red heart ", "glossy heart ", "red glossy heart "]
    assert len(job.result["files"]) == 5  # the grid, then each image

    page.fill("#panel-generate textarea[name=prompt]", "emoji")
    page.select_option("#panel-generate select[name=script]", label="Prompts from file or textbox")
    page.set_input_files("#panel-generate input[type=file][aria-label='Choose a text file of prompts']", files=[
        {"name": "prompts.txt", "mimeType": "text/plain", "buffer": b"a star\n--prompt \"a moon\" --steps 3\n"}])
    page.wait_for_function("() => document.querySelector('#panel-generate textarea[name=pf_prompt_txt]').value")
    page.select_option("#panel-generate select[name=pf_prompt_position]", "end")
    job = submit_and_wait(page, live)
    args = job.payload["request"]["script_args"]
    assert args == [False, False, "end", 'a star\n--prompt "a moon" --steps 3\n']
    assert job.result["info"]["all_prompts"] == ["emoji a star", "emoji a moon"]

    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
    page.click("#tab-img2img")
    page.wait_for_selector("#panel-img2img select[name=script] option", state="attached")
    page.set_input_files("#panel-img2img .canvas-editor input[type=file]",
                         files=[{"name": "in.png", "mimeType": "image/png", "buffer": buf.getvalue()}])
    page.wait_for_function("() => document.querySelector('#panel-img2img canvas.canvas-image').width === 64")
    page.fill("#panel-img2img textarea[name=prompt]", "heart")
    page.fill("#panel-img2img input[name=steps]", "2")
    page.select_option("#panel-img2img select[name=script]", label="SD upscale")
    page.select_option("#panel-img2img select[name=su_upscaler]", label="Lanczos")
    page.fill("#panel-img2img input[name=su_overlap]", "16")
    job = submit_and_wait(page, live, "#panel-img2img")
    assert job.payload["request"]["script_args"] == [None, 16, 1, 2]  # Lanczos: index 1 of /sdapi/v1/upscalers
    assert pixels(live.state.settings.outputs_dir / job.result["files"][0]).shape == (128, 128, 3)


def test_extras_upscales_with_lanczos_to_twice_the_size(browser, live):
    page, log = open_page(browser, live.url + "/#extras")
    page.wait_for_selector("#panel-extras select[name=upscaler_1] option", state="attached")
    rng = np.random.default_rng(0)
    source = Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8))
    buf = io.BytesIO()
    source.save(buf, format="PNG")
    drop_file(page, "#panel-extras .extras-drop", buf.getvalue(), "noise.png")
    page.wait_for_selector("#panel-extras .extras-drop img")
    page.select_option("#panel-extras select[name=resize_mode]", "0")
    page.fill("#panel-extras input[name=upscaling_resize]", "2")
    page.select_option("#panel-extras select[name=upscaler_1]", "Lanczos")
    page.select_option("#panel-extras select[name=upscaler_2]", "None")
    page.click("#panel-extras button[type=submit]")
    page.wait_for_function("() => document.querySelector('#panel-extras .result-main img')?.naturalWidth > 0")
    assert page.evaluate("[...document.querySelectorAll('#panel-extras .result-main img')].map(i => [i.naturalWidth, "
                         "i.naturalHeight])") == [[80, 96]]
    (saved,) = (live.state.settings.outputs_dir / "extras-images").glob("*.png")
    made = httpx.post(live.url + "/sdapi/v1/extra-single-image", timeout=60, json={
        "image": base64.b64encode(buf.getvalue()).decode(), "upscaler_1": "Lanczos", "upscaling_resize": 2}).json()
    assert np.array_equal(pixels(saved), pixels(io.BytesIO(base64.b64decode(made["image"]))))
    assert pixels(saved).shape == (96, 80, 3)
    page.click("#panel-extras button:text('Send to img2img')")
    page.wait_for_function("() => document.querySelector('#panel-img2img canvas.canvas-image')?.width === 80")
    page.context.close()
    assert log.console_errors == [] and log.failures == [] and log.foreign() == []


def test_prompt_colours_mark_wildcards_and_dynamic_groups_apart_from_alternation(page):
    page.fill("#panel-generate textarea[name=prompt]", "a __animal__ {2$$red|blue {x|y}} [cat|dog] \\{no}")
    hl = "#panel-generate .prompt-box .hl"
    assert page.eval_on_selector_all(f"{hl} .wc", "es => es.map(e => e.textContent)") == ["__animal__"]
    groups = page.eval_on_selector_all(f"{hl} > .dyn", "es => es.map(e => e.textContent)")
    assert groups == ["{2$$red|blue {x|y}}"]  # one group, the inner one nested in it
    assert page.eval_on_selector_all(f"{hl} .dyn .dyn", "es => es.map(e => e.textContent)") == ["{x|y}"]
    marks = page.eval_on_selector_all(f"{hl} > .dyn > .dp", "es => es.map(e => e.textContent)")
    assert marks == ["{2$$", "|", "}"]
    assert page.eval_on_selector_all(f"{hl} > .e", "es => es.map(e => e.textContent)") == ["[", "|", "]"]
    assert page.inner_text(hl).rstrip("\n") == page.input_value("#panel-generate textarea[name=prompt]")
