"""GET /opensd/v1/xyz-axes, the X/Y/Z axis list behind the web UI's script form: the scripts package's
own table with A1111's indices per mode, and each dropdown's choices are names the axis accepts."""
from __future__ import annotations

from fastapi.testclient import TestClient
from server_live import BASE

from opensd.scripts.xyz_axes import axis_types
from opensd.server.app import create_app
from opensd.server.settings import Settings
from opensd.server.xyz_axes_api import choice_lists

STYLES = "name,prompt,negative_prompt\nink,\"{prompt}, ink drawing\",blurry\n"


def test_axes_follow_the_scripts_table_and_every_dropdown_has_its_choices(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "styles.csv").write_text(STYLES)
    app = create_app(Settings(outputs_dir=out))
    with TestClient(app, base_url=BASE) as c:
        axes = c.get("/opensd/v1/xyz-axes").json()
        samplers = [s["name"] for s in c.get("/sdapi/v1/samplers").json()]
        upscalers = [u["name"] for u in c.get("/sdapi/v1/latent-upscale-modes").json()] + \
                    [u["name"] for u in c.get("/sdapi/v1/upscalers").json()]
    for mode in ("txt2img", "img2img"):
        table = axis_types(mode == "img2img")
        assert [(a["index"], a["label"], a["available"]) for a in axes[mode]] == \
               [(i, t.label, not t.missing) for i, t in enumerate(table)]
        for a, t in zip(axes[mode], table):  # every dropdown A1111 offers here has its names listed
            assert (a["choices"] is not None) == (t.choices and not t.missing), a["label"]
    by_label = {a["label"]: a for a in axes["txt2img"]}
    assert by_label["Steps"]["kind"] == "int" and by_label["Steps"]["index"] == 4
    assert by_label["Sampler"]["choices"] == samplers
    assert by_label["Hires upscaler"]["choices"] == upscalers
    assert by_label["Styles"]["choices"] == ["ink"]
    assert by_label["Checkpoint name"]["choices"] == ["opensd-emoji.safetensors"]
    assert by_label["VAE"]["choices"] == ["Automatic", "None"]
    assert not by_label["FP8 mode"]["available"] and by_label["FP8 mode"]["reason"]
    assert set(choice_lists(app.state.opensd)) >= {t.label for t in axis_types(False) if t.choices and not t.missing}
