"""The web UI with the DiT families, as a user meets them (Chromium, a real server with tiny random
Qwen-Image-Edit-2509 / Qwen-Image-Edit, Z-Image, FLUX.2 [dev] and Stable Diffusion models and Z-Image /
Qwen-Image ControlNets: ui_dit_fixtures.py). Qwen-Image-Edit-2509 takes three references and the
result says so; Qwen-Image-Edit takes one (a second is refused in the card, and a request with two is
refused before queueing with the server's reason in the progress card); a model that takes none greys
the images with why they are not sent. ControlNets are listed with their family, and a unit whose
ControlNet does not fit the selected model is flagged before Generate (and the job's refusal shows),
and one that takes no Union control type has the field disabled;
LoRAs too are listed with their family, flagged where the model cannot take them.
Switching to Z-Image, FLUX.2 [dev] or Qwen-Image sets the family's CFG, steps, size and schedule; the Models
tab names these checkpoints' families."""
from __future__ import annotations

import io

import pytest
from PIL import Image
from server_live import LiveServer
from test_ui_scripts_browser import submit_and_wait
from ui_browser import browser, open_page, wait_for  # noqa: F401 (fixtures)
from ui_dit_fixtures import EDIT, EDIT_PLUS, FLUX2_DEV, QWEN_CN, QWEN_LORA, SD, Z_CN, Z_IMAGE, dit_models

from opensd.server.settings import Settings

pytest.importorskip("playwright.sync_api", reason="playwright is a test dependency")

CARD = "#panel-generate [role=group][aria-label='Reference images']"
G = "#panel-generate"


