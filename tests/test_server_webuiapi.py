"""The real `webuiapi` client, used as it is, against a live `opensd serve` app on a free port."""
from __future__ import annotations

import base64
import io
import threading
import time

import pytest
import webuiapi
from PIL import Image
from server_live import LiveServer, models_dir, write_lora

from opensd.server.settings import Settings


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    models = models_dir(root)
    write_lora(models / "Lora" / "style.safetensors")
    settings = Settings(models_dir=models, outputs_dir=root / "outputs")
    with LiveServer(settings) as server:
        yield server


@pytest.fixture(scope="module")
def api(live):
    return webuiapi.WebUIApi(host="127.0.0.1", port=live.port, sampler="Euler a", steps=3)


def test_txt2img(api, live):
    r = api.txt2img(prompt="a red apple", negative_prompt="blurry", width=64, height=64, seed=7, batch_size=2,
                    cfg_scale=5, restore_faces=True)
    assert len(r.images) == 2 and r.images[0].size == (64, 64)
    assert r.info["all_seeds"] == [7, 8] and r.info["sampler_name"] == "Euler a"
    assert r.info["sd_model_name"] == "opensd-emoji" and r.info["sd_model_hash"]
    assert "restore_faces" in r.info["unsupported_fields"]
    assert r.info["infotexts"][0].startswith("a red apple\nNegative prompt: blurry\nSteps: 3, Sampler: Euler a")
    assert r.parameters["prompt"] == "a red apple" and r.parameters["steps"] == 3
    assert r.images[0].info["parameters"] == r.info["infotexts"][0]
    assert len(list((live.settings.outputs_dir / "txt2img-images").glob("*.png"))) >= 2  # A1111's folder


def test_img2img_with_mask_keeps_unmasked_pixels(api):
    init = Image.new("RGB", (64, 64), (200, 30, 30))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 24, 64))  # repaint the left part only
    r = api.img2img(images=[init], mask_image=mask, prompt="a blue sky", width=64, height=64, seed=3,
                    denoising_strength=0.9, inpainting_fill=1, inpaint_full_res=False, mask_blur=2)
    out = r.images[0].convert("RGB")
    assert out.size == (64, 64)
    assert out.getpixel((60, 32)) == (200, 30, 30)       # far from the mask: the original pixel
    assert out.getpixel((4, 32)) != (200, 30, 30)        # inside the mask: repainted
    assert r.info["denoising_strength"] == 0.9
    assert r.parameters["init_images"] is None


def test_options_switch_model(api):
    titles = api.util_get_model_names()
    assert any(t.startswith("tiny.safetensors") for t in titles)
    before = api.get_options()["sd_model_checkpoint"]
    assert before.startswith("opensd-emoji.safetensors")
    api.util_set_model("tiny")
    try:
        assert api.get_options()["sd_model_checkpoint"].startswith("tiny.safetensors")
        r = api.txt2img(prompt="noise", width=64, height=64, steps=2, seed=1)
        assert r.info["sd_model_name"] == "tiny"
    finally:
        api.set_options({"sd_model_checkpoint": before})
    assert api.get_options()["sd_model_checkpoint"] == before


def test_png_info_round_trip(api):
    r = api.txt2img(prompt="a green frog", width=64, height=64, steps=2, seed=11)
    info = api.png_info(r.images[0])
    assert "a green frog" in info.info and "Seed: 11" in info.info
    assert info.json["parameters"]["Seed"] == "11"


def test_interrupt_stops_a_running_job(api):
    out = {}

    def long_job():
        t = time.time()
        out["r"] = api.txt2img(prompt="slow", width=64, height=64, steps=400, seed=1)
        out["t"] = time.time() - t

    th = threading.Thread(target=long_job)
    th.start()
    deadline = time.time() + 60
    while time.time() < deadline:
        p = api.get_progress()
        if p["state"]["sampling_step"] >= 2:
            break
        time.sleep(0.05)
    assert p["state"]["job_count"] == 1 and p["state"]["sampling_steps"] == 400 and 0 < p["progress"] < 1
    with Image.open(io.BytesIO(base64.b64decode(p["current_image"]))) as preview:  # live latent preview
        assert preview.format == "PNG" and preview.size[0] > 0
    api.interrupt()
    th.join(60)
    assert not th.is_alive()
    assert out["r"].info["interrupted"] is True and out["r"].images == []
    assert api.get_progress()["state"]["job_count"] == 0


def test_hires_fix(api):
    r = api.txt2img(prompt="a dog", width=64, height=64, steps=2, seed=2, enable_hr=True, hr_scale=2,
                    hr_second_pass_steps=1, hr_upscaler="Latent", denoising_strength=0.5)
    assert r.images[0].size == (128, 128)
    assert "Hires upscale: 2" in r.info["infotexts"][0] and "Denoising strength: 0.5" in r.info["infotexts"][0]
    r = api.txt2img(prompt="a dog", width=64, height=64, steps=1, seed=2, enable_hr=True, hr_scale=1.5,
                    hr_upscaler="Latent (bicubic antialiased)")
    assert r.images[0].size == (96, 96) and "hr_upscaler" not in r.info["unsupported_fields"]
    assert "Hires upscaler: Latent (bicubic antialiased)" in r.info["infotexts"][0]
    with pytest.raises(RuntimeError) as e:  # an upscaler that is not installed: refused, as A1111 does
        api.txt2img(prompt="a dog", width=64, height=64, steps=1, enable_hr=True, hr_upscaler="R-ESRGAN 4x+")
    assert e.value.args[0] == 422 and "hr_upscaler: no upscaler named 'R-ESRGAN 4x+'" in e.value.args[1]


def test_skip_moves_to_the_next_iteration(api):
    out = {}
    th = threading.Thread(target=lambda: out.update(r=api.txt2img(prompt="x", width=64, height=64, steps=30,
                                                                  n_iter=2, seed=9)))
    th.start()
    deadline = time.time() + 60
    while time.time() < deadline and api.get_progress()["state"]["sampling_step"] < 2:
        time.sleep(0.02)
    api.skip()
    th.join(60)
    assert len(out["r"].images) == 1 and out["r"].info["all_seeds"] == [10]  # the first iteration was skipped
    assert out["r"].info["interrupted"] is False


def test_listings(api):
    assert "Euler a" in api.util_get_sampler_names()
    assert "karras" in api.util_get_scheduler_names()
    loras = api.get_loras()
    assert [x["name"] for x in loras] == ["style"]
    assert set(loras[0]) == {"name", "alias", "path", "metadata"}  # A1111's keys (Lora extension), no others


def test_prompt_lora_applies_and_is_recorded(api):
    tiny = {"sd_model_checkpoint": "tiny"}
    base = api.txt2img(prompt="noise", width=64, height=64, steps=2, seed=4, override_settings=tiny)
    with_lora = api.txt2img(prompt="noise <lora:style:1>", width=64, height=64, steps=2, seed=4,
                            override_settings=tiny)
    assert 'Lora hashes: "style: ' in with_lora.info["infotexts"][0]
    assert base.images[0].tobytes() != with_lora.images[0].tobytes()
    assert with_lora.info["sd_model_name"] == "tiny"
    assert "ram" in api.get_memory()
