"""RebatchLatents / RebatchImages (ComfyUI's comfy_extras.nodes_rebatch) and the executor's list
values they need (INPUT_IS_LIST, OUTPUT_IS_LIST, nodes run once per item of a list): batches and
batch indices by hand, and a rebatched graph saving the images the whole batch makes."""
import copy

import numpy as np
import pytest
import torch
from PIL import Image
from workflow_fixtures import Loader, default_graph, make_ctx, make_models

from opensd.errors import InvalidArgument
from opensd.workflows import execute, object_info
from opensd.workflows.nodes_rebatch import rebatch_images, rebatch_latents
from opensd.workflows.types import ListOutput


def test_rebatch_latents_joins_runs_of_one_size_and_keeps_indices_and_masks():
    a = torch.arange(3.0).reshape(3, 1, 1, 1).expand(3, 4, 2, 2)
    half = torch.full((1, 1, 16, 16), 0.5)
    b = {"samples": 10 + torch.arange(2.0).reshape(2, 1, 1, 1).expand(2, 4, 2, 2), "noise_mask": half,
         "batch_index": [7, 8]}
    c = torch.zeros(1, 4, 3, 3)
    (out,) = rebatch_latents(None, [{"samples": a}, b, {"samples": c}], [2])
    assert [o["samples"][:, 0, 0, 0].tolist() for o in out] == [[0, 1], [2, 10], [11], [0]]
    assert [o["batch_index"] for o in out] == [[0, 1], [2, 7], [8], [5]]  # 3 + 2 images came before c
    assert "noise_mask" not in out[0] and "noise_mask" not in out[3]  # all ones: dropped
    assert out[1]["noise_mask"].shape == (2, 1, 16, 16)
    assert out[1]["noise_mask"][0].eq(1).all() and out[1]["noise_mask"][1].eq(0.5).all()
    assert out[2]["noise_mask"].eq(0.5).all()


def test_rebatch_images_cuts_frames_in_order():
    x = torch.arange(5.0).reshape(5, 1, 1, 1).expand(5, 2, 2, 3)
    (out,) = rebatch_images(None, [x[:3], x[3:]], [2])
    assert [o[:, 0, 0, 0].tolist() for o in out] == [[0, 1], [2, 3], [4]]
    (ok,) = rebatch_images(None, [x[:2], torch.zeros(2, 4, 4, 3)], [2])  # sizes apart: each its batch
    assert [tuple(o.shape) for o in ok] == [(2, 2, 2, 3), (2, 4, 4, 3)]
    with pytest.raises(InvalidArgument, match="images: images of 2x2x3 and 4x4x3 fall in one batch of 3"):
        rebatch_images(None, [x[:2], torch.zeros(2, 4, 4, 3)], [3])


def test_object_info_says_the_output_is_a_list():
    info = object_info(None)
    for name, kind, category in (("RebatchLatents", "LATENT", "latent/batch"), ("RebatchImages", "IMAGE", "image/batch")):
        entry = info[name]
        assert entry["input"]["required"] == {("latents" if kind == "LATENT" else "images"): [kind],
                                              "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096}]}
        assert entry["output"] == [kind] and entry["output_is_list"] == [True] and entry["category"] == category
        assert entry["python_module"] == "comfy_extras.nodes_rebatch"


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rebatch")
    folders = make_models(tmp / "models")
    return make_ctx(folders, Loader(folders), tmp)


def _saved(graph, ctx) -> list[np.ndarray]:
    out = execute(copy.deepcopy(graph), ctx)["9"]["images"]
    return [np.asarray(Image.open(ctx.outputs_dir / e["subfolder"] / e["filename"]), dtype=np.float32) for e in out]


def test_rebatched_sampling_saves_the_images_of_the_whole_batch(ctx):
    whole = default_graph(steps=2)
    whole["5"]["inputs"]["batch_size"] = 3
    rebatched = copy.deepcopy(whole)
    rebatched["20"] = {"class_type": "RebatchLatents", "inputs": {"latents": ["5", 0], "batch_size": 2}}
    rebatched["3"]["inputs"]["latent_image"] = ["20", 0]
    want, got = _saved(whole, ctx), _saved(rebatched, ctx)
    assert len(want) == len(got) == 3
    assert not np.array_equal(want[0], want[1])  # each image its own noise
    for a, b in zip(want, got):  # batch_index gives every image the noise it had in the whole batch
        assert np.abs(a - b).max() <= 1.0
    # images rebatched one by one run VAEDecode and SaveImage once each
    one = copy.deepcopy(whole)
    one["21"] = {"class_type": "RebatchImages", "inputs": {"images": ["8", 0], "batch_size": 1}}
    one["9"]["inputs"]["images"] = ["21", 0]
    assert all(np.array_equal(a, b) for a, b in zip(_saved(one, ctx), want))


def test_mapping_repeats_the_last_item_of_a_shorter_list():
    from opensd.workflows.executor import _calls
    from opensd.workflows.types import NODES
    node_def = NODES["ImageBlend"]
    calls = _calls(node_def, {"image1": ListOutput([1, 2, 3]), "image2": ListOutput(["a"]), "blend_factor": 0.5})
    assert [(c["image1"], c["image2"], c["blend_factor"]) for c in calls] == [(1, "a", 0.5), (2, "a", 0.5),
                                                                             (3, "a", 0.5)]
    with pytest.raises(InvalidArgument, match="image2: the list of values it was given is empty"):
        _calls(node_def, {"image1": ListOutput([1]), "image2": ListOutput([]), "blend_factor": 0.5})
