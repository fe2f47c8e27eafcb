"""An XLabs Flux ControlNet in ComfyUI's ControlNetLoader + ControlNetApplyAdvanced (no vae input: it
takes the image's pixels) on a Flux model from diffusion_models/: the graph equals our txt2img with the
same ControlNet, strength 0 leaves the image as without the node, and the CLI's --control gives the
graph's image."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from workflow_fixtures import Loader, make_ctx

from dit_fixtures import META_FLUX, flux_parts, load_tiny, write_split_files
from opensd.adapters.controlnet import ControlSpec, load_controlnet
from opensd.checkpoints.files import save_safetensors
from opensd.library.models_dir import ModelFolders
from test_flux_controlnet_xlabs import tiny_xlabs
from test_workflows_dit import PROMPT, SEED, SIZE, _flux_graph, _run, flux_encode_inputs

NAME = "flux-canny-controlnet-v3.safetensors"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("xlabswf")
    models = tmp / "models"
    flux = load_tiny(tmp / "flux", "flux", flux_parts())
    write_split_files(models, flux.model, "flux1", META_FLUX, file_prefix="flux_")
    (models / "controlnet").mkdir()
    cn = models / "controlnet" / NAME
    save_safetensors({k: v.contiguous() for k, v in tiny_xlabs(seed=4).items()}, cn)
    folders = ModelFolders(models, include_builtin=False)
    ctx = make_ctx(folders, Loader(folders), tmp)
    ctx.inputs_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(ctx.inputs_dir / "hint.png")
    return ctx, flux, cn


def _graph(strength=0.8):
    g = _flux_graph(flux_encode_inputs(PROMPT))
    g["30"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": NAME}}
    g["31"] = {"class_type": "LoadImage", "inputs": {"image": "hint.png"}}
    g["32"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
        "positive": ["6", 0], "negative": ["7", 0], "control_net": ["30", 0], "image": ["31", 0],
        "strength": strength, "start_percent": 0.0, "end_percent": 1.0}}
    g["3"]["inputs"]["positive"], g["3"]["inputs"]["negative"] = ["32", 0], ["32", 1]
    return g


def test_graph_equals_our_txt2img_and_strength_zero_is_none(env):
    ctx, flux, cn = env
    got = _run(ctx, _graph())
    spec = ControlSpec(load_controlnet(cn, flux), Image.open(ctx.inputs_dir / "hint.png"), weight=0.8)
    want = np.asarray(flux.txt2img(PROMPT, steps=3, seed=SEED, width=SIZE, height=SIZE, cfg=1.0, sampler="euler",
                                   scheduler="simple", controls=[spec])[0])
    plain = _run(ctx, _flux_graph(flux_encode_inputs(PROMPT)))
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    assert np.abs(got.astype(int) - plain.astype(int)).max() > 8
    assert np.array_equal(_run(ctx, _graph(strength=0.0)), plain)


def test_cli_control_equals_the_graph(env, tmp_path):
    from opensd.cli import main
    ctx, _, cn = env
    models = cn.parent.parent
    out = tmp_path / "cli.png"
    assert main(["generate", PROMPT, "-m", str(models / "diffusion_models" / "flux1.safetensors"), "--steps", "3",
                 "--seed", str(SEED), "--width", str(SIZE), "--height", str(SIZE), "--cfg", "1", "--sampler", "euler",
                 "--scheduler", "simple", "--precision", "fp32", "--device", "cpu",
                 "--vae", str(models / "vae" / "flux1_vae.safetensors"),
                 "--text-encoder", str(models / "text_encoders" / "flux_clip_l.safetensors"),
                 "--text-encoder", str(models / "text_encoders" / "flux_t5xxl_fp16.safetensors"),
                 "--control", f"{cn},{ctx.inputs_dir / 'hint.png'},weight=0.8", "-o", str(out)]) == 0
    got = np.asarray(Image.open(out).convert("RGB"))
    assert np.abs(got.astype(int) - _run(ctx, _graph()).astype(int)).max() <= 1
