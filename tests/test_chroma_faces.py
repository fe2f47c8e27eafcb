"""Chroma from the faces people use, on a tiny random model in an A1111/Forge models folder (the
network alone in Stable-diffusion/, Flux's VAE in VAE/, T5-XXL in text_encoder/): `opensd generate`
and the A1111 API's txt2img with a negative prompt and real CFG give the pipeline's image, with the
parameters in the infotext; the default CFG is the family's."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from server_live import BASE

from dit_fixtures import META_FLUX, chroma_parts, load_tiny, write_forge_folder
from opensd.cli import main
from opensd.pipeline.infotext import read_infotext
from opensd.server.app import create_app
from opensd.server.settings import Settings

SIZE, PROMPT, NEGATIVE = 64, "a photo of a cat", "blurry"
COMMON = ["--steps", "2", "--seed", "3", "--width", str(SIZE), "--height", str(SIZE), "--precision", "fp32"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chromafaces")
    models = tmp / "models"
    chroma = load_tiny(tmp / "chroma", "chroma", chroma_parts())
    write_forge_folder(models, tmp / "comfy", chroma.model, "chroma", META_FLUX)
    return models, chroma


def _pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(int)


def test_cli_and_a1111_api_generate_chroma_from_a_forge_models_folder(env, tmp_path):
    models, chroma = env
    out = tmp_path / "chroma.png"
    assert main(["generate", PROMPT, "--negative", NEGATIVE, "-m", "chroma", "--models-dir", str(models),
                 *COMMON, "-o", str(out)]) == 0
    want = chroma.txt2img(PROMPT, NEGATIVE, steps=2, seed=3, width=SIZE, height=SIZE)[0]
    assert np.abs(_pixels(Image.open(out)) - _pixels(want)).max() <= 1
    text = read_infotext(out)
    assert f"CFG scale: {chroma.family.default_cfg:g}" in text and "Schedule type: Simple" in text
    assert "Distilled CFG" not in text
    assert not np.array_equal(_pixels(want), _pixels(chroma.txt2img(PROMPT, NEGATIVE, steps=2, seed=3, cfg=1.0,
                                                                    width=SIZE, height=SIZE)[0]))

    request = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "steps": 2, "seed": 3, "cfg_scale": 3,
               "width": SIZE, "height": SIZE, "sampler_name": "Euler", "scheduler": "Simple",
               "override_settings": {"sd_model_checkpoint": "chroma.safetensors"}}
    with TestClient(create_app(Settings(models_dir=models, outputs_dir=tmp_path / "out")), base_url=BASE) as client:
        r = client.post("/sdapi/v1/txt2img", json=request)
    assert r.status_code == 200, r.text
    image = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))
    want = chroma.txt2img(PROMPT, NEGATIVE, steps=2, seed=3, cfg=3.0, width=SIZE, height=SIZE)[0]
    assert np.abs(_pixels(image) - _pixels(want)).max() <= 1
    assert "CFG scale: 3" in json.loads(r.json()["info"])["infotexts"][0]
