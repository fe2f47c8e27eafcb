"""Prompt validation answers like ComfyUI's POST /prompt: the 400 body and per-node errors."""
import copy

import pytest
from workflow_fixtures import Loader, default_graph, make_ctx, make_models

from opensd.workflows import GraphError, object_info, validate_prompt


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wfv")
    folders = make_models(tmp / "models")
    c = make_ctx(folders, Loader(folders), tmp)
    c.inputs_dir.mkdir(parents=True)
    return c


def _errors(prompt, ctx):
    with pytest.raises(GraphError) as e:
        validate_prompt(prompt, ctx)
    return e.value.payload


def _one(payload, node_id):
    assert payload["error"]["type"] == "prompt_outputs_failed_validation"
    entry = payload["node_errors"][node_id]
    assert entry["dependent_outputs"] == ["9"]
    return entry["errors"]


def test_the_default_graph_is_valid_and_meta_is_ignored(ctx):
    g = default_graph()
    g["9"]["_meta"] = {"title": "Save Image"}
    assert validate_prompt(g, ctx) == {}
    assert validate_prompt(g) == {}  # no context: names from folders are not checked


def test_unknown_node_type_is_an_invalid_prompt(ctx):
    g = default_graph()
    g["10"] = {"class_type": "NoSuchNode", "inputs": {}}
    p = _errors(g, ctx)
    assert p["error"]["type"] == "invalid_prompt"
    assert p["error"]["message"] == "Cannot execute because node NoSuchNode does not exist."
    assert p["error"]["details"] == "Node ID '#10'" and p["node_errors"] == {}
    g["10"] = {"inputs": {}}
    assert "class_type" in _errors(g, ctx)["error"]["message"]


def test_prompt_without_outputs(ctx):
    g = default_graph()
    del g["9"]
    assert _errors(g, ctx)["error"]["type"] == "prompt_no_outputs"
    assert _errors([], ctx)["error"]["type"] == "invalid_prompt"


@pytest.mark.parametrize("link, needle", [(["99", 0], "'99' does not exist"), (["4", 7], "out of range"),
                                          (["4", "x"], "out of range")])
def test_bad_links(ctx, link, needle):
    g = default_graph(model=link)
    (err,) = _one(_errors(g, ctx), "3")
    assert err["type"] == "exception_during_inner_validation" and needle in err["details"]


def test_link_must_be_a_pair(ctx):
    (err,) = _one(_errors(default_graph(model=["4"]), ctx), "3")
    assert err["type"] == "bad_linked_input"


def test_type_mismatch(ctx):
    (err,) = _one(_errors(default_graph(model=["4", 2]), ctx), "3")
    assert err["type"] == "return_type_mismatch"
    assert err["details"] == "model, received_type(VAE) mismatch input_type(MODEL)"


def test_missing_required_input_and_literal_for_a_link_type(ctx):
    g = default_graph()
    del g["3"]["inputs"]["steps"]
    (err,) = _one(_errors(g, ctx), "3")
    assert err["type"] == "required_input_missing" and err["details"] == "steps"
    (err,) = _one(_errors(default_graph(model="model.safetensors"), ctx), "3")
    assert err["type"] == "bad_linked_input"


@pytest.mark.parametrize("inputs, kind", [
    ({"sampler_name": "euler_magic"}, "value_not_in_list"),
    ({"scheduler": "Karras"}, "value_not_in_list"),
    ({"steps": 0}, "value_smaller_than_min"),
    ({"denoise": 1.5}, "value_bigger_than_max"),
    ({"cfg": "lots"}, "invalid_input_type"),
])
def test_bad_values(ctx, inputs, kind):
    (err,) = _one(_errors(default_graph(**inputs), ctx), "3")
    assert err["type"] == kind and err["extra_info"]["input_name"] == next(iter(inputs))


def test_numbers_given_as_strings_are_converted(ctx):
    assert validate_prompt(default_graph(steps="2", cfg="7.5"), ctx) == {}


