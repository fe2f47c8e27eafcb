"""Z-Image Fun ControlNets from the faces people use, on a tiny random Z-Image in a ComfyUI models folder
(test_z_image_faces.py's) and a tiny Fun ControlNet 2.1 in the released naming: `opensd generate
--control FILE,IMAGE,weight=W` (with mask=, inpaint_image=: a 2.x file's inpainting), the A1111 API's
alwayson_scripts controlnet unit and ComfyUI's ModelPatchLoader + ZImageFunControlnet graph each give
our txt2img's image with the ControlNet at that weight/strength (and not the plain image); a 2.x file
inpaints with the node's mask and inpaint_image as with the ControlSpec's; ModelPatchLoader refuses
other files; object_info lists the nodes with ComfyUI's inputs."""
from __future__ import annotations

import base64
import io
import shutil

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from server_live import BASE
from workflow_fixtures import Loader, make_ctx

from opensd.adapters.controlnet import ControlSpec, load_controlnet
from opensd.checkpoints.files import save_safetensors
from opensd.cli import main
from opensd.library.models_dir import ModelFolders
from opensd.server.app import create_app
from opensd.server.settings import Settings
from opensd.workflows import NodeError
from opensd.workflows.types import NODES
from test_z_image_controlnet_pipeline import _controlnet
from test_z_image_faces import PROMPT, SEED, SIZE, STEPS, UNET, _graph, _pixels, _run
from z_image_fixtures import z_image_models

NAME, WEIGHT = "Z-Image-Turbo-Fun-Controlnet-Union-2.1.safetensors", 0.8


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("zimagecnfaces")
    models, pipe = z_image_models(tmp, seed=4)
    for folder in ("model_patches", "ControlNet"):
        (models / folder).mkdir()
        _controlnet("2.1", models / folder / NAME)
    rng = np.random.default_rng(5)
    hint = tmp / "hint.png"
    Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(hint)
    return models, pipe, tmp, hint


def _want(pipe, models, hint, weight=WEIGHT, in_model=False, mask=None):
    spec = ControlSpec(load_controlnet(models / "ControlNet" / NAME, pipe), Image.open(hint), weight=weight,
                       refiner_in_model=in_model, mask=mask)
    return _pixels(pipe.txt2img(PROMPT, "", steps=STEPS, seed=SEED, width=SIZE, height=SIZE, cfg=1.0,
                                sampler="euler", scheduler="simple", controls=[spec])[0])


def _plain(pipe):
    return _pixels(pipe.txt2img(PROMPT, "", steps=STEPS, seed=SEED, width=SIZE, height=SIZE, cfg=1.0,
                                sampler="euler", scheduler="simple")[0])


def test_cli_control(env, tmp_path):
    models, pipe, _, hint = env
    out = tmp_path / "z.png"
    assert main(["generate", PROMPT, "-m", str(models / "diffusion_models" / UNET), "--steps", str(STEPS),
                 "--seed", str(SEED), "--width", str(SIZE), "--height", str(SIZE), "--sampler", "euler",
                 "--precision", "fp32", "--device", "cpu", "-o", str(out),
                 "--control", f"{models / 'ControlNet' / NAME},{hint},weight={WEIGHT}"]) == 0
    want = _want(pipe, models, hint)
    assert np.abs(_pixels(Image.open(out)) - want).max() <= 1
    assert np.abs(want - _plain(pipe)).max() > 8


