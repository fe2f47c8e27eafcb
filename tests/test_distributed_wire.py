"""What a Ray worker is sent for an A1111 job: model names, never paths, which the worker resolves in
its own models folder (a name leading outside it is refused); the wildcard lines the prompts use."""
from __future__ import annotations

import pytest
from server_live import models_dir

from opensd.distributed import wire
from opensd.errors import InvalidArgument
from opensd.library.models_dir import BUILTIN_CHECKPOINT, ModelFolders
from opensd.text.wildcards import Wildcards


def payload(models, **changes):
    return {"mode": "txt2img", "request": {}, "kwargs": {"steps": 2}, "prompt": "a __animal__ <lora:style:0.5>",
            "negative_prompt": "", "model_path": str(models / "Stable-diffusion" / "tiny.safetensors"),
            "vae_path": None, "controlnet": [], "output": {"folder": "/srv/outputs/txt2img-images"}, **changes}


def test_the_wire_holds_names_and_wildcard_lines_not_paths(tmp_path):
    models = models_dir(tmp_path)
    (tmp_path / "wild").mkdir()
    (tmp_path / "wild" / "animal.txt").write_text("cat\n__colour__ dog\n")
    (tmp_path / "wild" / "colour.txt").write_text("red\n# a comment\nblue\n")
    folders = ModelFolders(models)
    refiner = {"path": str(models / "Stable-diffusion" / "tiny.safetensors"), "switch_at": 0.8, "hires_pass": "both"}
    sent = wire.to_wire(folders, Wildcards(tmp_path / "wild"), payload(models, refiner=refiner))
    assert sent["model"] == "tiny.safetensors" and sent["vae"] is None
    assert sent["refiner"] == {"model": "tiny.safetensors", "switch_at": 0.8, "hires_pass": "both"}
    assert "model_path" not in sent and "output" not in sent and str(tmp_path) not in repr(sent)
    assert sent["wildcards"] == {"animal": ["cat", "__colour__ dog"], "colour": ["red", "blue"]}
    builtin = wire.to_wire(folders, Wildcards(None), payload(models, prompt="x", model_path=str(BUILTIN_CHECKPOINT)))
    assert builtin["model"] == BUILTIN_CHECKPOINT.name

    # another node mounts the same models elsewhere: it finds them in its own folder
    elsewhere = tmp_path / "node2"
    (elsewhere / "Stable-diffusion").mkdir(parents=True)
    (elsewhere / "Stable-diffusion" / "tiny.safetensors").write_bytes(
        (models / "Stable-diffusion" / "tiny.safetensors").read_bytes())
    local, wildcards = wire.from_wire(ModelFolders(elsewhere), sent)
    assert local["model_path"] == str((elsewhere / "Stable-diffusion" / "tiny.safetensors").resolve())
    assert local["refiner"] == {**refiner, "path": local["model_path"]}
    assert wildcards.values("colour") == ["red", "blue"]
    with pytest.raises(InvalidArgument, match="not sent"):
        wildcards.values("other")


@pytest.mark.parametrize("name", ["../../secret.safetensors", "/etc/passwd", "sub/../../x.safetensors"])
def test_a_worker_refuses_a_name_leading_outside_its_models_folder(tmp_path, name):
    models = models_dir(tmp_path)
    (tmp_path / "secret.safetensors").write_bytes(b"not yours")
    with pytest.raises(InvalidArgument, match="checkpoints"):
        wire.from_wire(ModelFolders(models), {"model": name, "vae": None, "controlnet": []})


def test_a_model_outside_the_models_folder_is_named_in_one_line(tmp_path):
    models = models_dir(tmp_path)
    stray = tmp_path / "stray.safetensors"
    stray.write_bytes(b"x")
    with pytest.raises(InvalidArgument, match="not inside the models folder"):
        wire.to_wire(ModelFolders(models), Wildcards(None), payload(models, model_path=str(stray)))


def test_plain_a1111_generations_and_comfyui_graphs_go_to_ray_workers():
    class Job:
        def __init__(self, kind, payload):
            self.kind, self.payload = kind, payload

    assert wire.remote(Job("a1111", {"script": None}))
    assert not wire.remote(Job("a1111", {"script": "x/y/z plot"}))
    assert wire.remote(Job("comfy", {})) and not wire.remote(Job("train", {})) and not wire.remote(Job("extras", {}))
