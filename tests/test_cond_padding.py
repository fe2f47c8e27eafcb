"""A prompt and negative prompt of different lengths (pipeline/cond_padding.py), as A1111's CFG
denoiser runs them: by default in two UNet calls at their own lengths; with pad_cond_uncond ("Pad
conds") in one, the shorter padded with encoded empty prompts; with pad_cond_uncond_v0 ("Pad conds
v0") in one, the negative repeating its last token vector (or cut); AND parts padded by repeating
their last vector. Written to and read back from the infotext, from the CLI and the A1111 API."""
import json

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from server_live import BASE, models_dir

from opensd.cli import main
from opensd.library.synthetic import write_random_checkpoint
from opensd.pipeline.infotext import parse_infotext, read_infotext
from opensd.pipeline.infotext_params import image_infotext, recorded
from opensd.pipeline.params import Params
from opensd.pipeline.pipeline import load
from opensd.sampling.denoiser import Denoiser
from opensd.server.app import create_app
from opensd.server.settings import Settings

LONG = "a red apple on a wooden table, " * 12  # 96 tokens: 2 chunks (154 positions)
SHORT = "blurry"                                 # 1 chunk (77)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return load(write_random_checkpoint(tmp_path_factory.mktemp("pads") / "tiny.safetensors"))


def _calls(pipe, prompt, negative, **kw):
    """(rows, context length, context) of every UNet call, the estimates and the image."""
    calls, estimates = [], []

    def hook(module, args, kwargs, out):
        context = kwargs.get("context", args[2] if len(args) > 2 else None)
        calls.append((len(args[0]), context.shape[1], context.clone()))

    handle = pipe.model.unet.register_forward_hook(hook, with_kwargs=True)
    pipe.on_latents = estimates.append
    try:
        image = pipe.txt2img(prompt, negative, seed=3, steps=1, **kw)[0]
    finally:
        handle.remove()
        pipe.on_latents = None
    return calls, estimates, image


def _own(pipe, context):
    return Denoiser(lambda x, t: pipe.model.unet(x, t, context).float(), pipe.schedule, pipe.config.prediction)


@torch.no_grad()
def test_by_default_the_negative_runs_in_its_own_call_at_its_own_length(pipe):
    calls, estimates, image = _calls(pipe, LONG, SHORT)
    assert [(rows, length) for rows, length, _ in calls] == [(1, 77), (1, 154)]
    enc = pipe.conditioner()
    sigma = pipe.sigmas(Params(), 1)[0]
    x = pipe.noise([3], 8, 8) * sigma
    u, c = _own(pipe, enc.encode(SHORT).context)(x, sigma), _own(pipe, calls[1][2])(x, sigma)
    torch.testing.assert_close(estimates[0], u + 7.0 * (c - u), rtol=0, atol=1e-5)
    assert "Pad conds" not in image_infotext(pipe, image)
    # same lengths: one call, as before
    assert [(r, n) for r, n, _ in _calls(pipe, SHORT, "dull")[0]] == [(2, 77)]


@torch.no_grad()
def test_pad_conds_pads_the_shorter_with_empty_prompts_into_one_call(pipe):
    calls, estimates, image = _calls(pipe, LONG, SHORT, pad_cond_uncond=True)
    assert [(rows, length) for rows, length, _ in calls] == [(2, 154)]
    context = calls[0][2]
    enc = pipe.conditioner()
    torch.testing.assert_close(context[0, :77], enc.encode(SHORT).context[0])
    torch.testing.assert_close(context[0, 77:], enc.empty().context[0])
    params = parse_infotext(image_infotext(pipe, image))[2]
    assert params["Pad conds"] == "True" and "Pad conds v0" not in params
    assert recorded(LONG, SHORT, params).settings["pad_cond_uncond"] is True
    # a longer negative: the prompt is the one padded
    calls, _, _ = _calls(pipe, SHORT, LONG, pad_cond_uncond=True)
    torch.testing.assert_close(calls[0][2][1, 77:], enc.empty().context[0])


@torch.no_grad()
def test_pad_conds_v0_repeats_the_negatives_last_token_or_cuts_it(pipe):
    calls, _, image = _calls(pipe, LONG, SHORT, pad_cond_uncond_v0=True, pad_cond_uncond=True)
    assert [(rows, length) for rows, length, _ in calls] == [(2, 154)]
    negative = pipe.conditioner().encode(SHORT).context[0]
    torch.testing.assert_close(calls[0][2][0], torch.cat([negative, negative[-1:].expand(77, -1)]))
    params = parse_infotext(image_infotext(pipe, image))[2]
    assert params["Pad conds v0"] == "True" and "Pad conds" not in params
    assert recorded(LONG, SHORT, params).settings["pad_cond_uncond_v0"] is True
    calls, _, _ = _calls(pipe, SHORT, LONG, pad_cond_uncond_v0=True)  # a longer negative is cut
    assert [(rows, length) for rows, length, _ in calls] == [(2, 77)]
    torch.testing.assert_close(calls[0][2][0], pipe.conditioner().encode(LONG).context[0, :77])