def test_cli_control_inpainting(env, tmp_path):
    from test_z_image_controlnet_pipeline import _mask
    models, pipe, _, hint = env
    _mask().save(tmp_path / "mask.png")
    Image.fromarray(np.random.default_rng(6).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    out = tmp_path / "z.png"
    assert main(["generate", PROMPT, "-m", str(models / "diffusion_models" / UNET), "--steps", str(STEPS),
                 "--seed", str(SEED), "--width", str(SIZE), "--height", str(SIZE), "--sampler", "euler",
                 "--precision", "fp32", "--device", "cpu", "-o", str(out), "--control",
                 f"{models / 'ControlNet' / NAME},{hint},weight={WEIGHT},mask={tmp_path / 'mask.png'},"
                 f"inpaint_image={tmp_path / 'p.png'}"]) == 0
    spec = ControlSpec(load_controlnet(models / "ControlNet" / NAME, pipe), Image.open(hint), weight=WEIGHT,
                       mask=Image.open(tmp_path / "mask.png"), inpaint_image=Image.open(tmp_path / "p.png"))
    want = _pixels(pipe.txt2img(PROMPT, "", steps=STEPS, seed=SEED, width=SIZE, height=SIZE, cfg=1.0,
                                sampler="euler", scheduler="simple", controls=[spec])[0])
    assert np.abs(_pixels(Image.open(out)) - want).max() <= 1
    assert np.abs(want - _want(pipe, models, hint)).max() > 8


def test_a1111_api_controlnet_unit(env, tmp_path):
    models, pipe, _, hint = env
    (models / "checkpoints").mkdir(exist_ok=True)
    shutil.copyfile(models / "diffusion_models" / UNET, models / "checkpoints" / UNET)
    unit = {"enabled": True, "model": NAME.removesuffix(".safetensors"), "module": "none", "weight": WEIGHT,
            "image": base64.b64encode(hint.read_bytes()).decode(), "resize_mode": "Just Resize"}
    request = {"prompt": PROMPT, "steps": STEPS, "seed": SEED, "cfg_scale": 1, "width": SIZE, "height": SIZE,
               "sampler_name": "Euler", "scheduler": "Simple", "override_settings": {"sd_model_checkpoint": UNET},
               "alwayson_scripts": {"controlnet": {"args": [unit]}}}
    with TestClient(create_app(Settings(models_dir=models, outputs_dir=tmp_path / "out")), base_url=BASE) as client:
        r = client.post("/sdapi/v1/txt2img", json=request)
    assert r.status_code == 200, r.text
    image = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))
    assert np.abs(_pixels(image) - _want(pipe, models, hint)).max() <= 1


def _patched_graph(strength=WEIGHT, name=NAME, **more) -> dict:
    g = _graph()
    g["40"] = {"class_type": "ModelPatchLoader", "inputs": {"name": name}}
    g["41"] = {"class_type": "LoadImage", "inputs": {"image": "hint.png"}}
    g["42"] = {"class_type": "ZImageFunControlnet", "inputs": {
        "model": ["20", 0], "model_patch": ["40", 0], "vae": ["13", 0], "strength": strength, "image": ["41", 0],
        **more}}
    g["3"]["inputs"]["model"] = ["42", 0]
    return g


@pytest.fixture(scope="module")
def ctx(env):
    models, _, tmp, hint = env
    folders = ModelFolders(models, include_builtin=False)
    c = make_ctx(folders, Loader(folders), tmp)
    c.inputs_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(hint, c.inputs_dir / "hint.png")
    return c


def test_comfyui_model_patch_graph_equals_our_txt2img(env, ctx):
    models, pipe, _, hint = env
    got = _run(ctx, _patched_graph())
    everything = Image.new("RGB", (SIZE, SIZE), "white")  # ComfyUI's 2.x channels without a mask: all repainted
    assert np.abs(got - _want(pipe, models, hint, in_model=True, mask=everything)).max() <= 1  # ComfyUI's order
    assert np.abs(got - _want(pipe, models, hint)).max() > 1  # not diffusers' (a 2.1 file)
    assert np.abs(_run(ctx, _patched_graph(strength=0.0)) - _plain(pipe)).max() <= 1


