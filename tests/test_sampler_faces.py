"""The new samplers and their knobs from every face: CLI flags (--eta, --s-noise, --sampler-option),
infotext written the A1111 way and read back by --from, validation, the A1111 API's settings, the
pipeline's guidance for CFG++ (the negative row always runs) and context for TCD (the model's
schedule), Align Your Steps by model family."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from opensd.cli import main
from opensd.errors import InvalidArgument
from opensd.library.synthetic import write_random_checkpoint
from opensd.pipeline.infotext import parse_infotext, read_infotext
from opensd.pipeline.infotext_sampler import read, written
from opensd.pipeline.params import Params
from opensd.pipeline.pipeline import load
from opensd.sampling import samplers as S
from opensd.sampling.schedules import make_sigmas
from opensd.server import a1111_apply
from workflow_models import TINY_SDXL

ARGS = ["--steps", "6", "--seed", "4", "--width", "64", "--height", "64", "--precision", "fp32", "--device", "cpu"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("faces") / "m.safetensors", dtype=torch.float32)


@pytest.fixture(scope="module")
def pipe(ckpt):
    return load(ckpt, device="cpu", precision="fp32")


def pixels(path):
    from PIL import Image
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.mark.parametrize("sampler, flags, keys", [
    ("DPM adaptive", ["--eta", "0.5", "--sampler-option", "order=2", "--sampler-option", "rtol=0.1"],
     {"Eta": "0.5", "order": "2", "rtol": "0.1"}),
    ("DPM fast", [], {"Eta": "0"}),  # k-diffusion's eta 0 is not A1111's default (1): said
    ("TCD", ["--eta", "0.6"], {"Eta": "0.6"}),
    ("DEIS", ["--sampler-option", "max_order=2"], {"max_order": "2"}),
    ("Restart", ["--s-noise", "0.5"], {"Sigma noise": "0.5"}),
    ("Euler", ["--s-churn", "1", "--s-tmin", "0.5", "--s-tmax", "5"],
     {"Sigma churn": "1", "Sigma tmin": "0.5", "Sigma tmax": "5"}),
])
def test_cli_knobs_are_recorded_and_from_reproduces_them(ckpt, tmp_path, capsys, sampler, flags, keys):
    out, again = tmp_path / "a.png", tmp_path / "b.png"
    assert main(["generate", "a red kite", "-m", str(ckpt), "--sampler", sampler, *flags, *ARGS, "-o", str(out)]) == 0
    _, _, params = parse_infotext(read_infotext(out))
    assert {k: params.get(k) for k in keys} == keys
    capsys.readouterr()
    assert main(["generate", "--from", str(out), "-m", str(ckpt), "--precision", "fp32", "--device", "cpu",
                 "-o", str(again)]) == 0
    assert "differs" not in capsys.readouterr().err
    assert np.array_equal(pixels(out), pixels(again))


def test_an_a1111_dpm_fast_image_without_eta_means_eta_one():
    assert read("dpm_fast", {}) == {"eta": 1.0}
    assert read("dpm_fast", {"Eta": "0"}) == {"eta": 0.0}
    assert read("euler_ancestral", {}) == {}
    assert read("ddim", {"Eta DDIM": "0.3"}) == {"eta": 0.3}
    assert read("uni_pc", {"UniPC order": "2", "UniPC variant": "bh2"}) == {"order": 2, "variant": "bh2"}
    assert written("dpm_fast", {"eta": 1.0}) == {} and written("dpm_fast", {}) == {"Eta": 0.0}
    assert written("dpm_adaptive", {"order": 2}) == {"order": 2, "Eta": 0.0}  # its order is not UniPC's
    with pytest.raises(InvalidArgument, match="^from: UniPC lower order final:"):
        read("uni_pc", {"UniPC lower order final": "maybe"})


@pytest.mark.parametrize("options, message", [
    ({"eta": -1.0}, "sampler_options.eta: -1.0 must be 0 or more"),
    ({"order": "x"}, "sampler_options.order: 'x' must be a whole number"),
    ({"order": 2.5}, "sampler_options.order: 2.5 must be a whole number"),
    ({"lower_order_final": 1}, "sampler_options.lower_order_final: 1 must be true or false"),
    ({"rtol": True}, "sampler_options.rtol: True must be a number"),
    # were NaN images (a 500 blaming the model) or DPM adaptive's ZeroDivisionError: 1e30 overflows float32
    ({"eta": 1e30}, "sampler_options.eta: 1e+30 must be at most 100.0"),
    ({"s_noise": 100.5}, "sampler_options.s_noise: 100.5 must be at most 100.0"),
])
def test_bad_option_values_are_refused_by_name(options, message):
    with pytest.raises(InvalidArgument) as e:
        Params(width=64, height=64, sampler_options=options).validate()
    assert str(e.value) == message


def test_bad_option_for_the_sampler_is_one_line_naming_it(pipe, ckpt, tmp_path, capsys):
    with pytest.raises(InvalidArgument, match="^sampler_options.order: DPM adaptive takes 2 or 3"):
        pipe.txt2img("x", sampler="DPM adaptive", steps=3, sampler_options={"order": 5})
    assert main(["generate", "x", "-m", str(ckpt), "--sampler", "DEIS", "--sampler-option", "max_order=7", *ARGS,
                 "-o", str(tmp_path / "x.png")]) == 2
    assert "max_order: DEIS takes 1, 2, 3 or 4" in capsys.readouterr().err
    assert main(["generate", "x", "-m", str(ckpt), "--sampler-option", "eta", *ARGS, "-o", str(tmp_path / "y.png")]) == 2


class Req:
    eta = s_churn = s_tmin = s_tmax = s_noise = None


def test_a1111_settings_reach_the_samplers_a1111_has():
    opts = {"eta_ancestral": 1.0, "eta_ddim": 0.0, "s_churn": 0.0, "s_tmin": 0.0, "s_tmax": 0.0, "s_noise": 0.7,
            "eta_noise_seed_delta": 31337}
    fast = a1111_apply.sampler_options("dpm_fast", Req(), opts)
    assert fast == {"eta": 1.0, "s_noise": 0.7}  # A1111 passes eta_ancestral and s_noise to DPM fast
    assert a1111_apply.noise_seed_delta("dpm_adaptive", {"eta": 1.0}, opts) == 31337  # "uses_ensd"
    assert a1111_apply.sampler_options("tcd", Req(), opts) == {}  # not A1111's: keeps its own eta 0.3
    req = Req()
    req.eta = 0.1
    assert a1111_apply.sampler_options("tcd", req, opts) == {"eta": 0.1}


def test_cfg_pp_runs_the_negative_row_even_at_cfg_one(pipe):
    batches = []
    hook = pipe.model.unet.register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]))
    try:
        plain = pipe.txt2img("a kite", "fog", cfg=1.0, steps=3, seed=1, sampler="Euler")
        pp = pipe.txt2img("a kite", "fog", cfg=1.0, steps=3, seed=1, sampler="Euler CFG++")
    finally:
        hook.remove()
    assert batches == [1, 1, 1, 2, 2, 2]  # Euler skips the negative at scale 1; CFG++ steps with it
    assert not np.array_equal(np.asarray(plain[0]), np.asarray(pp[0]))


def test_tcd_gets_the_models_schedule(pipe, monkeypatch):
    seen = []
    real = S.SAMPLERS["tcd"]

    def spy(*args, model_schedule=None, **kw):
        seen.append(model_schedule)
        return real(*args, model_schedule=model_schedule, **kw)

    monkeypatch.setitem(S.SAMPLERS, "tcd", spy)
    pipe.txt2img("x", sampler="TCD", steps=2, seed=1)
    assert seen == [pipe.schedule]


def test_align_your_steps_follows_the_model_family(pipe, tmp_path):
    xl = load(write_random_checkpoint(tmp_path / "xl.safetensors", TINY_SDXL), device="cpu", precision="fp32")
    for p, table in ((pipe, [14.615, 6.475, 3.861]), (xl, [14.615, 6.315, 3.771])):
        sigmas = p.sigmas(Params(sampler="Euler", scheduler="Align Your Steps"), 11)
        torch.testing.assert_close(sigmas[:3], torch.tensor(table))
        torch.testing.assert_close(sigmas, make_sigmas("align_your_steps", p.schedule, 11, family=p.config.family))