@pytest.mark.parametrize("name", ["nope.safetensors", "../checkpoints/tiny.safetensors", "/etc/passwd",
                                  "..\\..\\tiny.safetensors"])
def test_bad_checkpoint_names(ctx, name):
    g = default_graph()
    g["4"]["inputs"]["ckpt_name"] = name
    p = _errors(g, ctx)
    (err,) = p["node_errors"]["4"]["errors"]
    assert err["type"] == "value_not_in_list" and name in err["details"]
    assert "3" not in p["node_errors"]  # downstream nodes are invalid but carry no errors of their own


@pytest.mark.parametrize("prefix", ["../evil", "/tmp/evil", "a/../../evil", "C:/evil", ""])
def test_save_prefix_may_not_leave_the_output_folder(ctx, prefix):
    g = default_graph()
    g["9"]["inputs"]["filename_prefix"] = prefix
    (err,) = _errors(g, ctx)["node_errors"]["9"]["errors"]
    assert err["type"] == "custom_validation_failed"


@pytest.mark.parametrize("name", ["missing.png", "../secret.png", "/etc/hosts"])
def test_load_image_only_from_the_input_folder(ctx, name):
    g = default_graph()
    g["10"] = {"class_type": "LoadImage", "inputs": {"image": name}}
    g["8"]["inputs"]["samples"] = ["11", 0]
    g["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    (err,) = _errors(g, ctx)["node_errors"]["10"]["errors"]
    assert err["type"] == "custom_validation_failed" and "Invalid image file" in err["details"]


def test_cycle_is_reported(ctx):
    g = default_graph()
    g["8"]["inputs"]["samples"] = ["12", 0]
    g["12"] = {"class_type": "LatentUpscale", "inputs": {"samples": ["13", 0], "upscale_method": "bilinear",
                                                         "width": 64, "height": 64, "crop": "disabled"}}
    g["13"] = {"class_type": "LatentUpscale", "inputs": {"samples": ["12", 0], "upscale_method": "bilinear",
                                                         "width": 64, "height": 64, "crop": "disabled"}}
    p = _errors(g, ctx)
    assert any(e["type"] == "dependency_cycle" for n in p["node_errors"].values() for e in n["errors"])


def test_one_bad_output_does_not_block_a_good_one(ctx):
    g = default_graph()
    g["20"] = {"class_type": "PreviewImage", "inputs": {"images": ["8", 5]}}
    errors = validate_prompt(g, ctx)
    assert list(errors) == ["20"] and errors["20"]["dependent_outputs"] == ["20"]


def test_object_info_shape(ctx):
    info = object_info(ctx)
    expected = {"CheckpointLoaderSimple", "CLIPTextEncode", "EmptyLatentImage", "KSampler", "KSamplerAdvanced",
                "VAEDecode", "VAEEncode", "VAEEncodeForInpaint", "SetLatentNoiseMask", "LatentUpscale",
                "ImageScale", "LoadImage", "SaveImage", "PreviewImage", "LoraLoader", "ImagePadForOutpaint"}
    assert expected <= set(info)
    ks = info["KSampler"]
    assert ks["output"] == ["LATENT"] and ks["output_node"] is False and ks["category"] == "sampling"
    assert ks["input_order"]["required"][:3] == ["model", "seed", "steps"]
    assert "euler_ancestral" in ks["input"]["required"]["sampler_name"][0]
    assert "karras" in ks["input"]["required"]["scheduler"][0]
    assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == ["tiny.safetensors"]
    assert info["CheckpointLoaderSimple"]["output"] == ["MODEL", "CLIP", "VAE"]
    assert info["SaveImage"]["output_node"] is True
    assert object_info()["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == []
    for node in info.values():
        assert set(node) >= {"input", "input_order", "output", "output_is_list", "output_name", "name",
                             "display_name", "description", "category", "output_node"}
    copy.deepcopy(info)  # plain data
