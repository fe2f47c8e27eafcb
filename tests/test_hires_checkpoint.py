"""The hires fix's own checkpoint (A1111's hr_checkpoint_name, "Hires checkpoint"): the first pass
runs on the main model, which decodes it; the upscaled image is encoded, noised and denoised by the
hires model, and its VAE decodes the result, as A1111 switches models between the passes. Checked
against the hires model's own img2img of the upscaled first pass, through the pipeline, the CLI and
the A1111 API, and recorded so that --from and png-info bring it back."""
from __future__ import annotations

import json

import numpy as np
import pytest
import requests
import torch
from PIL import Image
from dit_fixtures import load_tiny, sd3_parts
from server_live import LiveServer
from workflow_models import TINY_SDXL

from opensd.cli import main
from opensd.errors import InvalidArgument
from opensd.library.hashes import model_hash
from opensd.library.synthetic import write_random_checkpoint
from opensd.pipeline.infotext import parse_infotext, read_infotext
from opensd.pipeline.infotext_params import image_infotext, recorded
from opensd.pipeline.params import Hires
from opensd.pipeline.pipeline import load
from opensd.server.infotext_request import request_from_infotext
from opensd.server.settings import Settings

KW = dict(steps=4, seed=7, width=64, height=64, cfg=5.0)
PROMPT, NEGATIVE = "a stone bridge", "fog"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hires_ckpt")
    ckpts = root / "models" / "Stable-diffusion"
    ckpts.mkdir(parents=True)
    write_random_checkpoint(ckpts / "base.safetensors", TINY_SDXL, dtype=torch.float32)
    write_random_checkpoint(ckpts / "other.safetensors", TINY_SDXL, seed=5, dtype=torch.float32)
    pipes = {name: load(ckpts / f"{name}.safetensors", device="cpu", precision="fp32") for name in ("base", "other")}
    return root, dict(pipes, sd3=load_tiny(root / "sd3", "sd3", sd3_parts()))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_the_second_pass_is_the_hires_models_img2img_of_the_upscaled_first_pass(models):
    _, m = models
    base, other = m["base"], m["other"]
    hires = Hires(scale=1.5, upscaler="Lanczos", denoise=0.6, steps=3)
    made = base.txt2img(PROMPT, NEGATIVE, hires=hires, hires_model=other, **KW)[0]
    first = base.txt2img(PROMPT, NEGATIVE, **KW)[0]
    upscaled = base.upscalers.resize(first, 96, 96, "Lanczos", "hires upscaler")
    expected = other.img2img(upscaled, PROMPT, NEGATIVE, strength=0.6, fix_steps=True, **{**KW, "steps": 3, "width": 96,
                                                                            "height": 96})[0]
    assert made.size == (96, 96)
    assert np.abs(pixels(made) - pixels(expected)).max() <= 1
    same_model = base.txt2img(PROMPT, NEGATIVE, hires=hires, **KW)[0]
    assert np.abs(pixels(made) - pixels(same_model)).mean() > 5  # the other model's weights made it
    assert made.info["hires_model"] is other and "hires_model" not in same_model.info


def test_a_latent_upscale_hands_the_latents_over_and_the_hires_vae_decodes(models):
    _, m = models
    base, other = m["base"], m["other"]
    hires = Hires(scale=2.0, upscaler="latent", denoise=0.5)
    itself = base.txt2img(PROMPT, NEGATIVE, hires=hires, hires_model=base, **KW)[0]
    plain = base.txt2img(PROMPT, NEGATIVE, hires=hires, **KW)[0]
    assert np.array_equal(pixels(itself), pixels(plain))  # the running model as its own: no change
    made = other.txt2img(PROMPT, NEGATIVE, hires=hires, hires_model=base, **KW)[0]
    assert made.size == (128, 128) and np.abs(pixels(made) - pixels(plain)).mean() > 1


def test_the_infotext_records_it_as_a1111_and_reads_it_back(models):
    root, m = models
    base, other = m["base"], m["other"]
    made = base.txt2img(PROMPT, NEGATIVE, hires=Hires(scale=1.5, denoise=0.5), hires_model=other, **KW)[0]
    text = image_infotext(base, made)
    _, _, params = parse_infotext(text)
    digest = model_hash(other.loaded.path)
    assert params["Hires checkpoint"] == f"other [{digest}]"
    assert recorded(*parse_infotext(text)).hires_checkpoint == ("other", digest)
    request, notes = request_from_infotext(text, [("base.safetensors", model_hash(base.loaded.path)),
                                                  ("other.safetensors", digest)])
    assert request["hr_checkpoint_name"] == "other.safetensors" and not notes
    _, notes = request_from_infotext(text, [("base.safetensors", None)])
    assert any(n.startswith("Hires checkpoint:") for n in notes)
    assert "Hires checkpoint" not in image_infotext(base, base.txt2img(PROMPT, hires=Hires(scale=1.5), **KW)[0])


