"""Screenshots of the web UI's tabs, light and dark, desktop (1280x800) and phone (360x740), into
docs/ui/ as WebP. Serves the built-in model from a temporary folder (with two prompt styles), makes a few
images so the gallery and PNG info have content, then photographs every tab registered in the UI (later
tabs included), and Generate's X/Y/Z plot with its grid (generate-xyz-*).

    python scripts/ui_screenshots.py [--out docs/ui]
"""
from __future__ import annotations

import argparse
import base64
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the UI tests' live server and browser helpers
import httpx  # noqa: E402
from browser_live import launch  # noqa: E402
from PIL import Image  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402
from server_live import LiveServer  # noqa: E402
from ui_browser import DESKTOP, PHONE, drop_file  # noqa: E402

from opensd.server.settings import Settings  # noqa: E402

PROMPTS = ["red heart", "smiling face with sunglasses", "thumbs up", "glowing star", "cat face", "sun with face",
           "green apple", "rocket"]
SHOWN = "red heart, (noto emoji style:1.2), [glossy:matte:0.5] BREAK white background"
STYLES = 'name,prompt,negative_prompt\nsticker,"{prompt}, sticker, white outline",blurry\nflat,"flat colors",\n'


def make_images(url: str) -> bytes:
    last = b""
    for i, prompt in enumerate(PROMPTS):
        r = httpx.post(url + "/sdapi/v1/txt2img", timeout=300, json={
            "prompt": f"{prompt}, noto emoji style", "steps": 20, "width": 64, "height": 64, "seed": 10 + i})
        r.raise_for_status()
        last = base64.b64decode(r.json()["images"][0])
    return last


def make_training_run(url: str) -> None:
    """A dataset of three gallery images with captions and one finished short LoRA run on it, so the Train
    tab shows its loss chart and samples and the Models tab lists a LoRA."""
    httpx.post(url + "/opensd/v1/datasets", json={"name": "emoji"}).raise_for_status()
    items = httpx.get(url + "/opensd/v1/gallery", params={"limit": 3}).json()["items"]
    files = [("files", (f"emoji{i}.png", httpx.get(url + item["image_url"]).content, "image/png"))
             for i, item in enumerate(items)]
    httpx.post(url + "/opensd/v1/datasets/emoji/images", files=files, timeout=60).raise_for_status()
    for (_, (name, _, _)), item in zip(files, items):
        httpx.put(f"{url}/opensd/v1/datasets/emoji/images/{name}/caption",
                  json={"caption": f"zq style, {item['prompt'].split(',')[0]}"}).raise_for_status()
    queued = httpx.post(url + "/opensd/v1/train", json={
        "dataset": "emoji", "model": "opensd-emoji.safetensors", "output": "zq-style", "steps": 24, "lr": 2e-3,
        "rank": 4, "sample_every": 8, "sample_steps": 20, "sample_prompt": "zq style, rocket"})
    job = queued.raise_for_status().json()["job_id"]
    while httpx.get(f"{url}/opensd/v1/train/jobs/{job}").json()["status"] in ("queued", "running"):
        time.sleep(0.5)


def fill_canvas(page, tab: str, png: bytes) -> None:
    """img2img/Inpaint: the image on the canvas; Inpaint also gets a painted stroke and its result."""
    panel = f"#panel-{tab}"
    page.wait_for_selector(f"{panel} form select[name=model] option", state="attached")
    page.set_input_files(f"{panel} .canvas-editor input[type=file]",
                         files=[{"name": "rocket.png", "mimeType": "image/png", "buffer": png}])
    page.fill(f"{panel} textarea[name=prompt]", "rocket, noto emoji style")
    page.wait_for_function(f"() => document.querySelector('{panel} canvas.canvas-image').width > 1")
    if tab != "inpaint":
        return
    page.locator(f"{panel} .canvas-view").scroll_into_view_if_needed()
    box = page.locator(f"{panel} canvas.canvas-mask").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.35)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.6, steps=12)
    page.mouse.up()
    page.fill(f"{panel} input[name=steps]", "20")
    page.click(f"{panel} button[type=submit]")
    page.wait_for_selector(f"{panel} .result-main img", timeout=120_000)
    page.wait_for_function(f"() => document.querySelector('{panel} .result-main img').complete")


def fill_controlnet(page, png: bytes) -> None:
    unit = "#panel-controlnet form[aria-label='ControlNet unit 1']"
    page.wait_for_selector(f"{unit} select[name=module]")
    page.set_input_files(f"{unit} input[type=file]", files=[{"name": "rocket.png", "mimeType": "image/png",
                                                              "buffer": png}])
    page.wait_for_selector(f"{unit} .cn-map img")


def fill_xyz(page) -> None:
    """Generate with the X/Y/Z plot: steps across, samplers down, a style active."""
    page.fill("#panel-generate textarea[name=prompt]", "{red|green} heart, __emoji__ style")
    page.fill("#panel-generate input[name=seed]", "7")
    page.click("#panel-generate summary:has-text('Styles')")
    page.click("#panel-generate [aria-label='Styles to apply'] button:text-is('sticker')")
    page.select_option("#panel-generate select[name=script]", label="X/Y/Z plot")
    page.select_option("#panel-generate select[name=xyz_x_type]", label="Steps")
    page.fill("#panel-generate input[name=xyz_x_values]", "10, 20")
    page.select_option("#panel-generate select[name=xyz_y_type]", label="Sampler")
    for sampler in ("Euler a", "DPM++ 2M"):
        page.click(f"#panel-generate [aria-label='Y values to plot'] button:text-is('{sampler}')")
    page.click("#panel-generate button[type=submit]")
    page.wait_for_selector("#panel-generate .results button.grid-thumb", timeout=120_000)
    page.wait_for_function("() => document.querySelector('#panel-generate .result-main img').complete")
    # the whole form and its grid in one picture: a viewport as tall as the page
    page.set_viewport_size({"width": 1280, "height": page.evaluate("document.documentElement.scrollHeight")})
    page.evaluate("window.scrollTo(0, 0)")


