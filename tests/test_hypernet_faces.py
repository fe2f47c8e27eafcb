"""Hypernetworks through every face: the pipeline's <hypernet:name:m> prompt tags, the A1111 API
(/sdapi/v1/hypernetworks, prompt tags, the sd_hypernetwork setting, 422s), ComfyUI's
HypernetworkLoader node in a graph, and the CLI's --hypernet flag."""
import base64
import io
import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from hypernet_fixtures import write_hypernet
from PIL import Image
from server_live import BASE, models_dir
from workflow_fixtures import default_graph, make_ctx, make_models, Loader

from opensd.cli import main
from opensd.errors import InvalidArgument
from opensd.library.models_dir import ModelFolders
from opensd.pipeline.infotext import read_infotext
from opensd.server.app import create_app
from opensd.server.settings import Settings
from opensd.workflows import execute, object_info
from opensd.workflows.types import GraphError

GEN = {"steps": 2, "seed": 5, "width": 64, "height": 64, "cfg": 5.0}
WIDTHS = (64, 32, 768)  # the tiny model's attention widths, and SD1's context width


def _px(image):
    return np.asarray(image.convert("RGB")).astype(np.int16)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("hnf")
    models = models_dir(root)
    write_hypernet(models / "hypernetworks" / "anime.pt", WIDTHS, act="relu", layer_norm=True, seed=2)
    write_hypernet(models / "hypernetworks" / "sub" / "soft.pt", WIDTHS, act="tanh", seed=3)
    return root


def test_pipeline_prompt_tags(root):
    from opensd.pipeline.pipeline import load
    models = root / "models"
    pipe = load(models / "Stable-diffusion" / "tiny.safetensors")
    pipe.hypernet_folders = ModelFolders(models, include_builtin=False)
    state = {k: v.clone() for k, v in pipe.model.state_dict().items()}
    (plain,) = pipe.txt2img("a cat", **GEN)
    (styled,) = pipe.txt2img("a cat <hypernet:anime:0.8>", **GEN)
    assert pipe.hypernet_names == [("anime", 0.8)]
    (zero,) = pipe.txt2img("a cat <hypernet:anime:0>", **GEN)
    (both,) = pipe.txt2img("a cat <hypernet:anime:0.8><hypernet:soft>", **GEN)
    (again,) = pipe.txt2img("a cat", **GEN)
    assert np.abs(_px(styled) - _px(plain)).max() > 0 and np.abs(_px(both) - _px(styled)).max() > 0
    assert np.array_equal(_px(zero), _px(plain)) and np.array_equal(_px(again), _px(plain))
    assert all(torch.equal(v, state[k]) for k, v in pipe.model.state_dict().items())
    assert not any(m._forward_pre_hooks for m in pipe.model.modules())
    with pytest.raises(InvalidArgument, match="no model named 'nowhere'"):
        pipe.txt2img("a cat <hypernet:nowhere>", **GEN)
    pipe.hypernet_folders = None
    with pytest.raises(InvalidArgument, match="needs a models folder"):
        pipe.txt2img("a cat <hypernet:anime>", **GEN)


@pytest.fixture(scope="module")
def client(root):
    app = create_app(Settings(models_dir=root / "models", outputs_dir=root / "out"))
    with TestClient(app, base_url=BASE) as c:
        yield c


def _txt2img(client, prompt, **kw):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": prompt, "steps": 2, "width": 64, "height": 64, "seed": 5,
                                               "sampler_name": "Euler", "cfg_scale": 5,
                                               "override_settings": {"sd_model_checkpoint": "tiny.safetensors"},
                                               **kw})
    assert r.status_code == 200, r.text
    body = r.json()
    image = Image.open(io.BytesIO(base64.b64decode(body["images"][0])))
    return _px(image), json.loads(body["info"])


