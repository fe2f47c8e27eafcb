"""A1111's evaluations without the negative prompt (pipeline/cfg_skips.py): NGMS (s_min_uncond,
s_min_uncond_all) and Skip Early CFG (skip_early_cond) leave the negative row out exactly on the
evaluations A1111's CFGDenoiser does, predict the prompt's own there, are written to and read back
from the infotext under A1111's keys, and are taken from the CLI and the A1111 API."""
import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from server_live import BASE, models_dir

from opensd.cli import main
from opensd.errors import InvalidArgument
from opensd.library.synthetic import write_random_checkpoint
from opensd.pipeline.infotext import parse_infotext, read_infotext
from opensd.pipeline.infotext_params import image_infotext, recorded
from opensd.pipeline.params import Params
from opensd.pipeline.pipeline import load
from opensd.sampling.denoiser import Denoiser
from opensd.server.app import create_app
from opensd.server.settings import Settings

# The tiny model's Euler sigmas at 6 steps: 14.61, 5.09, 2.28, 1.16, 0.571, 0.0292.
PROMPT, NEGATIVE = "a red apple", "blurry"


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return load(write_random_checkpoint(tmp_path_factory.mktemp("skips") / "tiny.safetensors"))


def _rows(pipe, **kw):
    """UNet batch sizes of every call, and the image."""
    seen = []
    hook = pipe.model.unet.register_forward_hook(lambda m, args, out: seen.append(len(args[0])))
    try:
        image = pipe.txt2img(PROMPT, NEGATIVE, seed=3, **kw)[0]
    finally:
        hook.remove()
    return seen, image


@pytest.mark.parametrize("kw,rows", [
    ({}, [2, 2, 2, 2, 2, 2]),
    ({"s_min_uncond": 100.0}, [2, 1, 2, 1, 2, 1]),                   # every other evaluation
    ({"s_min_uncond": 100.0, "s_min_uncond_all": True}, [1] * 6),
    ({"s_min_uncond": 2.0}, [2, 2, 2, 1, 2, 1]),                     # sigma < 2 from the 4th on, odd ones
    ({"s_min_uncond": 1.0}, [2, 2, 2, 2, 2, 1]),
    ({"skip_early_cond": 0.34}, [1, 1, 1, 2, 2, 2]),                 # evaluations 0, 1, 2 (2/6 <= 0.34)
    ({"skip_early_cond": 0.3}, [1, 1, 2, 2, 2, 2]),
    ({"skip_early_cond": 0.2, "s_min_uncond": 100.0}, [1, 1, 2, 1, 2, 1]),
])
def test_the_negative_row_is_left_out_on_a1111s_evaluations(pipe, kw, rows):
    seen, _ = _rows(pipe, steps=6, **kw)
    assert seen == rows


def test_second_order_and_timestep_samplers_count_as_a1111_does(pipe):
    # Heun: evaluations are counted, not steps (3 steps = 5 calls), and A1111 expects 2 per step
    assert _rows(pipe, steps=3, sampler="heun", s_min_uncond=100.0)[0] == [2, 1, 2, 1, 2]
    assert _rows(pipe, steps=3, sampler="heun", skip_early_cond=0.34)[0] == [1, 1, 1, 2, 2]  # 2/6 <= 0.34
    # DDIM: A1111 compares the timestep (751, 501, 251, 1), not sigma (4.1 ... 0.04), with NGMS 5
    assert _rows(pipe, steps=4, sampler="ddim", s_min_uncond=5.0)[0] == [2, 2, 2, 1]
    assert _rows(pipe, steps=4, sampler="euler", s_min_uncond=5.0)[0] == [2, 1, 2, 1]


def test_off_is_plain_cfg_exactly(pipe):
    seen, image = _rows(pipe, steps=3, s_min_uncond=0.0, skip_early_cond=0.0, s_min_uncond_all=True)
    plain = pipe.txt2img(PROMPT, NEGATIVE, seed=3, steps=3)[0]
    assert seen == [2, 2, 2] and np.array_equal(np.asarray(image), np.asarray(plain))
    assert "NGMS" not in image_infotext(pipe, image)


@torch.no_grad()
def test_a_skipped_evaluation_predicts_the_prompts_own(pipe):
    estimates = []
    pipe.on_latents = estimates.append
    try:
        pipe.txt2img(PROMPT, NEGATIVE, seed=3, steps=2, cfg=7.0, s_min_uncond=100.0)
    finally:
        pipe.on_latents = None
    # by hand: Euler over CFG at the first step, the prompt's own prediction at the second
    sigmas = pipe.sigmas(Params(), 2)
    enc = pipe.conditioner()

    def own(text):
        context = enc.encode(text).context
        return Denoiser(lambda x, t: pipe.model.unet(x, t, context).float(), pipe.schedule, pipe.config.prediction)

    x = pipe.noise([3], 8, 8) * sigmas[0]
    u, c = own(NEGATIVE)(x, sigmas[0]), own(PROMPT)(x, sigmas[0])
    first = u + 7.0 * (c - u)
    torch.testing.assert_close(estimates[0], first, rtol=0, atol=1e-3)  # batch of 2 vs 1: float noise x 7
    x = x + (sigmas[1] - sigmas[0]) * (x - estimates[0]) / sigmas[0]
    torch.testing.assert_close(estimates[1], own(PROMPT)(x, sigmas[1]), rtol=0, atol=1e-5)


