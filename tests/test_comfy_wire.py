"""What a ComfyUI graph job carries to a Ray worker and back (opensd.distributed.comfy_wire), without Ray:
input images go as bytes by name, the files an output node writes come back inside its "executed"
message and are numbered by the front door's folder, a cached output node of a later job gets the
names the front door gave, and no name from a worker leads out of a folder."""
from __future__ import annotations

import copy

import pytest
import torch
from server_live import COMFY_GRAPH

from opensd.distributed.comfy_wire import Received, Stage, choices, to_wire
from opensd.workflows.nodes_image import save_images


def executed(node, saved):
    return {"type": "executed", "data": {"node": node, "output": {"images": saved}, "prompt_id": "p"}}


def test_input_images_travel_as_bytes_by_name(tmp_path):
    inputs = tmp_path / "inputs"
    (inputs / "sub").mkdir(parents=True)
    (inputs / "sub" / "fox.png").write_bytes(b"fox")
    (tmp_path / "secret.png").write_bytes(b"secret")
    graph = copy.deepcopy(COMFY_GRAPH)
    graph["10"] = {"class_type": "LoadImage", "inputs": {"image": "sub/fox.png [input]"}}
    graph["11"] = {"class_type": "LoadImageMask", "inputs": {"image": "../secret.png", "channel": "alpha"}}
    assert ("checkpoints", "opensd-emoji.safetensors") in choices(graph)
    sent = to_wire(inputs, {"prompt": graph, "client_id": "me"})
    assert sent["inputs"] == {"sub/fox.png": b"fox"}  # the name leading outside is not read
    assert sent["prompt"] == graph and "client_id" not in sent

    stage = Stage(tmp_path / "worker")
    stage.receive(sent["inputs"])
    assert (stage.dirs["input"] / "sub" / "fox.png").read_bytes() == b"fox"
    stage.receive({})  # the next job's inputs replace them
    assert not (stage.dirs["input"] / "sub").exists()
    with pytest.raises(ValueError, match="not a name inside"):
        stage.receive({"../x.png": b"x"})


def test_files_come_back_numbered_here_and_cached_nodes_keep_their_names(tmp_path):
    dirs = {"output": tmp_path / "front" / "comfy", "temp": tmp_path / "front" / "temp"}
    dirs["output"].mkdir(parents=True)
    (dirs["output"] / "ComfyUI_00001_.png").write_bytes(b"made here before")
    front = Received(lambda: dirs)
    stage = Stage(tmp_path / "worker")
    images = torch.rand(2, 8, 8, 3)

    # job 1: two images saved on the worker, numbered 1 and 2 there; 2 and 3 here
    message, files = stage.attach(executed("9", save_images(images, stage.dirs["output"], "ComfyUI", "output")))
    assert [f["filename"] for f in files] == ["ComfyUI_00001_.png", "ComfyUI_00002_.png"]
    front.begin()
    front.take(files)
    shown = front.message(message)["data"]["output"]["images"]
    assert [i["filename"] for i in shown] == ["ComfyUI_00002_.png", "ComfyUI_00003_.png"]
    assert (dirs["output"] / "ComfyUI_00002_.png").read_bytes() == files[0]["data"]

    # job 2: the same node, cached on the worker: its message names job 1's files and sends none
    again, files = stage.attach(message)
    assert files == []
    assert front.message(again)["data"]["output"]["images"] == shown
    # a new image there gets a new name there (the sent ones keep theirs), and the next number here
    _, files = stage.attach(executed("9", save_images(images[:1], stage.dirs["output"], "ComfyUI", "output")))
    assert [f["filename"] for f in files] == ["ComfyUI_00003_.png"]
    front.begin()
    front.take(files)
    assert sorted(p.name for p in dirs["output"].iterdir()) == [f"ComfyUI_{k:05}_.png" for k in (1, 2, 3, 4)]

    # the worker lost mid-job: what that run sent goes
    front.discard()
    assert sorted(p.name for p in dirs["output"].iterdir()) == [f"ComfyUI_{k:05}_.png" for k in (1, 2, 3)]


@pytest.mark.parametrize("subfolder,filename", [("..", "x_00001_.png"), ("", "../x_00001_.png"),
                                                ("/etc", "x_00001_.png"), ("a", "b/../../../x.png")])
def test_a_name_from_a_worker_never_leaves_the_folder(tmp_path, subfolder, filename):
    dirs = {"output": tmp_path / "out", "temp": tmp_path / "temp"}
    dirs["output"].mkdir()
    with pytest.raises(ValueError):
        Received(lambda: dirs).take([{"type": "output", "subfolder": subfolder, "filename": filename,
                                      "data": b"x"}])
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
