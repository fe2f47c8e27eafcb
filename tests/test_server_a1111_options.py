"""A1111's settings over /sdapi/v1/options and override_settings, through the real `webuiapi`
client: the full set with A1111's defaults, type-checked, persisted across restarts, and the ones
that mean something here change the generation as they do in A1111."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import requests
import webuiapi
from fastapi.testclient import TestClient
from PIL import Image
from server_live import BASE, LiveServer, models_dir, write_lora

from opensd.library.synthetic import write_random_checkpoint
from opensd.pipeline.infotext import read_infotext
from opensd.server.app import create_app
from opensd.server.settings import Settings

TINY = {"sd_model_checkpoint": "tiny"}
# A1111 1.10's defaults for some settings clients read (modules/shared_options.py, Lora extension).
A1111_DEFAULTS = {"send_seed": True, "send_size": True, "samples_format": "png", "CLIP_stop_at_last_layers": 1,
                  "sd_vae": "Automatic", "eta_noise_seed_delta": 0, "eta_ancestral": 1.0, "eta_ddim": 0.0,
                  "s_noise": 1.0, "s_churn": 0.0, "jpeg_quality": 80, "sd_lora": "None",
                  "face_restoration_model": "CodeFormer", "quicksettings_list": ["sd_model_checkpoint"],
                  "show_progress_every_n_steps": 10, "img2img_fix_steps": False, "uni_pc_order": 3,
                  "extra_networks_default_multiplier": 1.0, "outdir_samples": "", "tiling": False}


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("opts")
    models = models_dir(root)
    write_lora(models / "Lora" / "style.safetensors")
    (models / "VAE").mkdir(exist_ok=True)
    write_random_checkpoint(models / "VAE" / "other.safetensors", seed=3)  # its VAE part serves as a VAE file
    with LiveServer(Settings(models_dir=models, outputs_dir=root / "outputs")) as server:
        yield server


@pytest.fixture(scope="module")
def api(live):
    return webuiapi.WebUIApi(host="127.0.0.1", port=live.port, sampler="Euler a", steps=2)


def gen(api, settings=None, **kw):
    args = dict(prompt="noise", width=64, height=64, seed=5, override_settings={**TINY, **(settings or {})})
    return api.txt2img(**{**args, **kw})


def pixels(result) -> np.ndarray:
    return np.asarray(result.image.convert("RGB"), dtype=np.int16)


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")


def test_options_are_a1111s_full_set_with_its_defaults(api):
    opts = api.get_options()
    assert len(opts) > 290
    assert {k: opts[k] for k in A1111_DEFAULTS} == A1111_DEFAULTS
    assert opts["sd_model_checkpoint"].startswith("opensd-emoji.safetensors")  # "[hash]" once it is hashed
    assert opts["randn_source"] == "CPU"  # what opensd does (A1111's name for it)
    assert opts["outdir_txt2img_samples"].endswith("txt2img-images")


def test_settings_persist_across_a_restart_and_read_back_as_set(tmp_path):
    settings = {"send_seed": False, "samples_filename_pattern": "[seed]-[prompt_words]", "eta_noise_seed_delta": 31337,
                "hidden_tabs": ["Train"], "s_noise": 1, "upscaler_for_img2img": "Lanczos"}
    with TestClient(create_app(Settings(outputs_dir=tmp_path, start_worker=False)), base_url=BASE) as c:
        assert c.post("/sdapi/v1/options", json=settings).status_code == 200
        everything = c.get("/sdapi/v1/options").json()
        assert c.post("/sdapi/v1/options", json=everything).status_code == 200  # a client's read-modify-write
    assert json.loads((tmp_path / "opensd-options.json").read_text())["send_seed"] is False
    with TestClient(create_app(Settings(outputs_dir=tmp_path, start_worker=False)), base_url=BASE) as c:
        again = c.get("/sdapi/v1/options").json()
    assert {k: again[k] for k in settings} == settings
    assert again == everything


@pytest.mark.parametrize("body,named", [
    ({"send_seed": "yes"}, "send_seed"), ({"jpeg_quality": 1.5}, "jpeg_quality"),
    ({"jpeg_quality": 0}, "jpeg_quality"), ({"no_such_setting": 1}, "no_such_setting"),
    ({"samples_format": "gif"}, "samples_format"), ({"CLIP_stop_at_last_layers": True}, "CLIP_stop_at_last_layers"),
    ({"eta_ancestral": float("nan")}, "eta_ancestral"), ({"outdir_txt2img_samples": "/etc"}, "outdir_txt2img_samples"),
    ({"sd_vae": "nope.safetensors"}, "sd_vae"), ({"sd_lora": "nope"}, "sd_lora"), ({"randn_source": "NV"}, "randn_source"),
    ({"hidden_tabs": "Train"}, "hidden_tabs"),
])
def test_a_bad_setting_is_refused_naming_it_and_changes_nothing(live, body, named):
    before = webuiapi.WebUIApi(port=live.port).get_options()
    r = requests.post(f"{live.url}/sdapi/v1/options", data=json.dumps({"send_seed": False, **body}),
                      headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 422 and named in r.json()["detail"], r.text
    r = requests.post(f"{live.url}/sdapi/v1/txt2img", timeout=30, data=json.dumps(
        {"prompt": "x", "steps": 1, "width": 64, "height": 64, "override_settings": body}),
        headers={"content-type": "application/json"})
    assert r.status_code == 422 and f"override_settings.{named}" in r.json()["detail"], r.text
    assert webuiapi.WebUIApi(port=live.port).get_options() == before


def test_clip_skip_setting_is_the_default_clip_skip(api):
    plain = gen(api)
    api.set_options({"CLIP_stop_at_last_layers": 2})
    try:
        skipped = gen(api)
    finally:
        api.set_options({"CLIP_stop_at_last_layers": 1})
    assert "Clip skip: 2" in skipped.info["infotexts"][0] and "Clip skip" not in plain.info["infotexts"][0]
    assert (pixels(plain) != pixels(skipped)).any()
    assert (pixels(gen(api, {"CLIP_stop_at_last_layers": 2})) == pixels(skipped)).all()


def test_samples_format_and_output_folder(api, live):
    folder = live.settings.outputs_dir / "mine"
    r = gen(api, {"samples_format": "jpg", "jpeg_quality": 90, "outdir_txt2img_samples": str(folder)})
    assert r.image.format == "JPEG"  # returned in the saved format, as A1111 does
    saved = list(folder.glob("*.jpg"))
    assert len(saved) == 1 and read_infotext(saved[0]) == r.info["infotexts"][0]
    r = gen(api, {"samples_format": "webp", "outdir_samples": str(folder / "all")})
    assert r.image.format == "WEBP" and len(list((folder / "all").glob("*.webp"))) == 1


def test_eta_and_sigma_settings_drive_the_sampler(api):
    euler, ancestral = pixels(gen(api, sampler_name="Euler")), pixels(gen(api))
    assert (euler != ancestral).any()
    assert (pixels(gen(api, {"eta_ancestral": 0.0}, eta=None)) == euler).all()  # Euler a at eta 0 is Euler
    assert (pixels(gen(api, {"eta_ancestral": 0.0})) == ancestral).all()  # webuiapi's eta=1.0 wins, as in A1111
    assert (pixels(gen(api, eta=0.0)) == euler).all()
    assert (pixels(gen(api, {"s_churn": 1.0}, sampler_name="Euler")) != euler).any()
    assert (pixels(gen(api, s_churn=1.0, sampler_name="Euler")) != euler).any()  # a request value that is not "unset"
    assert (pixels(gen(api, {"s_noise": 0.5})) == ancestral).all()  # A1111 gives Euler a no s_noise
    assert "Eta: 0.5, " in gen(api, {"eta_ancestral": 0.5}, eta=None).info["infotexts"][0]
    assert "Sigma churn: 1, " in gen(api, {"s_churn": 1.0}, sampler_name="Euler").info["infotexts"][0]
    two_s = pixels(gen(api, sampler_name="DPM++ 2S a"))
    assert (pixels(gen(api, {"s_noise": 0.5}, sampler_name="DPM++ 2S a")) != two_s).any()


def test_eta_noise_seed_delta_changes_only_the_ancestral_noise(api):
    ensd = {"eta_noise_seed_delta": 31337}
    ancestral, shifted = gen(api), gen(api, ensd)
    assert (pixels(ancestral) != pixels(shifted)).any()
    assert (pixels(gen(api, ensd)) == pixels(shifted)).all()
    assert "ENSD: 31337" in shifted.info["infotexts"][0] and "ENSD" not in ancestral.info["infotexts"][0]
    assert (pixels(gen(api, ensd, sampler_name="Euler")) == pixels(gen(api, sampler_name="Euler"))).all()


def test_sd_lora_setting_adds_the_lora_to_every_prompt(api):
    r = gen(api, {"sd_lora": "style"})
    assert r.info["prompt"] == "noise<lora:style:1.0>"
    assert 'Lora hashes: "style: ' in r.info["infotexts"][0]
    assert (pixels(r) == pixels(gen(api, prompt="noise<lora:style:1.0>"))).all()
    r = requests.post(f"{api.baseurl}/txt2img", timeout=60, json={
        "prompt": "noise <lora:style:0.7>", "width": 64, "height": 64, "seed": 5, "steps": 2, "sampler_name": "Euler a",
        "override_settings": {**TINY, "sd_lora": "style"}, "disable_extra_networks": True})
    assert r.status_code == 200 and json.loads(r.json()["info"])["prompt"] == "noise "
    assert (np.asarray(decode(r.json()["images"][0])) == pixels(gen(api, prompt="noise "))).all()


def test_sd_vae_setting_replaces_the_vae(api):
    own = gen(api)
    other = gen(api, {"sd_vae": "other.safetensors"})
    assert (pixels(own) != pixels(other)).any()
    assert other.info["sd_vae_name"] == "other.safetensors" and "VAE: other.safetensors" in other.info["infotexts"][0]
    assert f"VAE hash: {other.info['sd_vae_hash']}, " in other.info["infotexts"][0]
    assert (pixels(gen(api, {"sd_vae": "None"})) == pixels(own)).all()
    assert (pixels(gen(api, {"randn_source": "GPU"})) == pixels(own)).all()  # on a CPU, GPU noise is CPU noise


def test_tiling_setting(api):
    tiled = pixels(gen(api, {"tiling": True}, tiling=None))  # webuiapi sends tiling=False, which wins as in A1111
    assert (tiled == pixels(gen(api, tiling=True))).all() and (tiled != pixels(gen(api))).any()


def test_unsupported_settings_and_fields_are_reported(api):
    r = gen(api, {"face_restoration": True, "lora_functional": True}, restore_faces=True)
    assert {"restore_faces", "override_settings.face_restoration",
            "override_settings.lora_functional"} <= set(r.info["unsupported_fields"])
    body = {"prompt": "x", "steps": 1, "width": 64, "height": 64, "force_task_id": "task(1)", "override_settings": TINY}
    info = json.loads(requests.post(f"{api.baseurl}/txt2img", json=body, timeout=60).json()["info"])
    assert {"force_task_id"} == set(info["unsupported_fields"])
    assert any(w.startswith("restore_faces: no face restoration") for w in r.info["opensd_warnings"])
    assert gen(api).info["unsupported_fields"] == [] and gen(api).info["opensd_warnings"] == []


def test_override_kept_when_not_restored_afterwards(api):
    api.txt2img(prompt="x", width=64, height=64, override_settings={"send_size": False},
                override_settings_restore_afterwards=False)
    try:
        assert api.get_options()["send_size"] is False
    finally:
        api.set_options({"send_size": True})
