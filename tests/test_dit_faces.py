"""SD3 and Flux from the faces people use, on tiny random models in an A1111/Forge models folder:
`opensd generate` with --shift and --guidance (Flux from Black Forest Labs' bare network file, its
VAE and text encoders found in VAE/ and text_encoder/), and the A1111 API with Forge's
distilled_cfg_scale, each the same image as the pipeline, with the parameters in the infotext."""
from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from server_live import BASE

from dit_fixtures import META_FLUX, META_SD3, flux_parts, load_tiny, sd3_parts, write_forge_folder, write_single_file
from opensd.cli import main
from opensd.pipeline.infotext import read_infotext
from opensd.server.app import create_app
from opensd.server.settings import Settings

SIZE = 64
COMMON = ["--steps", "2", "--seed", "3", "--width", str(SIZE), "--height", str(SIZE), "--precision", "fp32"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faces")
    models = tmp / "models"
    sd3 = load_tiny(tmp / "sd3", "sd3", sd3_parts())
    flux = load_tiny(tmp / "flux", "flux", flux_parts())
    write_single_file(models / "Stable-diffusion" / "sd3.safetensors", sd3.model, META_SD3)
    write_forge_folder(models, tmp / "comfy", flux.model, "flux1-dev", META_FLUX)
    return models, sd3, flux


def _pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(int)


def test_cli_generates_sd3_with_its_shift(env, tmp_path, capsys):
    models, sd3, _ = env
    out = tmp_path / "sd3.png"
    assert main(["generate", "a photo of a cat", "-m", str(models / "Stable-diffusion" / "sd3.safetensors"),
                 "--negative", "blurry", "--cfg", "4", "--shift", "2.5", *COMMON, "-o", str(out)]) == 0
    want = sd3.txt2img("a photo of a cat", "blurry", steps=2, seed=3, cfg=4, shift=2.5, width=SIZE, height=SIZE)[0]
    assert np.abs(_pixels(Image.open(out)) - _pixels(want)).max() <= 1
    assert "Shift: 2.5" in read_infotext(out) and "CFG scale: 4" in read_infotext(out)
    assert re.search(r"^opensd: peak memory \d+\.\d\d GiB \(RAM, resident\)$", capsys.readouterr().err, re.M)


def test_cli_and_a1111_api_generate_flux_from_a_forge_models_folder(env, tmp_path):
    models, _, flux = env
    out = tmp_path / "flux.png"
    assert main(["generate", "a photo of a cat", "-m", "flux1-dev", "--models-dir", str(models), "--guidance", "2",
                 *COMMON, "-o", str(out)]) == 0
    want = flux.txt2img("a photo of a cat", steps=2, seed=3, distilled_guidance=2.0, width=SIZE, height=SIZE)[0]
    assert np.abs(_pixels(Image.open(out)) - _pixels(want)).max() <= 1
    text = read_infotext(out)
    assert "Distilled CFG Scale: 2" in text and "CFG scale: 1" in text and "Schedule type: Simple" in text

    request = {"prompt": "a photo of a cat", "steps": 2, "seed": 3, "cfg_scale": 1, "distilled_cfg_scale": 2,
               "width": SIZE, "height": SIZE, "sampler_name": "Euler",
               "override_settings": {"sd_model_checkpoint": "flux1-dev.safetensors"}}
    with TestClient(create_app(Settings(models_dir=models, outputs_dir=tmp_path / "out")), base_url=BASE) as client:
        r = client.post("/sdapi/v1/txt2img", json=request)
    assert r.status_code == 200, r.text
    image = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))
    assert np.abs(_pixels(image) - _pixels(want)).max() <= 1
    info = json.loads(r.json()["info"])
    assert "Distilled CFG Scale: 2" in info["infotexts"][0]
    assert info["opensd_peak_memory"]["what"] == "RAM, resident" and info["opensd_peak_memory"]["bytes"] > 2 ** 24