@torch.no_grad()
def test_and_parts_combine_at_scale_one_around_the_first_part(pipe):
    # A1111 puts the first part's prediction where the negative's was: first + sum w_i (part_i - first)
    prompt = "a red apple :0.5 AND a pear :1.5"
    estimates = []
    pipe.on_latents = estimates.append
    try:
        pipe.txt2img(prompt, NEGATIVE, seed=3, steps=1, s_min_uncond=100.0, s_min_uncond_all=True)
    finally:
        pipe.on_latents = None
    p = Params(prompt=prompt, negative_prompt=NEGATIVE, width=64, height=64)
    weights, conds = pipe.guidance(p, 1, 64, 64).rows(0)
    sigma = pipe.sigmas(Params(), 1)[0]
    x = pipe.noise([3], 8, 8) * sigma
    apple, pear = (Denoiser(lambda x, t, c=c: pipe.model.unet(x, t, c.context).float(), pipe.schedule,
                            pipe.config.prediction)(x, sigma) for c in conds[1:])
    assert weights == [0.5, 1.5]
    torch.testing.assert_close(estimates[0], apple + 1.5 * (pear - apple), rtol=0, atol=2e-4)  # batched: float noise


def test_infotext_written_only_when_applied_and_read_back(pipe):
    _, image = _rows(pipe, steps=4, s_min_uncond=100.0, s_min_uncond_all=True)
    _, _, params = parse_infotext(image_infotext(pipe, image))
    assert params["NGMS"] == "100" and params["NGMS all steps"] == "True"
    rec = recorded(PROMPT, NEGATIVE, params)
    assert (rec.settings["s_min_uncond"], rec.settings["s_min_uncond_all"]) == (100.0, True)
    _, image = _rows(pipe, steps=4, skip_early_cond=0.5)
    _, _, params = parse_infotext(image_infotext(pipe, image))
    assert params["Skip Early CFG"] == "0.5" and "NGMS" not in params
    assert recorded(PROMPT, NEGATIVE, params).settings["skip_early_cond"] == 0.5
    _, image = _rows(pipe, steps=4, s_min_uncond=0.001)  # below every sigma: never applied, not written
    assert "NGMS" not in image_infotext(pipe, image)


@pytest.mark.parametrize("kw,named", [({"s_min_uncond": -1.0}, "s_min_uncond"),
                                      ({"s_min_uncond": float("nan")}, "s_min_uncond"),
                                      ({"s_min_uncond": "1"}, "s_min_uncond"),
                                      ({"skip_early_cond": 1.5}, "skip_early_cond"),
                                      ({"s_min_uncond_all": 1}, "s_min_uncond_all")])
def test_bad_values_are_refused_naming_them(pipe, kw, named):
    with pytest.raises(InvalidArgument, match=f"^{named}:"):
        pipe.txt2img(PROMPT, steps=1, **kw)


def test_cli_flags_and_from_reproduce_the_image(pipe, tmp_path, capsys):
    ckpt = pipe.loaded.path
    first, again, plain = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    fast = ["-m", str(ckpt), "--steps", "4", "--seed", "3", "--negative", NEGATIVE]
    assert main(["generate", PROMPT, *fast, "--s-min-uncond", "2", "--s-min-uncond-all", "--skip-early-cond",
                 "0.25", "-o", str(first)]) == 0
    params = parse_infotext(read_infotext(first))[2]
    assert (params["NGMS"], params["NGMS all steps"], params["Skip Early CFG"]) == ("2", "True", "0.25")
    assert main(["generate", "--from", str(first), "-m", str(ckpt), "-o", str(again)]) == 0
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(again)))
    assert "differs" not in capsys.readouterr().err
    assert main(["generate", PROMPT, *fast, "-o", str(plain)]) == 0
    assert not np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(plain)))
    assert main(["generate", PROMPT, *fast, "--skip-early-cond", "2", "-o", str(plain)]) == 2
    assert "skip-early-cond: 2.0 must be a number in 0..1" in capsys.readouterr().err


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("skips_api")
    settings = Settings(models_dir=models_dir(root), outputs_dir=root / "out")
    with TestClient(create_app(settings), base_url=BASE) as c:
        yield c


def _txt2img(client, **body):
    req = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "steps": 4, "seed": 3, "width": 64, "height": 64,
           **body, "override_settings": {"sd_model_checkpoint": "tiny", **body.get("override_settings", {})}}
    return client.post("/sdapi/v1/txt2img", json=req)


def test_a1111_api_field_and_settings(client):
    plain = _txt2img(client).json()
    r = _txt2img(client, s_min_uncond=100)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["unsupported_fields"] == [] and "NGMS: 100" in info["infotexts"][0]
    assert r.json()["images"][0] != plain["images"][0]
    info = json.loads(_txt2img(client, override_settings={"s_min_uncond": 14, "s_min_uncond_all": True,
                                                          "skip_early_cond": 0.5}).json()["info"])
    assert info["unsupported_fields"] == []
    assert "Skip Early CFG: 0.5" in info["infotexts"][0] and "NGMS all steps: True" in info["infotexts"][0]
    # the request's field wins over the setting, as in A1111
    info = json.loads(_txt2img(client, s_min_uncond=0.0, override_settings={"s_min_uncond": 14}).json()["info"])
    assert "NGMS" not in info["infotexts"][0]


@pytest.mark.parametrize("body,named", [({"s_min_uncond": -1}, "s_min_uncond"),
                                        ({"s_min_uncond": 1000}, "s_min_uncond"),
                                        ({"override_settings": {"skip_early_cond": 2}}, "skip_early_cond"),
                                        ({"override_settings": {"s_min_uncond": 16}}, "s_min_uncond"),
                                        ({"override_settings": {"s_min_uncond_all": "yes"}}, "s_min_uncond_all")])
def test_a1111_api_bad_values_are_422_naming_them(client, body, named):
    r = _txt2img(client, **body)
    assert r.status_code == 422 and named in r.text, r.text
