"""ComfyUI's DynamicCombo inputs (a combo whose chosen option brings inputs of its own) and the core node
using them, ResizeImageMaskNode (comfy_extras/nodes_post_processing.py). object_info is compared
exactly with what ComfyUI's V3 schema serialises (comfy_api/latest/_io.py: DynamicCombo.Input.as_dict,
DynamicCombo.Option.as_dict with create_input_dict_v1; inner inputs in the V1 form used throughout
here); graphs in API format send the combo under its name and the option's inputs as
"<combo>.<input>" ("resize_type.multiplier"), as ComfyUI's frontend does; the node gets the dict
ComfyUI's build_nested_inputs makes."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from test_workflows_object_info import check_object_info

from opensd.library.models_dir import ModelFolders
from opensd.workflows import ExecutionContext, GraphError, execute, object_info, validate_prompt
from opensd.workflows.autogrow import Autogrow
from opensd.workflows.dynamic_combo import DynamicCombo, Option
from opensd.workflows.dynamic_inputs import input_specs, nest, stray_inputs
from opensd.workflows.nodes_image_resize import resize_image_mask
from opensd.workflows.types import NodeDef


def size(default, tooltip, lo=0):
    return ["INT", {"default": default, "min": lo, "max": 16384, "step": 1, "tooltip": tooltip}]


CROP = [["disabled", "center"], {"default": "center", "tooltip": "How to handle aspect ratio mismatch: 'disabled' "
                                 "stretches to fit, 'center' crops to maintain aspect ratio."}]
RESIZE_OPTIONS = [
    {"key": "scale dimensions", "inputs": {"required": {
        "width": size(512, "Target width in pixels. Set to 0 to auto-calculate from height while preserving aspect "
                           "ratio."),
        "height": size(512, "Target height in pixels. Set to 0 to auto-calculate from width while preserving aspect "
                            "ratio."),
        "crop": CROP}}},
    {"key": "scale by multiplier", "inputs": {"required": {
        "multiplier": ["FLOAT", {"default": 1.0, "min": 0.01, "max": 8.0, "step": 0.01,
                                 "tooltip": "Scale factor (e.g., 2.0 doubles size, 0.5 halves size)."}]}}},
    {"key": "scale longer dimension", "inputs": {"required": {
        "longer_size": size(512, "The longer edge will be resized to this value. Aspect ratio is preserved.")}}},
    {"key": "scale shorter dimension", "inputs": {"required": {
        "shorter_size": size(512, "The shorter edge will be resized to this value. Aspect ratio is preserved.")}}},
    {"key": "scale width", "inputs": {"required": {
        "width": size(512, "Target width in pixels. Height auto-adjusts to preserve aspect ratio.")}}},
    {"key": "scale height", "inputs": {"required": {
        "height": size(512, "Target height in pixels. Width auto-adjusts to preserve aspect ratio.")}}},
    {"key": "scale total pixels", "inputs": {"required": {
        "megapixels": ["FLOAT", {"default": 1.0, "min": 0.01, "max": 16.0, "step": 0.01,
                                 "tooltip": "Target total megapixels (e.g., 1.0 \u2248 1024\u00d71024). Aspect "
                                            "ratio is preserved."}],
        "multiple": size(1, "Round width and height to the nearest multiple of this number.", lo=1)}}},
    {"key": "match size", "inputs": {"required": {
        "match": ["IMAGE,MASK", {"tooltip": "Resize input to match the dimensions of this reference image or mask."}],
        "crop": CROP}}},
    {"key": "scale to multiple", "inputs": {"required": {
        "multiple": size(8, "Resize so width and height are divisible by this number. Useful for latent alignment "
                            "(e.g., 8 or 64).", lo=1)}}},
]
EXPECTED = {
    "ResizeImageMaskNode": (
        {"input": ["COMFY_MATCHTYPE_V3", {"template": {"template_id": "input_type", "allowed_types": "IMAGE,MASK"}}],
         "resize_type": ["COMFY_DYNAMICCOMBO_V3", {
             "tooltip": "Select how to resize: by exact dimensions, scale factor, matching another image, etc.",
             "options": RESIZE_OPTIONS}],
         "scale_method": [["nearest-exact", "bilinear", "area", "bicubic", "lanczos"],
                          {"default": "area", "tooltip": "Interpolation algorithm. 'area' is best for downscaling, "
                                                         "'lanczos' for upscaling, 'nearest-exact' for pixel art."}]},
        ["COMFY_MATCHTYPE_V3"], "image/transform", "Resize Image/Mask", "comfy_extras.nodes_post_processing",
        {"output_name": ["resized"], "description": "Resize an image or mask using various scaling methods."}),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_object_info_matches_comfyui(name):
    check_object_info(name, EXPECTED[name])


# --- the mechanism on a node of its own (not registered) ------------------------------------------

NESTED = NodeDef("Nested", lambda call, **kw: (kw,), {
    "mode": (DynamicCombo((
        Option("plain", {}),
        Option("sized", {"width": ("INT", {"default": 8, "min": 1})}, {"note": ("STRING", {})}),
        Option("grown", {"inner": (DynamicCombo((Option("a", {"x": ("FLOAT", {})}), Option("b"))), {}),
                         "images": (Autogrow("image", ("IMAGE", {}), prefix="image", min=1, max=3),)}),
    )), {}),
    "seed": ("INT", {})}, optional={"extra": (DynamicCombo((Option("on", {"k": ("INT", {})}),)), {})})


def test_declared_inputs_follow_the_chosen_options():
    def names(inputs):
        return [(n, r) for n, _, r in input_specs(NESTED, inputs)]
    assert names({}) == [("mode", True), ("seed", True), ("extra", False)]
    assert names({"mode": "sized"}) == [("mode", True), ("mode.width", True), ("mode.note", False), ("seed", True),
                                        ("extra", False)]
    assert names({"mode": "grown", "mode.inner": "a", "extra": "on"}) == [
        ("mode", True), ("mode.inner", True), ("mode.inner.x", True), ("mode.images.image0", True),
        ("mode.images.image1", False), ("mode.images.image2", False), ("seed", True), ("extra", False),
        ("extra.k", True)]
    assert names({"mode": ["n", 0]}) == names({"mode": "nope"}) == names({})  # a link or a wrong key brings nothing


def test_values_reach_the_node_in_comfyuis_nested_shape():
    # build_nested_inputs: the option's inputs (None for one not sent), then the key under the combo's name
    assert nest(NESTED, {"mode": "sized", "mode.width": 4, "seed": 1}) == {
        "seed": 1, "mode": {"width": 4, "note": None, "mode": "sized"}}
    assert list(nest(NESTED, {"mode": "sized", "mode.width": 4, "seed": 1})["mode"]) == ["width", "note", "mode"]
    assert nest(NESTED, {"mode": "plain", "seed": 1}) == {"seed": 1, "mode": {"mode": "plain"}}
    got = nest(NESTED, {"mode": "grown", "mode.inner": "a", "mode.inner.x": 0.5, "mode.images.image2": "i2",
                        "mode.images.image0": "i0", "seed": 2, "extra": "on", "extra.k": 3, "HIDDEN": "h"})
    assert got == {"seed": 2, "HIDDEN": "h", "mode": {"inner": {"x": 0.5, "inner": "a"},
                                                      "images": {"image0": "i0", "image2": "i2"}, "mode": "grown"},
                   "extra": {"k": 3, "extra": "on"}}
    assert list(got["mode"]["images"]) == ["image0", "image2"]
    # a node taking its inputs as lists (INPUT_IS_LIST) gets every value as a list, the choice too
    assert nest(NESTED, {"mode": ["sized"], "mode.width": [4, 5], "seed": [1]}) == {
        "seed": [1], "mode": {"width": [4, 5], "note": None, "mode": ["sized"]}}


def test_inputs_the_chosen_option_does_not_bring_are_named():
    strays = stray_inputs(NESTED, {"mode": "plain", "mode.width": 3, "seed": 1})
    assert strays == [("mode.width", "Unknown input", "mode.width: mode 'plain' takes no inputs of its own")]
    strays = stray_inputs(NESTED, {"mode": "grown", "mode.inner": "b", "mode.inner.x": 1, "mode.images.image3": 1,
                                   "mode.images.image0": 1, "mode.width": 2})
    assert [(k, m) for k, m, _ in strays] == [("mode.inner.x", "Unknown input"),
                                              ("mode.images.image3", "Too many inputs"), ("mode.width", "Unknown input")]
    assert "only mode.images, mode.inner" in strays[2][2]
    assert stray_inputs(NESTED, {"mode": "nope", "mode.width": 1}) == []  # the combo's own error says it


def test_optional_option_inputs_serialise_beside_required_and_bad_declarations_fail():
    info = json.loads(json.dumps(DynamicCombo((Option("o", {"a": ("INT", {})}, {"b": ("FLOAT", {"min": 0.0})}),)).json(
        lambda spec: list(spec))))
    assert info == [{"key": "o", "inputs": {"required": {"a": ["INT", {}]},
                                            "optional": {"b": ["FLOAT", {"min": 0.0}]}}}]
    for bad in ((), (Option("x"), Option("x"))):
        with pytest.raises(ValueError):
            DynamicCombo(bad)


# --- ResizeImageMaskNode --------------------------------------------------------------------------


@pytest.fixture
def ctx(tmp_path):
    return ExecutionContext(ModelFolders(None, include_builtin=False), None, tmp_path / "out", tmp_path / "in",
                            temp_dir=tmp_path / "temp")


def _graph(resize_type, source="image", scale_method="area", **options):
    inputs = {"input": [source, 0], "resize_type": resize_type, "scale_method": scale_method,
              **{f"resize_type.{k}": v for k, v in options.items()}}
    return {"image": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 6, "batch_size": 2, "color": 0}},
            "mask": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 8, "height": 6}},
            "ref": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 5, "height": 7}},
            "r": {"class_type": "ResizeImageMaskNode", "inputs": inputs},
            "shown": {"class_type": "MaskToImage" if source == "mask" else "ImageInvert",
                      "inputs": {"mask" if source == "mask" else "image": ["r", 0]}},
            "s": {"class_type": "GetImageSize", "inputs": {"image": ["shown", 0]}},
            "w": {"class_type": "PreviewAny", "inputs": {"source": ["s", 0]}},
            "h": {"class_type": "PreviewAny", "inputs": {"source": ["s", 1]}},
            "b": {"class_type": "PreviewAny", "inputs": {"source": ["s", 2]}}}


@pytest.mark.parametrize("source", ["image", "mask"])
@pytest.mark.parametrize("resize_type, options, want", [
    ("scale dimensions", {"width": 4, "height": 0, "crop": "disabled"}, (4, 3)),
    ("scale dimensions", {"width": 0, "height": 0, "crop": "center"}, (8, 6)),  # both 0: unchanged
    ("scale dimensions", {"width": 3, "height": 5, "crop": "center"}, (3, 5)),
    ("scale by multiplier", {"multiplier": 1.5}, (12, 9)),
    ("scale longer dimension", {"longer_size": 16}, (16, 12)),
    ("scale shorter dimension", {"shorter_size": 3}, (4, 3)),
    ("scale width", {"width": 4}, (4, 3)),
    ("scale height", {"height": 3}, (4, 3)),
    ("scale total pixels", {"megapixels": 0.01, "multiple": 1}, (118, 89)),  # int(10485.76) px: sqrt(10485/48) = 14.78
    ("scale total pixels", {"megapixels": 0.01, "multiple": 4}, (120, 88)),
    ("match size", {"match": ["ref", 0], "crop": "center"}, (5, 7)),
    ("scale to multiple", {"multiple": 4}, (8, 4)),
    ("scale to multiple", {"multiple": 16}, (8, 6)),  # a side below the multiple: unchanged
])
def test_every_resize_type_in_a_graph(ctx, source, resize_type, options, want):
    ui = execute(_graph(resize_type, source, **options), ctx)
    batch = 2 if source == "image" else 1
    assert (int(ui["w"]["text"][0]), int(ui["h"]["text"][0]), int(ui["b"]["text"][0])) == (*want, batch)


def _interp(x, h, w, mode):
    return F.interpolate(x.movedim(-1, 1), size=(h, w), mode=mode).movedim(1, -1)


def test_pixels_as_comfyui_computes_them():
    image, mask = torch.rand(2, 6, 8, 3), torch.rand(1, 6, 8)
    got = resize_image_mask(None, image, {"multiplier": 0.5, "resize_type": "scale by multiplier"}, "area")[0]
    torch.testing.assert_close(got, _interp(image, 3, 4, "area"))
    # centre crop to the target's aspect first: 8x6 (4:3) to 3x3 takes columns 1..6
    got = resize_image_mask(None, image, {"width": 3, "height": 3, "crop": "center", "resize_type": "scale dimensions"},
                            "bilinear")[0]
    torch.testing.assert_close(got, _interp(image[:, :, 1:7], 3, 3, "bilinear"))
    got = resize_image_mask(None, mask, {"width": 3, "height": 3, "crop": "disabled",
                                         "resize_type": "scale dimensions"}, "bicubic")[0]
    torch.testing.assert_close(got, _interp(mask[..., None], 3, 3, "bicubic")[..., 0])  # no clamp, as ComfyUI
    # scale to multiple 4 on 8x6: cover 8x4 (6 * 1.0 rows), then the centre rows 1..4
    got = resize_image_mask(None, image, {"multiple": 4, "resize_type": "scale to multiple"}, "area")[0]
    torch.testing.assert_close(got, image[:, 1:5])
    # 10x7 to a multiple of 3: 9x6 covered by 9 x ceil(7 * 0.9) = 9x7, then rows 0..5
    odd = torch.rand(1, 7, 10, 3)
    got = resize_image_mask(None, odd, {"multiple": 3, "resize_type": "scale to multiple"}, "bilinear")[0]
    torch.testing.assert_close(got, _interp(odd, 7, 9, "bilinear")[:, 0:6])
    assert math.isclose(float(got.mean()), float(_interp(odd, 7, 9, "bilinear")[:, 0:6].mean()))
    got = resize_image_mask(None, mask, {"match": image, "crop": "disabled", "resize_type": "match size"},
                            "nearest-exact")
    assert got[0].shape == (1, 6, 8) and torch.equal(got[0], mask)
    lanczos = resize_image_mask(None, image, {"longer_size": 4, "resize_type": "scale longer dimension"}, "lanczos")[0]
    assert lanczos.shape == (2, 3, 4, 3)


# --- validation -----------------------------------------------------------------------------------


def _errors(graph, ctx):
    with pytest.raises(GraphError) as e:
        validate_prompt(graph, ctx)
    json.dumps(e.value.payload)  # ComfyUI's 400 body, as JSON
    errors = e.value.payload["node_errors"]["r"]["errors"]
    return [(x["type"], x["extra_info"].get("input_name"), x["details"]) for x in errors]


def test_missing_wrong_and_extra_option_inputs_are_refused(ctx):
    assert _errors(_graph("scale by multiplier"), ctx) == [
        ("required_input_missing", "resize_type.multiplier", "resize_type.multiplier")]
    assert _errors(_graph("scale dimensions", width=4, crop="center"), ctx) == [
        ("required_input_missing", "resize_type.height", "resize_type.height")]
    (err,) = _errors(_graph("scale by multiplier", multiplier="big"), ctx)
    assert err[:2] == ("invalid_input_type", "resize_type.multiplier")
    (err,) = _errors(_graph("scale width", width=-1), ctx)
    assert err[:2] == ("value_smaller_than_min", "resize_type.width")
    (err,) = _errors(_graph("scale dimensions", width=4, height=4, crop="sideways"), ctx)
    assert err == ("value_not_in_list", "resize_type.crop",
                   "resize_type.crop: 'sideways' not in ['disabled', 'center']")
    assert _errors(_graph("scale by multiplier", multiplier=2.0, width=5), ctx) == [
        ("invalid_input_name", "resize_type.width",
         "resize_type.width: resize_type 'scale by multiplier' takes only resize_type.multiplier")]
    g = _graph("match size", crop="center", match=["latent", 0])
    g["latent"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    (err,) = _errors(g, ctx)
    assert err == ("return_type_mismatch", "resize_type.match",
                   "resize_type.match, received_type(LATENT) mismatch input_type(IMAGE,MASK)")


def test_the_choice_itself_must_be_one_of_the_options_sent_as_a_value(ctx):
    (err,) = _errors(_graph("scale sideways", multiplier=2.0), ctx)
    assert err[:2] == ("value_not_in_list", "resize_type") and "'scale sideways' not in ['scale dimensions'" in err[2]
    g = _graph("scale by multiplier", multiplier=2.0)
    del g["r"]["inputs"]["resize_type"]
    assert _errors(g, ctx) == [("required_input_missing", "resize_type", "resize_type")]
    g = _graph("scale by multiplier", multiplier=2.0)
    g["r"]["inputs"]["resize_type"] = ["text", 0]
    g["text"] = {"class_type": "PrimitiveString", "inputs": {"value": "scale by multiplier"}}
    (err,) = _errors(g, ctx)
    assert err == ("bad_linked_input", "resize_type", "resize_type: send one of scale dimensions, scale by multiplier, "
                   "scale longer dimension, scale shorter dimension, scale width, scale height, scale total pixels, "
                   "match size, scale to multiple")


def test_a_linked_option_number_keeps_its_bounds_at_run_time(ctx):
    from opensd.workflows import NodeError
    g = _graph("scale width", width=["n", 0])
    g["n"] = {"class_type": "PrimitiveInt", "inputs": {"value": 99999}}
    with pytest.raises(NodeError, match=r"resize_type.width: 99999 from node n is above the input's maximum of 16384"):
        execute(g, ctx)


def test_over_http_object_info_and_a_prompt(tmp_path):
    import time

    from fastapi.testclient import TestClient
    from server_live import BASE

    from opensd.server.app import create_app
    from opensd.server.settings import Settings

    settings = Settings(outputs_dir=tmp_path / "out", api_token=None)
    with TestClient(create_app(settings), base_url=BASE) as c:
        info = c.get("/object_info/ResizeImageMaskNode").json()["ResizeImageMaskNode"]
        assert info["input"]["required"]["resize_type"][1]["options"] == RESIZE_OPTIONS
        assert object_info(None, "ResizeImageMaskNode")["ResizeImageMaskNode"] == info
        pid = c.post("/prompt", json={"prompt": _graph("scale longer dimension", longer_size=4)}).json()["prompt_id"]
        for _ in range(600):
            if (history := c.get(f"/history/{pid}").json()):
                break
            time.sleep(0.05)
        assert history[pid]["outputs"]["w"]["text"] == ["4"] and history[pid]["outputs"]["h"]["text"] == ["3"]


def test_a_list_into_the_node_runs_it_once_per_item(ctx):
    g = _graph("scale by multiplier", source="batches", multiplier=0.5)
    g["batches"] = {"class_type": "RebatchImages", "inputs": {"images": ["image", 0], "batch_size": 1}}
    ui = execute(g, ctx)
    assert ui["w"]["text"] == ["4", "4"] and ui["b"]["text"] == ["1", "1"]  # two calls, one image each
