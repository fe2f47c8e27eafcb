"""GET /opensd/v1/checkpoints tells, from each file's header alone, what a DiT model is (its family,
native resolution) and what its family recommends generating it with (CFG, steps, Flux.1 dev's
distilled guidance, the family's schedule), as it tells a Stable Diffusion checkpoint's; the pipeline's
defaults for settings a request leaves unset are the same numbers."""
from __future__ import annotations

import os

import pytest
from fastapi.testclient import TestClient
from server_live import BASE

from opensd.library.synthetic import write_random_checkpoint
from opensd.server.app import create_app
from opensd.server.settings import Settings
from z_image_fixtures import z_image_models

NET = "z_image_turbo_bf16.safetensors"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from dit_fixtures import META_FLUX, flux_parts, load_tiny, write_split_files

    tmp = tmp_path_factory.mktemp("recommended")
    models, pipe = z_image_models(tmp, seed=3)
    meta = {k: v for k, v in META_FLUX.items() if k != "modelspec.resolution"}  # the family's own 1024
    for variant in ("dev", "schnell"):
        flux = load_tiny(tmp / variant, "flux", flux_parts(variant))
        write_split_files(models, flux.model, f"flux1-{variant}", meta)
    (models / "checkpoints").mkdir()
    write_random_checkpoint(models / "checkpoints" / "tiny_sd.safetensors")
    return models, pipe, tmp


def test_checkpoints_report_dit_family_resolution_and_recommendation(env, monkeypatch):
    models, _, tmp = env
    with TestClient(create_app(Settings(models_dir=models, outputs_dir=tmp / "out")), base_url=BASE) as client:
        items = {c["name"]: c for c in client.get("/opensd/v1/checkpoints").json()["items"]}
    z, dev, schnell, sd = (items[n] for n in (NET, "flux1-dev.safetensors", "flux1-schnell.safetensors",
                                              "tiny_sd.safetensors"))
    assert (z["family"], z["resolution"], z["prediction"], z["schedule"]) == ("z_image", 1024, "flow", "flow")
    assert z["recommended"] == {"label": "Z-Image", "cfg_scale": 1.0, "steps": 8, "distilled_guidance": None,
                                "scheduler": "simple"}
    assert (dev["family"], dev["resolution"]) == ("flux", 1024)
    assert dev["recommended"] == {"label": "Flux.1", "cfg_scale": 1.0, "steps": 20, "distilled_guidance": 3.5,
                                  "scheduler": "simple"}
    assert (schnell["family"], schnell["resolution"]) == ("flux", 1024)
    assert schnell["recommended"] == {"label": "Flux.1", "cfg_scale": 1.0, "steps": 4, "distilled_guidance": None,
                                      "scheduler": "simple"}
    # a Stable Diffusion checkpoint reports what it did, and A1111's defaults as its recommendation
    assert (sd["family"], sd["resolution"], sd["prediction"], sd["schedule"]) == ("small", 64, "eps", "discrete")
    assert sd["recommended"] == {"label": "Stable Diffusion 1.x/2.x/XL", "cfg_scale": 7.0, "steps": 20,
                                 "distilled_guidance": None, "scheduler": None}


def test_the_answer_comes_from_the_header_and_is_kept_by_file_stamp(env, monkeypatch):
    from opensd.checkpoints import files
    from opensd.library import model_info

    models, _, _ = env
    path = models / "diffusion_models" / NET
    first = model_info.recommended(path)
    monkeypatch.setattr(files, "read_state_dict", lambda *a, **k: pytest.fail("a tensor was read"))
    reads = []
    real = model_info.read_safetensors_header
    monkeypatch.setattr(model_info, "read_safetensors_header", lambda p: reads.append(p) or real(p))
    assert model_info.recommended(path) == first and model_info.model_config(path).family == "z_image"
    assert reads == []  # unchanged file: remembered
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # a new stamp: read again
    assert model_info.recommended(path) == first and reads == [path]


def test_unset_steps_and_cfg_take_the_family_defaults(env):
    _, pipe, _ = env
    image = pipe.txt2img("a cat", width=64, height=64, seed=1)[0]
    assert (image.info["params"].steps, image.info["params"].cfg) == (8, 1.0)
    image = pipe.txt2img("a cat", width=64, height=64, seed=1, steps=2, cfg=3.0)[0]
    assert (image.info["params"].steps, image.info["params"].cfg) == (2, 3.0)


def test_a1111_requests_leaving_cfg_and_steps_unset_get_the_family_defaults(env):
    import json

    models, _, tmp = env
    with TestClient(create_app(Settings(models_dir=models, outputs_dir=tmp / "out")), base_url=BASE) as client:
        def info(model, **given):
            r = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "width": 64, "height": 64, "seed": 1,
                                                       "override_settings": {"sd_model_checkpoint": model}, **given})
            assert r.status_code == 200, r.text
            out = json.loads(r.json()["info"])
            return out["cfg_scale"], out["steps"], "CFG scale: {:g}, ".format(out["cfg_scale"]) in out["infotexts"][0]

        assert info(NET) == (1.0, 8, True)
        assert info(NET, cfg_scale=2.5, steps=3) == (2.5, 3, True)
        assert info("tiny_sd.safetensors", steps=2) == (7.0, 2, True)  # A1111's defaults where the family sets none