def test_a_model_of_another_family_is_refused(models):
    _, m = models
    with pytest.raises(InvalidArgument, match="^hires checkpoint: sd3 is a .* model and base a .* model: a hires "
                                              "checkpoint must be of the main model's family$"):
        m["base"].txt2img(PROMPT, hires=Hires(scale=1.5), hires_model=m["sd3"], **KW)


def test_cli_flag_and_from(models, tmp_path, capsys):
    root, _ = models
    args = ["--models-dir", str(root / "models"), "-m", "base", "--steps", "3", "--seed", "4", "--width", "64",
            "--height", "64", "--cfg", "5", "--precision", "fp32", "--device", "cpu", "--hires", "--hires-scale",
            "1.5"]
    assert main(["generate", "a red kite", *args, "--hires-checkpoint", "other", "-o", str(tmp_path / "a.png")]) == 0
    assert main(["generate", "a red kite", *args, "-o", str(tmp_path / "b.png")]) == 0
    with Image.open(tmp_path / "a.png") as a, Image.open(tmp_path / "b.png") as b:
        assert not np.array_equal(pixels(a), pixels(b))
    assert "Hires checkpoint: other [" in read_infotext(tmp_path / "a.png")
    capsys.readouterr()
    assert main(["generate", "--from", str(tmp_path / "a.png"), "--models-dir", str(root / "models"),
                 "--device", "cpu", "--precision", "fp32", "-o", str(tmp_path / "c.png")]) == 0
    assert "differs" not in capsys.readouterr().err
    with Image.open(tmp_path / "a.png") as a, Image.open(tmp_path / "c.png") as c:
        assert np.array_equal(pixels(a), pixels(c))
    assert main(["generate", "x", "--models-dir", str(root / "models"), "-m", "base", "--hires-checkpoint",
                 "other", "-o", str(tmp_path / "d.png")]) == 2
    assert "hires-checkpoint: needs --hires" in capsys.readouterr().err
    assert main(["generate", "x", *args, "--hires-checkpoint", "nope", "-o", str(tmp_path / "e.png")]) == 2
    assert "hires-checkpoint:" in capsys.readouterr().err


@pytest.fixture(scope="module")
def live(models):
    root, _ = models
    settings = Settings(models_dir=root / "models", outputs_dir=root / "outputs", model_budget_bytes=1,
                        device="cpu", precision="fp32")
    with LiveServer(settings) as server:
        yield server


def txt2img(live, **kw):
    body = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "steps": 3, "width": 64, "height": 64, "seed": 2,
            "cfg_scale": 5, "sampler_name": "Euler", "enable_hr": True, "hr_scale": 1.5, "denoising_strength": 0.5,
            "override_settings": {"sd_model_checkpoint": "base"}, **kw}
    return requests.post(f"{live.url}/sdapi/v1/txt2img", json=body, timeout=120)


def test_a1111_hr_checkpoint_name(live):
    r = txt2img(live, hr_checkpoint_name="other")
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    _, _, params = parse_infotext(info["infotexts"][0])
    path = live.settings.models_dir / "Stable-diffusion" / "other.safetensors"
    assert params["Hires checkpoint"] == f"other [{model_hash(path)}]"
    assert "hr_checkpoint_name" not in info["unsupported_fields"]
    # both models stay loaded for the run although the budget is 1 byte
    assert sorted(p.name for p, _ in live.state.cache.loaded()) == ["base.safetensors", "other.safetensors"]
    for off in ("Use same checkpoint", ""):
        same = txt2img(live, hr_checkpoint_name=off)
        assert "Hires checkpoint" not in json.loads(same.json()["info"])["infotexts"][0]
        assert same.json()["images"][0] != r.json()["images"][0]
    plain = txt2img(live)
    assert plain.json()["images"][0] == same.json()["images"][0]


def test_a1111_unknown_hr_checkpoint_is_a_422_and_img2img_has_none(live):
    r = txt2img(live, hr_checkpoint_name="missing")
    assert r.status_code == 422 and "hr_checkpoint_name" in r.text
    assert txt2img(live, hr_checkpoint_name="missing", enable_hr=False).status_code == 200  # A1111: hires only