@torch.no_grad()
def test_and_parts_repeat_their_last_token_vector(pipe):
    calls, _, _ = _calls(pipe, f"{LONG} AND a pear", SHORT)
    assert [(rows, length) for rows, length, _ in calls] == [(1, 77), (2, 154)]
    pear = calls[1][2][1]
    torch.testing.assert_close(pear[77:], pear[76:77].expand(77, -1))


def test_skipped_negative_still_records_the_padding_and_cli_from_round_trip(pipe, tmp_path, capsys):
    calls, _, image = _calls(pipe, LONG, SHORT, pad_cond_uncond=True, s_min_uncond=100.0, s_min_uncond_all=True)
    assert [(rows, length) for rows, length, _ in calls] == [(1, 154)]
    assert parse_infotext(image_infotext(pipe, image))[2]["Pad conds"] == "True"  # A1111 pads before it skips
    first, again = tmp_path / "a.png", tmp_path / "b.png"
    fast = ["-m", str(pipe.loaded.path), "--steps", "2", "--seed", "3", "--negative", SHORT]
    assert main(["generate", LONG, *fast, "--pad-conds-v0", "-o", str(first)]) == 0
    assert parse_infotext(read_infotext(first))[2]["Pad conds v0"] == "True"
    assert main(["generate", "--from", str(first), "-m", str(pipe.loaded.path), "-o", str(again)]) == 0
    assert Image.open(first).tobytes() == Image.open(again).tobytes()
    assert "differs" not in capsys.readouterr().err


def test_a1111_settings(tmp_path):
    settings = Settings(models_dir=models_dir(tmp_path), outputs_dir=tmp_path / "out")
    with TestClient(create_app(settings), base_url=BASE) as client:
        def made(**opts):
            r = client.post("/sdapi/v1/txt2img", json={
                "prompt": LONG, "negative_prompt": SHORT, "steps": 1, "seed": 3, "width": 64, "height": 64,
                "override_settings": {"sd_model_checkpoint": "tiny", **opts}})
            assert r.status_code == 200, r.text
            return json.loads(r.json()["info"])

        plain, padded, v0 = made(), made(pad_cond_uncond=True), made(pad_cond_uncond_v0=True)
        assert "Pad conds" not in plain["infotexts"][0]
        assert "Pad conds: True" in padded["infotexts"][0] and "Pad conds v0: True" in v0["infotexts"][0]
        assert padded["unsupported_fields"] == v0["unsupported_fields"] == []


def test_each_unet_call_is_told_its_negative_rows():
    # ControlNet's guess mode and the IP-Adapter treat the leading negative rows apart: a call of the
    # negative alone has 1, a call of the prompt's parts 0, a skipped evaluation's call 0
    from opensd.pipeline import cond_padding as P
    from opensd.pipeline import guidance as G
    from opensd.pipeline.cfg_skips import CfgSkips, SkipCounter
    from opensd.pipeline.conditioning import Conditioning, CondSchedule, ScheduledPart

    def schedule(length):
        part = ScheduledPart(1.0, "x", [(10, "x")], [Conditioning(torch.randn(1, length, 8))])
        return CondSchedule("x", 2, [part], [])

    seen = []

    def model(x, sigma, context, y, fraction, n_uncond):
        seen.append((len(x), context.shape[1], n_uncond))
        return torch.zeros_like(x)

    g = G.Guidance(schedule(154), (schedule(77),), 7.0)
    empty = Conditioning(torch.zeros(1, 77, 8))
    sigmas = torch.tensor([2.0, 1.0, 0.0])
    record = SkipCounter(CfgSkips(s_min_uncond=5.0), "euler", 2, float)
    denoise = G.denoiser(g, model, P.layout(P.SEPARATE, empty), sigmas, 0, "cpu", record)
    for sigma in sigmas[:-1]:
        denoise(torch.zeros(1, 4, 8, 8), sigma)
    assert seen == [(1, 77, 1), (1, 154, 0), (1, 154, 0)]
    seen.clear()
    G.denoiser(g, model, P.layout(P.PAD, empty), sigmas, 0, "cpu")(torch.zeros(1, 4, 8, 8), sigmas[0])
    assert seen == [(2, 154, 1)]
