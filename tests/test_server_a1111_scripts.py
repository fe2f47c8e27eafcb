"""A1111 scripts through the real `webuiapi` client: /sdapi/v1/scripts and /script-info list the
scripts that exist, a name A1111 would not find gets A1111's 422, and a registered selectable
script runs its job."""
from __future__ import annotations

import json

import pytest
import requests
import webuiapi
from PIL import Image
from server_live import LiveServer, models_dir

from opensd.server import a1111_scripts
from opensd.server.a1111_scripts import Script
from opensd.server.settings import Settings


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("scripts")
    with LiveServer(Settings(models_dir=models_dir(root), outputs_dir=root / "outputs")) as server:
        yield server


@pytest.fixture(scope="module")
def api(live):
    return webuiapi.WebUIApi(host="127.0.0.1", port=live.port, sampler="Euler", steps=2)


def small(**kw):
    return dict(prompt="x", width=64, height=64, seed=1, override_settings={"sd_model_checkpoint": "tiny"}, **kw)


def test_scripts_lists_what_exists(api, live):
    both = ["controlnet", "refiner", "hypertile", "x/y/z plot", "prompt matrix", "prompts from file or textbox"]
    img2img = both[:3] + ["soft inpainting"] + both[3:] + ["sd upscale"]  # A1111 shows it on img2img only
    assert api.get_scripts() == {"txt2img": both, "img2img": img2img}
    info = requests.get(f"{live.url}/sdapi/v1/script-info", timeout=10).json()
    alwayson = ("controlnet", "refiner", "hypertile", "soft inpainting")
    assert {(i["name"], i["is_alwayson"], i["is_img2img"]) for i in info} == {
        *((name, name in alwayson, False) for name in both),
        *((name, name in alwayson, True) for name in img2img)}
    soft = next(i for i in info if i["name"] == "soft inpainting")
    assert [(a["label"], a["value"]) for a in soft["args"]] == [
        ("Soft inpainting", False), ("Schedule bias", 1), ("Preservation strength", 0.5),
        ("Transition contrast boost", 4), ("Mask influence", 0), ("Difference threshold", 0.5),
        ("Difference contrast", 2)]
    xyz = next(i for i in info if i["name"] == "x/y/z plot")
    assert [a["label"] for a in xyz["args"]][:3] == ["x_type", "x_values", "x_values_dropdown"]


@pytest.mark.parametrize("fields,detail", [
    ({"script_name": "Loopback"}, "Script 'Loopback' not found"),
    ({"script_name": "controlnet"}, "Script 'controlnet' not found"),  # always-on, not selectable
    ({"alwayson_scripts": {"ADetailer": {"args": [True]}}}, "Script 'ADetailer' not found"),
])
def test_an_unknown_script_gets_a1111s_422(api, fields, detail):
    with pytest.raises(RuntimeError) as e:
        api.txt2img(**small(**fields))
    status, body = e.value.args
    assert status == 422
    assert json.loads(body) == {"error": "HTTPException", "detail": detail, "body": "",
                                                       "errors": f"422: {detail}"}
    assert len(api.txt2img(**small()).images) == 1  # still serving


def test_a1111_builtin_alwayson_script_is_reported_not_refused(api):
    r = api.txt2img(**small(alwayson_scripts={"Comments": {"args": []}}))
    assert r.info["unsupported_fields"] == ["alwayson_scripts.Comments"]
    r = api.txt2img(**small(alwayson_scripts={"Refiner": {"args": [False, "", 0.8]}}))  # implemented (issue 22)
    assert r.info["unsupported_fields"] == []


def test_a_registered_selectable_script_runs_its_job(api, live):
    def run(state, job, ctl):
        size = job.payload["request"]["script_args"][0]
        image = Image.new("RGB", (size, size), (1, 2, 3))
        from opensd.pipeline.infotext import save_image

        f = save_image(image, live.settings.outputs_dir / f"{job.id}.png", "made by a script")
        info = {"infotexts": ["made by a script"]}
        return {"files": [f.name], "info": info}, {"pngs": [f.read_bytes()], "info": info}

    script = Script("Solid colour", alwayson=False, modes=("txt2img",),
                    args=({"label": "size", "value": 16, "minimum": 8, "maximum": 64, "step": 8, "choices": None},),
                    run=run)
    a1111_scripts.register(script)
    try:
        assert "solid colour" in api.get_scripts()["txt2img"]
        r = api.txt2img(**small(script_name="Solid Colour", script_args=[24]))
        assert r.image.size == (24, 24) and r.image.getpixel((0, 0)) == (1, 2, 3)
        with pytest.raises(RuntimeError, match="Cannot have a selectable script"):
            api.txt2img(**small(alwayson_scripts={"solid colour": {"args": []}}))
    finally:
        a1111_scripts.SCRIPTS.remove(script)
