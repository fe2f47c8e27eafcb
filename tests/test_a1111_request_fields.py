"""A1111 request fields and settings that shape one generation: `infotext` (its parameters fill the
fields a request leaves unset), `firstpass_image` (hires fix of an image already made), separate
`mask_blur_x` / `mask_blur_y` (A1111's 1-D Gaussian kernels) and the `enable_pnginfo` setting
(images without their parameters)."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import requests
from PIL import Image
from server_live import LiveServer

from opensd.pipeline.images import prepare_mask
from opensd.pipeline.infotext import parse_infotext, read_infotext
from opensd.server.settings import Settings

BODY = {"prompt": "red heart, noto emoji style", "steps": 3, "width": 64, "height": 64, "seed": 5,
        "sampler_name": "Euler", "cfg_scale": 5}


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    with LiveServer(Settings(outputs_dir=tmp_path_factory.mktemp("fields") / "out")) as server:
        yield server


def post(live, path="txt2img", **kw):
    return requests.post(f"{live.url}/sdapi/v1/{path}", json=kw, timeout=120)


def ok(r) -> tuple[list[np.ndarray], dict]:
    assert r.status_code == 200, r.text
    body = r.json()
    return [pixels(b) for b in body["images"]], json.loads(body["info"])


def png(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def pixels(b64: str) -> np.ndarray:
    return np.asarray(png(b64).convert("RGB"))


def test_infotext_fills_what_the_request_leaves_unset(live):
    text = ("a red heart\nNegative prompt: blurry\nSteps: 4, Sampler: DPM++ 2M, Schedule type: Karras, "
            "CFG scale: 6, Seed: 11, Size: 64x64")
    images, info = ok(post(live, infotext=text, steps=2))
    assert (info["prompt"], info["negative_prompt"], info["seed"], info["steps"], info["sampler_name"],
            info["cfg_scale"]) == ("a red heart", "blurry", 11, 2, "DPM++ 2M", 6.0)  # steps: the request's
    assert "infotext" not in info["unsupported_fields"]
    same, _ = ok(post(live, prompt="a red heart", negative_prompt="blurry", steps=2, sampler_name="DPM++ 2M",
                      scheduler="Karras", cfg_scale=6, seed=11, width=64, height=64))
    assert np.array_equal(images[0], same[0])


def test_infotext_values_that_do_not_apply_are_said_or_refused(live):
    _, info = ok(post(live, **BODY, infotext="x\nSteps: 3, Sampler: Euler, CFG scale: lots, Seed: 3"))
    assert "infotext: CFG scale: 'lots' is not a valid value; not applied" in info["opensd_warnings"]
    assert info["cfg_scale"] == BODY["cfg_scale"]
    r = post(live, prompt="x", steps=1, width=64, infotext="x\nSteps: 3, Sampler: Euler, Size: 64x999999")
    assert r.status_code == 422 and "infotext: height" in r.text


def test_firstpass_image_is_the_first_pass_of_a_hires_fix(live):
    hires = dict(BODY, enable_hr=True, hr_upscaler="Lanczos", hr_scale=1.5, denoising_strength=0.5)
    whole, _ = ok(post(live, **hires))
    first = post(live, **BODY).json()["images"][0]
    given, info = ok(post(live, **hires, firstpass_image=first))
    assert given[0].shape == (96, 96, 3)
    assert np.array_equal(whole[0], given[0])  # the image the first pass makes, handed in: the same result
    other = post(live, **dict(BODY, seed=6)).json()["images"][0]
    assert not np.array_equal(ok(post(live, **hires, firstpass_image=other))[0][0], whole[0])
    latent, _ = ok(post(live, **dict(hires, hr_upscaler="Latent"), firstpass_image=other))
    assert latent[0].shape == (96, 96, 3) and "firstpass_image" not in info["unsupported_fields"]
    assert post(live, **hires, firstpass_image="bm90IGFuIGltYWdl").status_code == 422


def _a1111_blur_rows(a: np.ndarray, sigma: float) -> np.ndarray:
    """A1111's cv2.GaussianBlur(mask, (k, 1), sigma) written out: a normalised 1-D Gaussian of
    2 * int(2.5 sigma + 0.5) + 1 taps along each row, edges mirrored without repeating the edge."""
    r = int(2.5 * sigma + 0.5)
    x = np.arange(-r, r + 1)
    kernel = np.exp(-x ** 2 / (2 * sigma ** 2))
    kernel /= kernel.sum()
    padded = np.pad(a.astype(np.float64), ((0, 0), (r, r)), mode="reflect")
    return np.stack([np.convolve(row, kernel, mode="valid") for row in padded])


def test_mask_blur_x_and_y_are_a1111s_separate_kernels():
    mask = np.zeros((40, 48), np.uint8)
    mask[10:30, 12:36] = 255
    image = Image.fromarray(mask)
    across = np.asarray(prepare_mask(image, (48, 40), 3, blur_y=0), dtype=np.int16)
    assert np.abs(across - _a1111_blur_rows(mask, 3)).max() <= 1
    down = np.asarray(prepare_mask(image, (48, 40), 0, blur_y=5), dtype=np.int16)
    assert np.abs(down - _a1111_blur_rows(mask.T, 5).T).max() <= 1
    both = np.asarray(prepare_mask(image, (48, 40), 4), dtype=np.int16)
    assert np.abs(both - _a1111_blur_rows(_a1111_blur_rows(mask, 4).round().T, 4).T).max() <= 1


def test_mask_blur_x_and_y_through_the_api(live):
    init = post(live, **BODY).json()["images"][0]
    canvas = Image.new("L", (64, 64), 0)
    canvas.paste(255, (16, 16, 48, 48))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    body = dict(BODY, init_images=[init], mask=base64.b64encode(buf.getvalue()).decode(), denoising_strength=0.8)
    split, info = ok(post(live, "img2img", **body, mask_blur_x=12, mask_blur_y=0))
    even, even_info = ok(post(live, "img2img", **body, mask_blur_x=4, mask_blur_y=4))
    assert not np.array_equal(split[0], even[0])
    assert "mask_blur_x" not in info["unsupported_fields"]
    assert "Mask blur" not in parse_infotext(info["infotexts"][0])[2]  # A1111 writes one blur or none
    assert parse_infotext(even_info["infotexts"][0])[2]["Mask blur"] == "4"


def test_enable_pnginfo_off_leaves_the_parameters_out_of_the_files(live):
    r = post(live, **BODY, override_settings={"enable_pnginfo": False})
    images, info = ok(r)
    assert "parameters" not in png(r.json()["images"][0]).info and info["infotexts"][0].startswith(BODY["prompt"])
    assert "enable_pnginfo" not in " ".join(info["unsupported_fields"])
    saved = sorted(live.state.settings.outputs_dir.rglob("*.png"), key=lambda p: p.stat().st_mtime)[-1]
    assert read_infotext(saved) is None
    with_info = post(live, **BODY, override_settings={"samples_format": "webp"})
    assert read_infotext(io.BytesIO(base64.b64decode(with_info.json()["images"][0]))).startswith(BODY["prompt"])
    none = post(live, **BODY, override_settings={"samples_format": "jpg", "enable_pnginfo": False})
    assert read_infotext(io.BytesIO(base64.b64decode(none.json()["images"][0]))) is None


def test_a_hires_prompt_naming_a_lora_that_is_not_there_is_refused(live):
    r = post(live, **BODY, enable_hr=True, hr_scale=1.5, hr_prompt="a heart <lora:nowhere:1>")
    assert r.status_code == 422 and "hr_prompt: <lora:nowhere>" in r.text


def test_firstphase_size_is_the_images_size(live):
    images, info = ok(post(live, **dict(BODY, width=128, height=128), firstphase_width=64, firstphase_height=72))
    assert images[0].shape == (72, 64, 3) and (info["width"], info["height"]) == (64, 72)
    assert "Size: 64x72" in info["infotexts"][0] and info["unsupported_fields"] == []
