"""A1111's noise-schedule settings from the faces: `opensd generate` flags written to the infotext
and read back by --from, and the A1111 API's settings and override_settings (acted on, written,
refused in one line naming the setting)."""
from __future__ import annotations

import numpy as np
import pytest

from opensd.cli import main
from opensd.pipeline.infotext import parse_infotext, read_infotext
from opensd.server import a1111_apply
from opensd.server.a1111_option_table import DEFAULTS
from test_sampler_faces import ckpt  # noqa: F401 (the tiny checkpoint)

ARGS = ["--steps", "3", "--seed", "4", "--width", "64", "--height", "64", "--precision", "fp32", "--device", "cpu"]


def test_a1111_settings_become_the_schedule_options():
    opts = {**DEFAULTS, "sigma_max": 10, "rho": 7.0, "sd_noise_schedule": "zero terminal snr",
            "always_discard_next_to_last_sigma": True}
    assert a1111_apply.schedule_options(opts) == {"sigma_max": 10, "sd_noise_schedule": "Zero Terminal SNR",
                                                  "always_discard_next_to_last_sigma": True, "rho": 7.0}
    assert a1111_apply.schedule_options(DEFAULTS) == {}


def test_cli_flags_write_the_infotext_and_from_reproduces_the_image(ckpt, tmp_path):
    first, again, plain = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    assert main(["generate", "a cat", "-m", str(ckpt), *ARGS, "--sampler", "DPM++ 2M", "--sigma-max", "9.5",
                 "--rho", "5", "--zero-terminal-snr", "--schedule-option", "always_discard_next_to_last_sigma=true",
                 "-o", str(first)]) == 0
    params = parse_infotext(read_infotext(first))[2]
    assert params["Schedule max sigma"] == "9.5" and params["Schedule rho"] == "5"
    assert params["Noise Schedule"] == "Zero Terminal SNR" and params["Discard penultimate sigma"] == "True"
    assert main(["generate", "--from", str(first), "-m", str(ckpt), "--precision", "fp32", "--device", "cpu",
                 "-o", str(again)]) == 0
    assert read_infotext(again) == read_infotext(first)
    assert np.array_equal(np.asarray(_open(first)), np.asarray(_open(again)))
    assert main(["generate", "a cat", "-m", str(ckpt), *ARGS, "--sampler", "DPM++ 2M", "-o", str(plain)]) == 0
    assert not np.array_equal(np.asarray(_open(first)), np.asarray(_open(plain)))
    assert "Schedule" not in read_infotext(plain).split("Sampler")[1].replace("Schedule type", "")


def _open(path):
    from PIL import Image
    with Image.open(path) as im:
        return im.convert("RGB")


# --- the A1111 API ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def api(tmp_path_factory):
    import webuiapi
    from server_live import LiveServer, models_dir

    from opensd.server.settings import Settings

    root = tmp_path_factory.mktemp("sched_api")
    with LiveServer(Settings(models_dir=models_dir(root), outputs_dir=root / "outputs")) as server:
        yield webuiapi.WebUIApi(host="127.0.0.1", port=server.port, sampler="DPM++ 2M", steps=3)


def _gen(api, settings=None, **kw):
    args = dict(prompt="noise", width=64, height=64, seed=5,
                override_settings={"sd_model_checkpoint": "tiny", **(settings or {})})
    return api.txt2img(**{**args, **kw})


def test_api_settings_change_the_schedule_and_are_written(api):
    plain = _gen(api)
    ranged = _gen(api, {"sigma_max": 9.5, "rho": 5.0, "sgm_noise_multiplier": True})
    text = ranged.info["infotexts"][0]
    assert "Schedule max sigma: 9.5" in text and "Schedule rho: 5" in text and "SGM noise multiplier: True" in text
    assert "Schedule max" not in plain.info["infotexts"][0] and ranged.info["unsupported_fields"] == []
    assert (np.asarray(plain.image) != np.asarray(ranged.image)).any()
    api.set_options({"sd_noise_schedule": "Zero Terminal SNR"})
    try:
        saved = _gen(api)
    finally:
        api.set_options({"sd_noise_schedule": "Default"})
    assert "Noise Schedule: Zero Terminal SNR" in saved.info["infotexts"][0]
    assert (np.asarray(_gen(api, {"sd_noise_schedule": "Zero Terminal SNR"}).image) == np.asarray(saved.image)).all()


@pytest.mark.parametrize("body,named", [({"sigma_min": -0.5}, "sigma_min"), ({"rho": "steep"}, "rho"),
                                        ({"sd_noise_schedule": "Cosine"}, "sd_noise_schedule"),
                                        ({"uni_pc_skip_type": "linear"}, "uni_pc_skip_type"),
                                        ({"beta_dist_beta": 0.0}, "beta_dist_beta")])
def test_api_refuses_a_bad_value_naming_the_setting(api, body, named):
    import requests

    r = requests.post(f"{api.baseurl}/txt2img", timeout=30, json={
        "prompt": "x", "steps": 1, "width": 64, "height": 64, "override_settings": body})
    assert r.status_code == 422 and f"override_settings.{named}" in r.json()["detail"], r.text


def test_api_refuses_downcast_with_zero_terminal_snr(api):
    import requests

    r = requests.post(f"{api.baseurl}/txt2img", timeout=30, json={
        "prompt": "x", "steps": 1, "width": 64, "height": 64,
        "override_settings": {"use_downcasted_alpha_bar": True, "sd_noise_schedule": "Zero Terminal SNR"}})
    assert r.status_code == 422 and "use_downcasted_alpha_bar" in r.json()["detail"], r.text


def test_xyz_axes_set_the_schedule_settings_as_a1111s_overrides(api):
    # A1111 1.10 script_args: x_type, x_values, x_values_dropdown, (y...), (z...), draw_legend,
    # include_lone_images, include_sub_grids, no_fixed_seeds, vary_seeds_x/y/z, margin_size, csv_mode
    args = ["Schedule max sigma", "6, 9.5", [], "SGM noise multiplier", "", ["True", "False"], 0, "", [],
            True, True, False, False, False, False, False, 0, False]
    r = _gen(api, script_name="X/Y/Z plot", script_args=args)
    assert len(r.images) == 1 + 4
    for iy, sgm in enumerate([True, False]):
        for ix, top in enumerate([6.0, 9.5]):
            single = _gen(api, {"sigma_max": top, "sgm_noise_multiplier": sgm})
            assert (np.asarray(r.images[1 + ix + 2 * iy]) == np.asarray(single.image)).all()
            assert r.info["infotexts"][1 + ix + 2 * iy] == single.info["infotexts"][0]


def test_schedulers_say_which_takes_rho(api):
    import requests

    rho = {s["label"]: s["default_rho"] for s in requests.get(f"{api.baseurl}/schedulers", timeout=30).json()}
    assert rho["Karras"] == 7.0 and rho["Exponential"] == -1 and rho["Automatic"] == -1