def test_a1111_lists_hypernetworks_and_applies_prompt_tags(client, root):
    listed = client.get("/sdapi/v1/hypernetworks").json()
    assert [h["name"] for h in listed] == ["anime", "soft"]
    assert listed[1]["path"] == str((root / "models" / "hypernetworks" / "sub" / "soft.pt").resolve())
    plain, _ = _txt2img(client, "noise")
    styled, info = _txt2img(client, "noise <hypernet:anime:0.8>")
    zero, _ = _txt2img(client, "noise <hypernet:anime:0>")
    assert np.abs(styled - plain).max() > 0 and np.array_equal(zero, plain)
    # A1111 records a hypernetwork as the prompt's tag, kept in the infotext
    assert info["prompt"] == "noise <hypernet:anime:0.8>"
    assert info["infotexts"][0].startswith("noise <hypernet:anime:0.8>\n")
    again, _ = _txt2img(client, "noise")
    assert np.array_equal(again, plain)
    # the sd_hypernetwork setting adds the tag with extra_networks_default_multiplier
    by_setting, info = _txt2img(client, "noise", override_settings={"sd_model_checkpoint": "tiny.safetensors",
                                                                    "sd_hypernetwork": "anime"})
    assert info["prompt"] == "noise<hypernet:anime:1.0>"
    assert np.array_equal(by_setting, _txt2img(client, "noise<hypernet:anime:1.0>")[0])


def test_comfyui_routes_list_the_hypernetworks_folder(client):
    assert client.get("/models/hypernetworks").json() == ["anime.pt", "sub/soft.pt"]
    assert "hypernetworks" in [f["name"] for f in client.get("/api/experiment/models").json()]
    info = client.get("/object_info/HypernetworkLoader").json()["HypernetworkLoader"]
    assert info["input"]["required"]["hypernetwork_name"][0] == ["anime.pt", "sub/soft.pt"]
    assert info["python_module"] == "comfy_extras.nodes_hypernetwork" and info["category"] == "loaders"


def test_a1111_refuses_unknown_names_and_bad_multipliers(client):
    base = {"steps": 1, "width": 64, "height": 64, "override_settings": {"sd_model_checkpoint": "tiny.safetensors"}}
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x <hypernet:nowhere:1>", **base})
    assert r.status_code == 422 and "<hypernet:nowhere>" in r.text
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x <hypernet:anime:lots>", **base})
    assert r.status_code == 422 and "not a number" in r.text
    r = client.post("/sdapi/v1/options", json={"sd_hypernetwork": "nowhere"})
    assert r.status_code == 422 and "sd_hypernetwork" in r.text


def test_comfyui_hypernetwork_loader_node(tmp_path):
    folders = make_models(tmp_path / "models")
    write_hypernet(tmp_path / "models" / "hypernetworks" / "anime.pt", WIDTHS, act="relu", seed=2)
    ctx = make_ctx(folders, Loader(folders), tmp_path)

    def run(strength=None, name="anime.pt"):
        g = default_graph()
        if strength is not None:
            g["10"] = {"class_type": "HypernetworkLoader",
                       "inputs": {"model": ["4", 0], "hypernetwork_name": name, "strength": strength}}
            g["3"]["inputs"]["model"] = ["10", 0]
        out = execute(g, ctx, None)
        entry = out["9"]["images"][0]
        return _px(Image.open(ctx.outputs_dir / entry["subfolder"] / entry["filename"]))

    plain = run()
    assert np.abs(run(1.0) - plain).max() > 0
    assert np.array_equal(run(0.0), plain)
    assert np.array_equal(run(), plain)  # nothing left on the shared model
    info = object_info(ctx, "HypernetworkLoader")["HypernetworkLoader"]
    assert info["input"]["required"]["hypernetwork_name"][0] == ["anime.pt"]
    assert info["input"]["required"]["strength"][1]["min"] == -10.0
    with pytest.raises(GraphError) as e:  # as ComfyUI: a name not in the list fails validation
        run(1.0, "nowhere.pt")
    assert "nowhere.pt" in json.dumps(e.value.payload["node_errors"])