def test_comfyui_controlnet_loader_route(env, ctx):
    """The file in controlnet/ through ControlNetLoader + Apply ControlNet (with its vae): diffusers' order."""
    models, pipe, _, hint = env
    g = _graph()
    g["40"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": NAME}}
    g["41"] = {"class_type": "LoadImage", "inputs": {"image": "hint.png"}}
    g["42"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
        "positive": ["6", 0], "negative": ["21", 0], "control_net": ["40", 0], "image": ["41", 0],
        "strength": WEIGHT, "start_percent": 0.0, "end_percent": 1.0, "vae": ["13", 0]}}
    g["3"]["inputs"]["positive"], g["3"]["inputs"]["negative"] = ["42", 0], ["42", 1]
    assert np.abs(_run(ctx, g) - _want(pipe, models, hint)).max() <= 1


def test_comfyui_inpainting_equals_our_txt2img(env, ctx):
    """ZImageFunControlnet's mask (LoadImageMask's red channel, 1 = repaint) and inpaint_image give the
    ControlSpec's mask and inpaint_image."""
    models, pipe, _, hint = env
    from test_z_image_controlnet_pipeline import _mask
    _mask().save(ctx.inputs_dir / "mask.png")
    image = Image.fromarray(np.random.default_rng(6).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
    image.save(ctx.inputs_dir / "photo.png")
    g = _patched_graph(inpaint_image=["43", 0], mask=["44", 0])
    g["43"] = {"class_type": "LoadImage", "inputs": {"image": "photo.png"}}
    g["44"] = {"class_type": "LoadImageMask", "inputs": {"image": "mask.png", "channel": "red"}}
    spec = ControlSpec(load_controlnet(models / "ControlNet" / NAME, pipe), Image.open(hint), weight=WEIGHT,
                       mask=_mask(), inpaint_image=image, refiner_in_model=True)
    want = _pixels(pipe.txt2img(PROMPT, "", steps=STEPS, seed=SEED, width=SIZE, height=SIZE, cfg=1.0,
                                sampler="euler", scheduler="simple", controls=[spec])[0])
    assert np.abs(_run(ctx, g) - want).max() <= 1
    assert np.abs(want - _want(pipe, models, hint, in_model=True)).max() > 8


def test_comfyui_refusals(env, ctx):
    models, *_ = env
    save_safetensors({"img_in.weight": torch.zeros(2, 2)}, models / "model_patches" / "other.safetensors")
    with pytest.raises(NodeError, match="not a Z-Image Fun ControlNet"):
        _run(ctx, _patched_graph(name="other.safetensors"))
    with pytest.raises(NodeError, match="connect one with inpaint_image"):
        _run(ctx, _patched_graph(inpaint_image=["41", 0]))
    # hostile input: was PyTorch's 'Sizes of tensors must match except in dimension 1'
    g = _patched_graph(image=["45", 0], mask=["47", 0])
    g["45"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["41", 0], "amount": 2}}
    g["46"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["41", 0], "amount": 3}}
    g["47"] = {"class_type": "ImageToMask", "inputs": {"image": ["46", 0], "channel": "red"}}
    with pytest.raises(NodeError, match=r"image, inpaint_image and mask: batches of 2, 1 and 3; give one each or "
                                        r"equal batches"):
        _run(ctx, g)


def test_object_info_entries():
    z = NODES["ZImageFunControlnet"]
    assert list(z.required) == ["model", "model_patch", "vae", "strength"]
    assert z.required["strength"][1] == {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}
    assert list(z.optional) == ["image", "inpaint_image", "mask"] and z.outputs == ("MODEL",)
    assert z.category == "advanced/loaders/zimage" and z.module == "comfy_extras.nodes_model_patch"
    loader = NODES["ModelPatchLoader"]
    assert list(loader.required) == ["name"] and loader.outputs == ("MODEL_PATCH",) and loader.experimental


def test_cli_control_options():
    from opensd.cli.control import parse_control
    spec = parse_control("cn.safetensors,hint.png,weight=0.5,refiner_in_model,mask=m.png,inpaint_image=p.png")
    assert spec == {"model": "cn.safetensors", "image": "hint.png", "weight": 0.5, "refiner_in_model": True,
                    "mask": "m.png", "inpaint_image": "p.png"}
