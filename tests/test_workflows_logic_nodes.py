"""ComfySwitchNode, ComfyNotNode and ComfyNumberConvert (comfy_extras.nodes_logic,
nodes_number_convert), GetLatentSize and ImageCropV2 (nodes_images): their results as ComfyUI's code
gives them, their errors (a BOUNDING_BOX widget value checked with the graph), and the switch routing
an IMAGE (a MatchType link) through a graph."""
import pytest
import torch
from PIL import Image

from opensd.errors import InvalidArgument
from opensd.library.models_dir import ModelFolders
from opensd.workflows import ExecutionContext, GraphError, execute
from opensd.workflows import nodes_image_ops as O
from opensd.workflows import nodes_logic as L


def test_switch_picks_a_branch_and_none_for_a_missing_one():
    assert L.switch(None, True, on_false="f", on_true="t") == ("t",)
    assert L.switch(None, False, on_false="f", on_true="t") == ("f",)
    assert L.switch(None, True, on_false="f") == (None,)
    assert L.switch(None, False, on_true="t") == (None,)


def test_not_uses_python_truthiness():
    assert [L.logical_not(None, v)[0] for v in (0, 1, 0.0, "", "x", [], [0], {"samples": 1}, False)] == [
        True, False, True, True, False, True, False, False, True]
    assert L.logical_not(None, torch.tensor([0.0])) == (True,)
    with pytest.raises(InvalidArgument, match=r"^value: a tensor of shape \(1, 2\) is neither true nor false"):
        L.logical_not(None, torch.zeros(1, 2))


def test_number_convert_as_comfyui():
    assert L.number_convert(None, True) == (1.0, 1)
    assert L.number_convert(None, 7) == (7.0, 7)
    assert L.number_convert(None, -2.75) == (-2.75, -2)
    assert L.number_convert(None, " 12 ") == (12.0, 12)
    assert L.number_convert(None, "3.9") == (3.9, 3)
    assert L.number_convert(None, "1e3") == (1000.0, 1000)
    for bad, message in (("", "an empty text"), ("abc", "'abc' is not a number"), ("inf", "inf is not a finite"),
                         ("nan", "nan is not a finite"), (float("inf"), "inf is not a finite"),
                         ("1" * 5000, "too long"), (torch.zeros(1), "a Tensor is not a number")):
        with pytest.raises(InvalidArgument, match=message):
            L.number_convert(None, bad)


def test_get_latent_size():
    assert O.get_latent_size(None, {"samples": torch.zeros(2, 4, 8, 12)}) == (12, 8, 1, 2)
    assert O.get_latent_size(None, {"samples": torch.zeros(3, 16, 5, 6, 7)}) == (7, 6, 5, 3)
    with pytest.raises(InvalidArgument, match=r"^latent: samples of shape \(4, 8\)"):
        O.get_latent_size(None, {"samples": torch.zeros(4, 8)})


def _ctx(tmp_path):
    return ExecutionContext(ModelFolders(None, include_builtin=False), None, tmp_path / "out", tmp_path / "in",
                            temp_dir=tmp_path / "temp")


def test_switch_routes_images_through_a_graph(tmp_path):
    def graph(flag):
        return {"w": {"class_type": "EmptyImage", "inputs": {"width": 3, "height": 2, "batch_size": 1, "color": 0}},
                "b": {"class_type": "EmptyImage", "inputs": {"width": 5, "height": 2, "batch_size": 1, "color": 0}},
                "f": {"class_type": "PrimitiveBoolean", "inputs": {"value": flag}},
                "n": {"class_type": "ComfyNotNode", "inputs": {"value": ["f", 0]}},
                "s": {"class_type": "ComfySwitchNode", "inputs": {"switch": ["n", 0], "on_true": ["w", 0],
                                                                  "on_false": ["b", 0]}},
                "o": {"class_type": "PreviewImage", "inputs": {"images": ["s", 0]}}}
    for flag, width in ((False, 3), (True, 5)):
        shown = execute(graph(flag), _ctx(tmp_path))["o"]["images"][0]
        with Image.open(tmp_path / "temp" / shown["subfolder"] / shown["filename"]) as im:
            assert im.size == (width, 2)


def test_number_convert_and_latent_size_in_a_graph(tmp_path):
    g = {"l": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 96, "batch_size": 2}},
         "z": {"class_type": "GetLatentSize", "inputs": {"latent": ["l", 0]}},
         "c": {"class_type": "ComfyNumberConvert", "inputs": {"value": ["z", 1]}},
         "p": {"class_type": "PreviewAny", "inputs": {"source": ["c", 0]}}}
    assert list(execute(g, _ctx(tmp_path))["p"]["text"]) == ["12.0"]
    g["c"]["inputs"]["value"] = ["l", 0]  # a LATENT is not one of INT, FLOAT, STRING, BOOLEAN
    with pytest.raises(GraphError):
        execute(g, _ctx(tmp_path))


def test_image_crop_v2_crops_a_bounding_box_and_previews_it(tmp_path):
    img = torch.rand(2, 10, 12, 3)
    g = {"i": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
         "c": {"class_type": "ImageCropV2", "inputs": {"image": ["i", 0],
                                                        "crop_region": {"x": 3, "y": 2, "width": 5, "height": 4}}},
         "s": {"class_type": "GetImageSize", "inputs": {"image": ["c", 0]}},
         "p": {"class_type": "PreviewAny", "inputs": {"source": ["s", 0]}}}
    ctx = _ctx(tmp_path)
    call = type("Call", (), {"ctx": ctx})()
    out = O.image_crop_v2(call, img, {"x": 3, "y": 2, "width": 5, "height": 4})
    torch.testing.assert_close(out["result"][0], img[:, 2:6, 3:8])
    assert len(out["ui"]["images"]) == 2 and out["ui"]["images"][0]["type"] == "temp"
    far = O.image_crop_v2(call, img, {"x": 50, "y": 50, "width": 5, "height": 5})["result"][0]
    torch.testing.assert_close(far, img[:, 9:, 11:])  # the corner clamped to the last pixel, as ComfyUI
    (tmp_path / "in").mkdir()
    Image.new("RGB", (12, 10)).save(tmp_path / "in" / "x.png")
    assert list(execute(g, ctx)["p"]["text"]) == ["5"]
    for bad in ({"x": -1}, {"width": 0}, {"x": 1.5}, {"x": 1, "depth": 2}, "box"):
        g["c"]["inputs"]["crop_region"] = bad
        with pytest.raises(GraphError) as e:
            execute(g, ctx)
        error = e.value.payload["node_errors"]["c"]["errors"][0]
        assert error["message"] == "Failed to convert an input value to a BOUNDING_BOX value", bad