def test_cli_hypernet_flag_and_prompt_tag(root, tmp_path):
    models = root / "models"
    fast = ["--steps", "2", "--seed", "5", "--width", "64", "--height", "64", "--models-dir", str(models), "-m", "tiny"]
    outs = {}
    for key, argv in (("plain", ["a cat"]), ("flag", ["a cat", "--hypernet", "anime:0.8"]),
                      ("tag", ["a cat <hypernet:anime:0.8>"]),
                      ("path", ["a cat", "--hypernet", f"{models / 'hypernetworks' / 'anime.pt'}:0.8"])):
        assert main(["generate", *argv, *fast, "-o", str(tmp_path / f"{key}.png")]) == 0
        outs[key] = _px(Image.open(tmp_path / f"{key}.png"))
    assert np.abs(outs["flag"] - outs["plain"]).max() > 0
    assert np.array_equal(outs["flag"], outs["tag"]) and np.array_equal(outs["flag"], outs["path"])
    assert "<hypernet:anime:0.8>" in read_infotext(tmp_path / "tag.png")
    assert main(["generate", "a cat", "--hypernet", "nowhere", *fast, "-o", str(tmp_path / "x.png")]) == 2


def test_ray_shipping_includes_the_prompts_hypernetworks(root):
    from types import SimpleNamespace

    from opensd.distributed.shipping import a1111_files
    models = root / "models"
    state = SimpleNamespace(folders=ModelFolders(models, include_builtin=False))
    payload = {"model_path": str(models / "Stable-diffusion" / "tiny.safetensors"), "kwargs": {},
               "prompt": "a cat <hypernet:soft:0.5>"}
    files = a1111_files(state, payload)
    assert ("hypernetworks", (models / "hypernetworks" / "sub" / "soft.pt").resolve()) in \
        [(k, p.resolve()) for k, p in files]


def test_old_infotexts_hypernet_setting_reads_back_as_a_prompt_tag():
    from opensd.pipeline.infotext import parse_infotext
    from opensd.pipeline.infotext_params import recorded
    text = "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Hypernet: anime, Hypernet strength: 0.5"
    assert recorded(*parse_infotext(text)).prompt == "a cat<hypernet:anime:0.5>"
    assert recorded(*parse_infotext(text.replace(", Hypernet strength: 0.5", ""))).prompt == "a cat<hypernet:anime:1.0>"


def test_cli_from_an_image_reapplies_its_hypernet_flags(root, tmp_path):
    models = root / "models"
    fast = ["--steps", "2", "--seed", "5", "--width", "64", "--height", "64", "--models-dir", str(models), "-m", "tiny"]
    first, again = tmp_path / "first.png", tmp_path / "again.png"
    assert main(["generate", "a cat", "--hypernet", "anime:0.8", "--hypernet", "soft", *fast, "-o", str(first)]) == 0
    assert 'Extra hypernets: "anime: 0.8, soft: 1"' in read_infotext(first)
    assert main(["generate", "--from", str(first), "--models-dir", str(models), "-o", str(again)]) == 0
    assert np.array_equal(_px(Image.open(first)), _px(Image.open(again)))
    assert "Extra hypernets" in read_infotext(again)


def test_models_add_list_and_info_know_hypernetworks(tmp_path, capsys):
    models = tmp_path / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    write_hypernet(tmp_path / "src" / "anime.pt", (768, 320), act="relu", layer_norm=True)
    assert main(["models", "add", str(tmp_path / "src" / "anime.pt"), "--models-dir", str(models)]) == 0
    assert (models / "hypernetworks" / "anime.pt").is_file() and "convert" not in capsys.readouterr().err
    assert main(["models", "list", "--json", "--models-dir", str(models)]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["kind"], row["family"]) == ("hypernetworks", "sd1")
    assert row["detail"] == "widths 320, 768; layers [1, 2, 1], relu, layer norm"
