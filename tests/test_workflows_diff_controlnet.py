"""DiffControlNetLoader (ComfyUI's nodes.py) and diff ControlNets: a file holding a ControlNet's
weights less the tiny UNet's (with lllyasviel's "difference" key) loads, against the MODEL, into the
same network as the whole file, and a graph with it makes the same image as ControlNetLoader with
the whole file."""
import copy

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from reference import randomize_
from safetensors.torch import save_file
from workflow_fixtures import Loader, default_graph, make_ctx, make_models

from opensd.adapters.controlnet import load_controlnet
from opensd.checkpoints.controlnet_files import save_controlnet
from opensd.errors import CheckpointError
from opensd.library.synthetic import TINY
from opensd.models.controlnet import ControlNet, ControlNetConfig
from opensd.workflows import execute


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("diffcn")
    folders = make_models(tmp / "models")
    loader = Loader(folders)
    cn_dir = tmp / "models" / "controlnet"
    cn_dir.mkdir()
    net = randomize_(ControlNet(ControlNetConfig(TINY.unet)), seed=3)
    save_controlnet(net, cn_dir / "whole.safetensors", "small", dtype=torch.float32)
    unet = loader("tiny.safetensors").family.network(loader("tiny.safetensors").model).state_dict()
    diff, shared = {"difference": torch.tensor([])}, 0
    for name, w in net.state_dict().items():
        base = unet.get(name)
        if base is not None and base.shape == w.shape:
            w, shared = w - base.float(), shared + 1
        diff["control_model." + name] = w.contiguous()
    assert shared > 10  # time_embed, input_blocks, middle_block
    save_file(diff, str(cn_dir / "diff.safetensors"))
    return tmp, folders, loader


def _weights(loaded):
    return loaded.net.state_dict()


def test_diff_file_loads_into_the_whole_network(env):
    _, folders, loader = env
    pipe = loader("tiny.safetensors")
    whole = _weights(load_controlnet(folders.resolve("controlnet", "whole.safetensors"), pipe))
    diff_path = folders.resolve("controlnet", "diff.safetensors")
    made = _weights(load_controlnet(diff_path, pipe))
    assert made.keys() == whole.keys()
    for name in whole:
        torch.testing.assert_close(made[name], whole[name], rtol=0, atol=1e-6)
    with pytest.raises(CheckpointError, match="is a diff ControlNet") as e:
        load_controlnet(diff_path, TINY)  # a config, no model to add to
    assert "\n" not in str(e.value)


def _graph(loader_node: dict) -> dict:
    g = default_graph(steps=2)
    g["10"] = loader_node
    g["11"] = {"class_type": "LoadImage", "inputs": {"image": "edges.png"}}
    g["12"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
        "positive": ["6", 0], "negative": ["7", 0], "control_net": ["10", 0], "image": ["11", 0],
        "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}}
    g["3"]["inputs"]["positive"], g["3"]["inputs"]["negative"] = ["12", 0], ["12", 1]
    return g


def _pixels(prompt, ctx) -> np.ndarray:
    (entry,) = execute(copy.deepcopy(prompt), ctx)["9"]["images"]
    return np.asarray(Image.open(ctx.outputs_dir / entry["subfolder"] / entry["filename"]), dtype=np.float32)


def test_diff_loader_graph_equals_the_whole_file(env, tmp_path):
    _, folders, loader = env
    ctx = make_ctx(folders, loader, tmp_path)
    ctx.inputs_dir.mkdir(parents=True)
    im = Image.new("RGB", (64, 64))
    ImageDraw.Draw(im).rectangle((10, 12, 40, 50), outline=(255, 255, 255), width=2)
    im.save(ctx.inputs_dir / "edges.png")
    whole = _pixels(_graph({"class_type": "ControlNetLoader", "inputs": {"control_net_name": "whole.safetensors"}}),
                    ctx)
    diff = _pixels(_graph({"class_type": "DiffControlNetLoader",
                           "inputs": {"model": ["4", 0], "control_net_name": "diff.safetensors"}}), ctx)
    plain = _pixels(default_graph(steps=2), ctx)
    assert np.abs(whole - plain).mean() > 0.5  # the ControlNet steers
    assert np.abs(diff - whole).max() <= 1.0
    # a whole file through DiffControlNetLoader is ControlNetLoader's
    again = _pixels(_graph({"class_type": "DiffControlNetLoader",
                            "inputs": {"model": ["4", 0], "control_net_name": "whole.safetensors"}}), ctx)
    assert np.array_equal(again, whole)
