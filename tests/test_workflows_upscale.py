"""ComfyUI's UpscaleModelLoader and ImageUpscaleWithModel: object_info as ComfyUI defines them, the
tiling as ComfyUI does it (512-pixel tiles, 32 overlap), and an upscale-then-refine graph end to end."""
import json

import pytest
import torch
from PIL import Image
from upscaler_files import srvgg, write_safetensors
from workflow_fixtures import Loader, make_ctx, make_models

from opensd.upscale import tiled_scale
from opensd.workflows import execute, object_info
from opensd.workflows.nodes_upscale import image_upscale_with_model, upscale_model_loader
from opensd.workflows.types import NodeCall

MODULE = "comfy_extras.nodes_upscale_model"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("up")
    folders = make_models(tmp / "models")
    write_safetensors(tmp / "models" / "upscale_models" / "2x-compact.safetensors", srvgg(scale=2, seed=5))
    (tmp / "input").mkdir()
    image = Image.new("RGB", (32, 24), (230, 80, 20))
    image.paste((20, 60, 200), (8, 4, 24, 20))
    image.save(tmp / "input" / "in.png")
    ctx = make_ctx(folders, Loader(folders), tmp)
    return NodeCall(ctx, "1", {}, lambda kind, data: None), tmp


def _info(name, required, outputs, category, display, ctx=None):
    return {"input": {"required": required}, "input_order": {"required": list(required)}, "output": outputs,
            "output_is_list": [False], "output_name": outputs, "name": name, "display_name": display,
            "description": "", "python_module": MODULE, "category": category, "output_node": False}


def test_object_info_is_comfyuis(env):
    call, _ = env
    assert json.dumps(object_info(None, "UpscaleModelLoader")["UpscaleModelLoader"]) == json.dumps(_info(
        "UpscaleModelLoader", {"model_name": [[]]}, ["UPSCALE_MODEL"], "loaders", "Load Upscale Model"))
    assert json.dumps(object_info(None, "ImageUpscaleWithModel")["ImageUpscaleWithModel"]) == json.dumps(_info(
        "ImageUpscaleWithModel", {"upscale_model": ["UPSCALE_MODEL"], "image": ["IMAGE"]}, ["IMAGE"],
        "image/upscaling", "Upscale Image (using Model)"))
    listed = object_info(call.ctx, "UpscaleModelLoader")["UpscaleModelLoader"]["input"]["required"]["model_name"]
    assert listed == [["2x-compact.safetensors"]]


def test_the_node_tiles_as_comfyui_does(env):
    call, _ = env
    (model,) = upscale_model_loader(call, "2x-compact.safetensors")
    image = torch.rand(1, 16, 600, 3)  # wider than one 512-pixel tile
    events = []
    call = NodeCall(call.ctx, "3", {}, lambda kind, data: events.append(data))
    (out,) = image_upscale_with_model(call, model, image)
    with torch.no_grad():
        want = tiled_scale(image.movedim(-1, -3), model, 2, 512, 32).clamp(0, 1).movedim(-3, -1)
        whole = model(image.movedim(-1, -3)).movedim(-3, -1)
    assert out.shape == (1, 32, 1200, 3) and torch.equal(out, want)
    assert (out - whole).abs().mean() < 1 / 255
    assert [e["value"] for e in events] == [1, 2] and events[-1]["max"] == 2


def test_alpha_is_scaled_beside_the_colours(env):
    call, _ = env
    (model,) = upscale_model_loader(call, "2x-compact.safetensors")
    image = torch.rand(1, 8, 8, 4)
    (out,) = image_upscale_with_model(call, model, image)
    assert out.shape == (1, 16, 16, 4) and torch.allclose(out[..., 3].mean(), image[..., 3].mean(), atol=0.05)


def test_upscale_then_refine_graph(env):
    call, tmp = env
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
        "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "2x-compact.safetensors"}},
        "3": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
        "5": {"class_type": "VAEEncode", "inputs": {"pixels": ["3", 0], "vae": ["4", 2]}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "sharp details"}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": ""}},
        "8": {"class_type": "KSampler", "inputs": {"model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
                                                   "latent_image": ["5", 0], "seed": 1, "steps": 2, "cfg": 5.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 0.4}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["4", 2]}},
        "10": {"class_type": "SaveImage", "inputs": {"filename_prefix": "up", "images": ["3", 0]}},
        "11": {"class_type": "SaveImage", "inputs": {"filename_prefix": "refined", "images": ["9", 0]}},
    }
    ui = execute(graph, call.ctx)
    for node in ("10", "11"):
        saved = ui[node]["images"][0]
        with Image.open(tmp / "output" / saved["subfolder"] / saved["filename"]) as im:
            assert im.size == (64, 48)


def test_a_name_outside_the_folder_is_refused(env):
    call, _ = env
    with pytest.raises(Exception, match="upscale_models"):
        upscale_model_loader(call, "../checkpoints/tiny.safetensors")
