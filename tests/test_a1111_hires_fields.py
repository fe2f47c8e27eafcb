"""The hires pass's sampler and schedule as A1111 picks them from a txt2img request (its
hr_scheduler defaults to the first pass's scheduler, hr_sampler_name to its sampler, and its UI's
"Use same ..." values mean the same), and an image's hires and refiner keys turned back into the
request that remakes it (png-info's "send to" and the gallery's reuse)."""
from __future__ import annotations

import pytest

from opensd.errors import InvalidArgument
from opensd.pipeline.params import Hires
from opensd.server.a1111_models import Txt2ImgRequest
from opensd.server.a1111_option_table import DEFAULTS
from opensd.server.a1111_run import plan
from opensd.server.a1111_unsupported import SETTINGS, request_gaps
from opensd.server.infotext_request import request_from_infotext


def hires_of(**fields) -> tuple[str, str | None]:
    req = Txt2ImgRequest(prompt="a cat", enable_hr=True, hr_scale=1.5, **fields)
    h = plan(req, False, 10_000, dict(DEFAULTS))[0]["hires"]
    return h["sampler"], h["scheduler"]


@pytest.mark.parametrize("fields, expected", [
    ({"sampler_name": "Euler", "scheduler": "karras"}, ("euler", "karras")),
    # a hires sampler without a hires schedule takes the first pass's (A1111: hr_scheduler = scheduler)
    ({"sampler_name": "Euler", "scheduler": "karras", "hr_sampler_name": "DPM++ 2M"}, ("dpmpp_2m", "karras")),
    ({"sampler_name": "Euler", "hr_sampler_name": "DPM++ 2M"}, ("dpmpp_2m", None)),  # Automatic: its default
    ({"sampler_name": "DPM++ 2M", "scheduler": "karras", "hr_sampler_name": "Use same sampler"}, ("dpmpp_2m", "karras")),
    # a hires schedule alone changes the hires pass's schedule only
    ({"sampler_name": "Euler", "hr_scheduler": "exponential"}, ("euler", "exponential")),
    ({"sampler_name": "Euler", "scheduler": "karras", "hr_scheduler": "Use same scheduler"}, ("euler", "karras")),
    ({"sampler_name": "Euler", "scheduler": "karras", "hr_sampler_name": "Euler a", "hr_scheduler": "Automatic"},
     ("euler_ancestral", "normal")),
])
def test_the_hires_sampler_and_schedule_as_a1111_picks_them(fields, expected):
    assert hires_of(**fields) == expected


def test_a_bad_hires_sampler_or_schedule_names_both_fields():
    for fields in ({"hr_sampler_name": "Nope"}, {"hr_scheduler": "nope"}):
        with pytest.raises(InvalidArgument, match="^hr_sampler_name/hr_scheduler: "):
            hires_of(**fields)


def test_hires_and_refiner_keys_come_back_as_request_fields():
    text = ("a cat\nNegative prompt: dog\nSteps: 5, Sampler: Euler, CFG scale: 7, Seed: 3, Size: 64x64, "
            "Model: base, Denoising strength: 0.5, Hires upscale: 1.5, Hires upscaler: Latent, "
            "Hires checkpoint: other [abcdef0123], Hires sampler: DPM++ 2M, Hires schedule type: Karras, "
            'Hires prompt: "a blue cat", Hires negative prompt: cow, Refiner: ref [1234567890], '
            "Refiner switch at: 0.6")
    checkpoints = [("base.safetensors", None), ("other.safetensors", "abcdef0123"), ("ref.safetensors", "1234567890")]
    request, notes = request_from_infotext(text, checkpoints)
    assert notes == []
    assert {k: request[k] for k in ("hr_checkpoint_name", "hr_sampler_name", "hr_scheduler", "hr_prompt",
                                    "hr_negative_prompt", "refiner_checkpoint", "refiner_switch_at")} == {
        "hr_checkpoint_name": "other.safetensors", "hr_sampler_name": "DPM++ 2M", "hr_scheduler": "Karras",
        "hr_prompt": "a blue cat", "hr_negative_prompt": "cow", "refiner_checkpoint": "ref.safetensors",
        "refiner_switch_at": 0.6}
    _, notes = request_from_infotext(text, checkpoints[:1])
    assert [n.split(":")[0] for n in notes] == ["Hires checkpoint", "Refiner"]


def test_hires_fix_use_firstpass_conds_reaches_the_hires_pass():
    req = Txt2ImgRequest(prompt="a cat", enable_hr=True, hr_scale=1.5)
    on = plan(req, False, 10_000, {**DEFAULTS, "hires_fix_use_firstpass_conds": True})[0]["hires"]
    assert on["firstpass_conds"] is True
    assert "firstpass_conds" not in plan(req, False, 10_000, dict(DEFAULTS))[0]["hires"]  # off: as stored before
    assert "hires_fix_use_firstpass_conds" not in SETTINGS


def test_firstphase_size_replaces_width_and_height_as_in_a1111():
    req = Txt2ImgRequest(prompt="a cat", width=512, height=512, firstphase_width=64, firstphase_height=96,
                         enable_hr=True, hr_scale=2)
    kw = plan(req, False, 10_000, dict(DEFAULTS))[0]
    assert (kw["width"], kw["height"]) == (64, 96) and kw["hires"]["scale"] == 2 and kw["hires"]["width"] is None
    assert request_gaps(req) == []
    with pytest.raises(InvalidArgument, match="^firstphase_width/firstphase_height: .*give both"):
        plan(Txt2ImgRequest(prompt="a cat", firstphase_width=64), False, 10_000, dict(DEFAULTS))


def test_use_old_hires_fix_width_height_makes_width_and_height_the_final_size():
    req = Txt2ImgRequest(prompt="a cat", width=1024, height=768, enable_hr=True, hr_scale=2, hr_resize_x=5)
    kw = plan(req, False, 10_000, {**DEFAULTS, "use_old_hires_fix_width_height": True})[0]
    # A1111: sqrt(512 * 512 / (1024 * 768)) = 0.577..; 591.2 -> 640, 443.4 -> 448; hr_resize_x/y replaced
    assert (kw["width"], kw["height"]) == (640, 448)
    assert (kw["hires"]["width"], kw["hires"]["height"]) == (1024, 768)
    assert Hires(width=1024, height=768).target(640, 448) == (1024, 768)  # 1097 x 768 cut to 1024 wide
    assert "use_old_hires_fix_width_height" not in SETTINGS


def test_use_old_scheduling_reaches_the_generation():
    req = Txt2ImgRequest(prompt="a [cat:dog:0.5]")
    assert plan(req, False, 10_000, {**DEFAULTS, "use_old_scheduling": True})[0]["old_scheduling"] is True
    assert "old_scheduling" not in plan(req, False, 10_000, dict(DEFAULTS))[0]  # off: as stored before
    assert "use_old_scheduling" not in SETTINGS