def fill_extras(page, png: bytes) -> None:
    page.wait_for_selector("#panel-extras select[name=upscaler_1] option", state="attached")
    drop_file(page, "#panel-extras .extras-drop", png, "rocket.png")
    page.select_option("#panel-extras select[name=upscaler_1]", "Lanczos")
    page.fill("#panel-extras input[name=upscaling_resize]", "4")
    page.click("#panel-extras button[type=submit]")
    page.wait_for_function("() => document.querySelector('#panel-extras .result-main img')?.complete")


def shoot(browser, live: LiveServer, out: Path, theme: str, device: str, png: bytes) -> None:
    context = dict(DESKTOP if device == "desktop" else PHONE, color_scheme=theme)
    page = browser.new_context(**context).new_page()
    page.goto(live.url + "/#generate")
    page.wait_for_selector("#panel-generate form select[name=model] option", state="attached")
    tabs = [t.get_attribute("id").removeprefix("tab-") for t in page.locator("#tabs [role=tab]").all()]
    for tab in tabs:
        page.click(f"#tab-{tab}")
        page.wait_for_selector(f"#panel-{tab} > *", state="attached")
        if tab == "generate":
            page.fill("#panel-generate textarea[name=prompt]", SHOWN)
            page.fill("#panel-generate input[name=seed]", "7")
            page.fill("#panel-generate input[name=steps]", "20")
            page.click("#panel-generate button[type=submit]")
            page.wait_for_selector("#panel-generate .result-main img", timeout=120_000)
            page.wait_for_function("() => document.querySelector('#panel-generate .result-main img').complete")
        elif tab in ("img2img", "inpaint"):
            fill_canvas(page, tab, png)
        elif tab == "controlnet":
            fill_controlnet(page, png)
        elif tab == "extras":
            fill_extras(page, png)
        elif tab == "gallery":
            page.wait_for_function("() => [...document.querySelectorAll('#panel-gallery .thumbs img')]"
                                   ".every((i) => i.complete && i.naturalWidth)")
        elif tab == "queue":
            live.state.queue.stop()  # two jobs waiting, so the list has rows
            for prompt in ("thumbs up, noto emoji style", "rocket, noto emoji style"):
                httpx.post(live.url + "/opensd/v1/txt2img", json={"prompt": prompt, "steps": 20, "width": 64,
                                                                  "height": 64}).raise_for_status()
            page.wait_for_selector("#panel-queue li[data-status=queued] >> nth=1")
        elif tab == "models":
            page.wait_for_selector("#panel-models section[data-kind=loras] .hash code")
        elif tab == "train":
            page.wait_for_function("() => [...document.querySelectorAll('#panel-train img')].length > 3 && "
                                   "[...document.querySelectorAll('#panel-train img')].every((i) => i.complete)")
        elif tab == "pnginfo":
            page.wait_for_selector("#panel-pnginfo .drop")
            drop_file(page, "#panel-pnginfo .drop", png, "heart.png")
            page.wait_for_selector("#panel-pnginfo table.params")
        page.evaluate("window.scrollTo(0, 0)")
        page.wait_for_timeout(300)
        save(page, out / f"{tab}-{theme}-{device}.webp")
        if tab in ("generate", "inpaint"):  # keep the gallery the same in every screenshot
            forget_since(live, newest_id(live) - 1)
        if tab == "queue":
            httpx.post(live.url + "/opensd/v1/queue/clear", json={}).raise_for_status()
            live.state.queue.start()
    page.context.close()
    if device == "desktop":  # the X/Y/Z plot and its grid, in a page of its own (no ControlNet unit set)
        page = browser.new_context(**context).new_page()
        page.goto(live.url + "/#generate")
        page.wait_for_selector("#panel-generate select[name=script] option", state="attached")
        before = newest_id(live)
        fill_xyz(page)
        page.wait_for_timeout(300)
        save(page, out / f"generate-xyz-{theme}-{device}.webp")
        forget_since(live, before)  # the gallery stays as it was
        page.context.close()


def save(page, path: Path) -> None:
    shot = Image.open(io.BytesIO(page.screenshot()))  # WebP: a third of the PNG's size for the docs
    shot.convert("RGB").save(path, quality=90, method=6)


def newest_id(live: LiveServer) -> int:
    return httpx.get(live.url + "/opensd/v1/gallery", params={"limit": 1}).json()["items"][0]["id"]


def forget_since(live: LiveServer, last: int) -> None:
    """Delete the gallery images after image `last`, so the gallery is the same in every screenshot."""
    for item in httpx.get(live.url + "/opensd/v1/gallery", params={"limit": 48}).json()["items"]:
        if item["id"] > last:
            httpx.delete(f"{live.url}/opensd/v1/gallery/{item['id']}").raise_for_status()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "ui")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="opensd-ui-shots-"))
    try:
        (tmp / "styles.csv").write_text(STYLES)
        (tmp / "wildcards").mkdir()
        (tmp / "wildcards" / "emoji.txt").write_text("noto emoji\ntwemoji\n")
        settings = Settings(outputs_dir=tmp / "out", styles_file=tmp / "styles.csv", wildcards_dir=tmp / "wildcards")
        with LiveServer(settings) as live, sync_playwright() as p:
            png = make_images(live.url)
            make_training_run(live.url)
            browser = launch(p)
            for theme in ("light", "dark"):
                for device in ("desktop", "phone"):
                    shoot(browser, live, a.out, theme, device, png)
            browser.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"screenshots in {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
