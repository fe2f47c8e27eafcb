"""InstantX Qwen-Image ControlNets from the faces people use, on a tiny random Qwen-Image in a ComfyUI
models folder (test_qwen_image_faces.py's) and a tiny Union ControlNet in controlnet/: `opensd generate
--control FILE,IMAGE,weight=W`, the A1111 API's controlnet unit and ComfyUI's ControlNetLoader +
ControlNetApplyAdvanced (with its vae) each give our txt2img's image with the ControlNet at that
weight/strength (and not the plain image); in ComfyUI's graph under CFG both rows are hinted, each
with its own text (as our ControlApplier); strength 0 leaves the graph's image bit-identical; the
model list names the file's family."""
from __future__ import annotations

import base64
import shutil

import numpy as np
import pytest
from PIL import Image
from workflow_fixtures import Loader, make_ctx

from dit_fixtures import a1111_txt2img_from_checkpoints
from opensd.adapters.controlnet import ControlSpec, load_controlnet
from opensd.checkpoints.files import save_safetensors
from opensd.cli import main
from opensd.library.models_dir import ModelFolders
from opensd.models.config_dit import QwenImageModelConfig
from opensd.pipeline.pipeline import load
from qwen_image_fixtures import qwen_image_parts, write_qwen_image_split_files_of
from test_qwen_image_controlnet import _controlnet
from test_qwen_image_faces import NEGATIVE, PROMPT, SEED, SIZE, STEPS, UNET, _graph, _pixels, _run

NAME, WEIGHT, SHIFT = "Qwen-Image-ControlNet-Union.safetensors", 0.8, 3.1


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("qwencnfaces")
    models = tmp / "models"
    files = write_qwen_image_split_files_of(models, qwen_image_parts(seed=4))
    (models / "controlnet").mkdir()
    save_safetensors({k: v.contiguous() for k, v in _controlnet(layers=2).state_dict().items()},
                     models / "controlnet" / NAME)
    hint = tmp / "hint.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(hint)
    return models, load(files["unet"], precision="fp32", device="cpu"), tmp, hint


def _want(pipe, models, hint, weight=WEIGHT, cfg=1.0, negative="", **kw):
    controls = [] if weight is None else [
        ControlSpec(load_controlnet(models / "controlnet" / NAME, pipe), Image.open(hint), weight=weight)]
    return _pixels(pipe.txt2img(PROMPT, negative, steps=STEPS, seed=SEED, width=SIZE, height=SIZE, cfg=cfg,
                                sampler="euler", scheduler="simple", controls=controls, **kw)[0])


def test_cli_control(env, tmp_path):
    models, pipe, _, hint = env
    out = tmp_path / "q.png"
    assert main(["generate", PROMPT, "-m", str(models / "diffusion_models" / UNET), "--steps", str(STEPS),
                 "--seed", str(SEED), "--width", str(SIZE), "--height", str(SIZE), "--sampler", "euler",
                 "--cfg", "1", "--precision", "fp32", "--device", "cpu", "-o", str(out),
                 "--control", f"{models / 'controlnet' / NAME},{hint},weight={WEIGHT}"]) == 0
    want = _want(pipe, models, hint)
    assert np.abs(_pixels(Image.open(out)) - want).max() <= 1
    assert np.abs(want - _want(pipe, models, hint, weight=None)).max() > 8


def test_a1111_api_controlnet_unit(env, tmp_path):
    models, pipe, _, hint = env
    unit = {"enabled": True, "model": NAME.removesuffix(".safetensors"), "module": "none", "weight": WEIGHT,
            "image": base64.b64encode(hint.read_bytes()).decode(), "resize_mode": "Just Resize"}
    request = {"prompt": PROMPT, "steps": STEPS, "seed": SEED, "cfg_scale": 1, "width": SIZE, "height": SIZE,
               "sampler_name": "Euler", "scheduler": "Simple", "alwayson_scripts": {"controlnet": {"args": [unit]}}}
    image, _ = a1111_txt2img_from_checkpoints(models, UNET, request, tmp_path / "out")
    assert np.abs(_pixels(image) - _want(pipe, models, hint)).max() <= 1


def _controlled_graph(cfg=1.0, strength=WEIGHT, vae=True) -> dict:
    g = _graph(cfg=cfg, shift=SHIFT)
    g["30"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": NAME}}
    g["31"] = {"class_type": "LoadImage", "inputs": {"image": "hint.png"}}
    g["32"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
        "positive": ["6", 0], "negative": ["7", 0], "control_net": ["30", 0], "image": ["31", 0],
        "strength": strength, "start_percent": 0.0, "end_percent": 1.0, "vae": ["39", 0]}}
    if not vae:
        del g["32"]["inputs"]["vae"]
    g["3"]["inputs"]["positive"], g["3"]["inputs"]["negative"] = ["32", 0], ["32", 1]
    return g


@pytest.fixture(scope="module")
def ctx(env):
    models, _, tmp, hint = env
    folders = ModelFolders(models, include_builtin=False)
    c = make_ctx(folders, Loader(folders), tmp)
    c.inputs_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(hint, c.inputs_dir / "hint.png")
    return c


@pytest.mark.parametrize("cfg", [1.0, 2.5])
def test_comfyui_controlnet_apply_advanced_equals_our_txt2img(env, ctx, monkeypatch, cfg):
    """ComfyUI's graph runs plain CFG at its shift: the pipeline's image with the renormalisation off."""
    models, pipe, _, hint = env
    monkeypatch.setattr(QwenImageModelConfig, "cfg_renorm", 0)
    got = _run(ctx, _controlled_graph(cfg=cfg))
    want = _want(pipe, models, hint, cfg=cfg, negative=NEGATIVE, shift=SHIFT)
    assert np.abs(got - want).max() <= 1
    assert np.abs(got - _run(ctx, _graph(cfg=cfg, shift=SHIFT))).max() > 8


def test_comfyui_strength_zero_is_bit_identical(ctx):
    assert np.array_equal(_run(ctx, _controlled_graph(strength=0.0)), _run(ctx, _graph(cfg=1.0, shift=SHIFT)))


def test_the_model_list_names_the_family(env):
    from opensd.library.model_catalog import describe
    from opensd.library.models_dir import ModelFile
    models, *_ = env
    entry = describe(ModelFile("controlnet", NAME, models / "controlnet" / NAME))
    assert (entry.family, entry.detail) == ("qwen_image", "Qwen-Image ControlNet Union (InstantX, 2 blocks)")
