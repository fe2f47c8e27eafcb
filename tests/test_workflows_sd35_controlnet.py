"""ComfyUI's ControlNetLoader + ControlNetApplySD3 with a Stability SD3.5 ControlNet (single-file layout,
tagged canny) on an SD3 checkpoint: the graph equals our txt2img with the same ControlNet
(strength = weight), and differs from the graph without it."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from workflow_fixtures import Loader, make_ctx

from dit_fixtures import META_SD3, load_tiny, sd3_parts, write_single_file
from opensd.adapters.controlnet import ControlSpec, load_controlnet
from opensd.checkpoints.files import save_safetensors
from opensd.library.models_dir import ModelFolders
from test_sd35_controlnet import sd35_controlnet, single_file
from test_workflows_dit import NEGATIVE, PROMPT, SEED, SIZE, _run, _sd3_graph


def _graph(controlled: bool) -> dict:
    g = _sd3_graph(["10", 0], ["4", 1], ["4", 2])
    g["4"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd3.safetensors"}}
    g["10"] = {"class_type": "ModelSamplingSD3", "inputs": {"model": ["4", 0], "shift": 3.0}}
    if controlled:
        g["30"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "sd3.5_canny.safetensors"}}
        g["31"] = {"class_type": "LoadImage", "inputs": {"image": "hint.png"}}
        g["32"] = {"class_type": "ControlNetApplySD3", "inputs": {
            "positive": ["6", 0], "negative": ["7", 0], "control_net": ["30", 0], "image": ["31", 0],
            "strength": 0.8, "start_percent": 0.0, "end_percent": 1.0, "vae": ["4", 2]}}
        g["3"]["inputs"]["positive"], g["3"]["inputs"]["negative"] = ["32", 0], ["32", 1]
    return g


def test_graph_equals_our_txt2img_with_the_sd35_controlnet(tmp_path):
    models = tmp_path / "models"
    sd3 = load_tiny(tmp_path / "sd3", "sd3", sd3_parts())
    write_single_file(models / "checkpoints" / "sd3.safetensors", sd3.model, META_SD3)
    (models / "controlnet").mkdir()
    cn = models / "controlnet" / "sd3.5_canny.safetensors"
    sd = single_file(dict(sd35_controlnet(1).state_dict()), 1)
    save_safetensors({k: v.contiguous() for k, v in sd.items()}, cn)
    folders = ModelFolders(models, include_builtin=False)
    ctx = make_ctx(folders, Loader(folders), tmp_path)
    ctx.inputs_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(ctx.inputs_dir / "hint.png")
    got = _run(ctx, _graph(True))
    spec = ControlSpec(load_controlnet(cn, sd3), Image.open(ctx.inputs_dir / "hint.png"), weight=0.8)
    with torch.no_grad():
        want = np.asarray(sd3.txt2img(PROMPT, NEGATIVE, steps=3, cfg=4.5, seed=SEED, width=SIZE, height=SIZE,
                                      controls=[spec])[0])
    plain = _run(ctx, _graph(False))
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    assert np.abs(got.astype(int) - plain.astype(int)).max() > 8