def png(color, size=(40, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def files(*colors):
    return [{"name": f"{name}.png", "mimeType": "image/png", "buffer": png(rgb)} for name, rgb in colors]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("uidit")
    with LiveServer(Settings(models_dir=dit_models(root), outputs_dir=root / "out")) as server:
        yield server


def _open(browser, live, tab="generate"):
    page, log = open_page(browser, live.url + f"/#{tab}")
    page.wait_for_selector(f"#panel-{tab} form select[name=model] option" if tab != "controlnet"
                           else "#panel-controlnet select[name=model] option", state="attached")
    return page, log


def _names(page) -> list[str]:
    return page.eval_on_selector_all(f"{CARD} .ref-list img", "els => els.map(e => e.alt)")


def _small(page, steps="2"):
    for name, value in (("width", "64"), ("height", "64"), ("steps", steps), ("cfg_scale", "1"), ("seed", "3")):
        page.fill(f"{G} input[name={name}]", value)


def test_edit_2509_takes_three_references_and_the_result_says_so(browser, live):
    page, log = _open(browser, live)
    page.select_option(f"{G} select[name=model]", EDIT_PLUS)
    assert page.is_visible(CARD)
    assert "takes up to 10" in page.inner_text(f"{CARD} p.muted")
    page.set_input_files(f"{CARD} input[type=file]", files=files(("red", (220, 30, 30)), ("green", (30, 200, 30)),
                                                                 ("blue", (30, 30, 220))))
    wait_for(lambda: len(_names(page)) == 3, what="three thumbnails")
    page.fill(f"{G} textarea[name=prompt]", "put the hat of image 2 on the cat of image 1")
    _small(page)
    job = submit_and_wait(page, live)
    assert job.status == "done", job.error
    assert len(job.payload["request"]["reference_images"]) == 3
    assert "Reference images: 3" in job.result["info"]["infotexts"][0]
    page.context.close()
    assert log.console_errors == [] and log.failures == [] and log.foreign() == []


def test_single_edit_takes_one_and_a_model_without_references_says_why(browser, live):
    page, log = _open(browser, live)
    page.select_option(f"{G} select[name=model]", EDIT)
    assert "takes one" in page.inner_text(f"{CARD} p.muted")
    page.set_input_files(f"{CARD} input[type=file]", files=files(("a", (200, 0, 0)), ("b", (0, 200, 0))))
    page.locator(f"#toasts .toast.error:has-text('{EDIT} takes at most 1 reference image')").wait_for(timeout=10_000)
    assert _names(page) == ["Reference 1: a.png"]

    # two added with Edit-2509, then back to Edit: the card says what to do, and the server's refusal shows
    page.select_option(f"{G} select[name=model]", EDIT_PLUS)
    page.set_input_files(f"{CARD} input[type=file]", files=files(("c", (0, 0, 200))))
    wait_for(lambda: len(_names(page)) == 2, what="the second reference")
    page.select_option(f"{G} select[name=model]", EDIT)
    assert page.inner_text(f"{CARD} .ref-problem") == f"{EDIT} takes 1 reference image; remove 1 " \
                                                      "(Qwen-Image-Edit-2509/2511 take several)."
    _small(page)
    page.click(f"{G} button[type=submit]")
    status = page.locator(f"{G} .progress-card [role=status].error")
    status.wait_for(timeout=30_000)
    assert "Qwen-Image-Edit takes one reference image (2 given)" in status.inner_text()

    # a model that takes none: the images stay, greyed, with why they are not sent
    page.select_option(f"{G} select[name=model]", SD)
    assert page.is_visible(CARD) and not page.is_visible(f"{CARD} .ref-drop")
    assert page.inner_text(f"{CARD} .ref-problem").startswith(f"{SD} takes no reference images: these are not sent.")
    _small(page)
    job = submit_and_wait(page, live)
    assert job.status == "done", job.error
    assert job.payload["request"]["reference_images"] == []
    for _ in range(2):
        page.click(f"{CARD} button.ref-remove >> nth=0")
    assert not page.is_visible(CARD)  # nothing held: nothing to say
    page.context.close()
    assert [url for _, url in log.console_errors] == [live.url + "/opensd/v1/txt2img"]  # the refused request
    assert log.failures == [(422, live.url + "/opensd/v1/txt2img")] and log.foreign() == []


def test_controlnets_name_their_family_and_a_misfit_is_flagged(browser, live):
    page, log = _open(browser, live, "controlnet")
    unit = "#panel-controlnet form[aria-label='ControlNet unit 1']"
    labels = page.eval_on_selector_all(f"{unit} select[name=model] option", "els => els.map(e => e.textContent)")
    assert any(label.startswith(QWEN_CN.removesuffix(".safetensors")) and label.endswith("· Qwen-Image") for label in labels)
    assert any(label.startswith(Z_CN.removesuffix(".safetensors")) and label.endswith("· Z-Image") for label in labels)
    page.set_input_files(f"{unit} input[type=file]", files=files(("hint", (120, 120, 120))))
    page.wait_for_selector(f"{unit} .drop img")
    z_value = next(v for v in page.eval_on_selector_all(f"{unit} select[name=model] option", "els => els.map(e => e.value)")
                   if v.startswith(Z_CN.removesuffix(".safetensors")))
    page.select_option(f"{unit} select[name=module]", "none")
    page.select_option(f"{unit} select[name=union_control_type]", "Depth")  # as for an SD union ControlNet
    page.select_option(f"{unit} select[name=model]", z_value)
    assert page.inner_text(f"{unit} .cn-family").startswith("Made for Z-Image models: only those take it. It reads "
                                                            "the map as it is: no control type.")
    assert page.is_disabled(f"{unit} select[name=union_control_type]")  # the server refuses one for it
    assert page.input_value(f"{unit} select[name=union_control_type]") == "Unknown"

    page.click("#tab-generate")
    page.wait_for_selector(f"{G} form select[name=model] option", state="attached")
    page.select_option(f"{G} select[name=model]", Z_IMAGE)
    assert not page.is_visible(f"{G} .cn-misfit")
    page.select_option(f"{G} select[name=model]", EDIT_PLUS)
    assert page.inner_text(f"{G} .cn-misfit").startswith(
        "Unit 1's ControlNet is made for Z-Image models, not Qwen-Image: the server refuses it.")
    _small(page)
    job = submit_and_wait(page, live)
    assert job.status == "failed"
    assert job.payload["request"]["alwayson_scripts"]["controlnet"]["args"][0]["union_control_type"] == "Unknown"
    status = page.locator(f"{G} .progress-card [role=status].error")
    status.wait_for(timeout=30_000)
    assert "is a Z-Image ControlNet" in status.inner_text() and "the loaded model is not Z-Image" in status.inner_text()
    page.context.close()
    assert log.console_errors == [] and log.failures == [] and log.foreign() == []


def test_an_inpainting_controlnet_uses_the_inpaint_tabs_mask_and_says_so(browser, live):
    """Z-Image Fun 2.1 takes a mask (the InstantX Qwen-Image Union does not): its unit says that Inpaint's mask
    reaches it, the Inpaint form's ControlNet note too, and the inpainting request runs with it."""
    from test_ui_canvas_browser import DONE, finished_job, job_ids, source_png, to_screen, upload
    page, log = _open(browser, live, "controlnet")
    unit = "#panel-controlnet form[aria-label='ControlNet unit 1']"
    page.set_input_files(f"{unit} input[type=file]", files=files(("hint", (120, 120, 120))))
    page.wait_for_selector(f"{unit} .drop img")
    values = page.eval_on_selector_all(f"{unit} select[name=model] option", "els => els.map(e => e.value)")
    page.select_option(f"{unit} select[name=module]", "none")
    page.select_option(f"{unit} select[name=model]", next(v for v in values if v.startswith(QWEN_CN.removesuffix(".safetensors"))))
    assert "mask" not in page.inner_text(f"{unit} .cn-family")
    page.select_option(f"{unit} select[name=model]", next(v for v in values if v.startswith(Z_CN.removesuffix(".safetensors"))))
    assert "It inpaints from a mask: in Inpaint it uses the Inpaint tab's mask (a Z-Image Fun ControlNet also its " \
           "image, as the image to inpaint); elsewhere it runs without one." in page.inner_text(f"{unit} .cn-family")

    panel = "#panel-inpaint"
    page.click("#tab-inpaint")
    page.wait_for_selector(f"{panel} form select[name=model] option", state="attached")
    page.select_option(f"{panel} select[name=model]", Z_IMAGE)
    upload(page, panel, source_png())
    assert "unit 1 (none, uses the Inpaint tab's mask)" in page.inner_text(f"{panel} .controlnet-note")
    page.mouse.move(*to_screen(page, panel, 20, 30))
    page.mouse.down()
    page.mouse.move(*to_screen(page, panel, 44, 30), steps=8)
    page.mouse.up()
    for name, value in (("steps", "2"), ("cfg_scale", "1"), ("seed", "3")):
        page.fill(f"{panel} input[name={name}]", value)
    before = job_ids(live)
    page.click(f"{panel} button[type=submit]")
    job = finished_job(live, before)
    assert job.status == DONE, job.error
    request = job.payload["request"]
    assert request["mask"] and "mask" not in request["alwayson_scripts"]["controlnet"]["args"][0]
    page.context.close()
    assert log.console_errors == [] and log.failures == [] and log.foreign() == []


@pytest.mark.parametrize("name,cfg,steps,side", [(Z_IMAGE, "1", "8", "1024"), (FLUX2_DEV, "1", "50", "1024"),
                                                 (EDIT_PLUS, "4", "50", "1328")])
def test_family_defaults_follow_the_model(browser, live, name, cfg, steps, side):
    page, log = _open(browser, live)
    page.select_option(f"{G} select[name=model]", SD)
    page.select_option(f"{G} select[name=scheduler]", "karras")
    page.select_option(f"{G} select[name=model]", name)
    got = [page.input_value(f"{G} input[name={n}]") for n in ("cfg_scale", "steps", "width", "height")]
    assert got == [cfg, steps, side, side]
    assert page.input_value(f"{G} select[name=scheduler]") == ""  # Automatic: the family's own schedule
    page.context.close()
    assert log.console_errors == []


def test_models_tab_names_the_dit_checkpoints_families(browser, live):
    page, log = open_page(browser, live.url + "/#models")
    row = "#panel-models li[data-name='{}'] .pill.family"
    page.wait_for_selector(row.format(SD))
    assert [page.inner_text(row.format(n)) for n in (EDIT_PLUS, Z_IMAGE, FLUX2_DEV)] == ["Qwen-Image", "Z-Image", "FLUX.2"]
    assert "1328 px, flow" in page.inner_text(f"#panel-models li[data-name='{EDIT_PLUS}']")
    page.context.close()
    assert log.console_errors == []


def test_lora_picker_names_the_family_and_flags_a_misfit(browser, live):
    page, log = _open(browser, live)
    lora = f"{G} .picker-list button:has-text('{QWEN_LORA}')"
    page.select_option(f"{G} select[name=model]", Z_IMAGE)
    assert page.text_content(lora) == f"{QWEN_LORA} · Qwen-Image (not for this model)"  # in the closed picker
    page.select_option(f"{G} select[name=model]", EDIT_PLUS)
    assert page.text_content(lora) == f"{QWEN_LORA} · Qwen-Image"
    page.click(f"{G} summary:has-text('LoRA (1)')")
    page.click(lora)
    assert f"<lora:{QWEN_LORA}:1>" in page.input_value(f"{G} textarea[name=prompt]")
    page.context.close()
    assert log.console_errors == []
