"""ComfyUI's ControlNetLoader + ControlNetApplyAdvanced (with its vae input) on a Flux model from
diffusion_models/: the graph equals our txt2img with the same Flux ControlNet (strength = weight),
strength 0 leaves the image as without the node, and the percent window is the flow model's (an
end_percent of 0 runs nothing)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from workflow_fixtures import Loader, make_ctx

from dit_fixtures import META_FLUX, flux_parts, load_tiny, write_split_files
from opensd.adapters.controlnet import ControlSpec, load_controlnet
from opensd.checkpoints.files import save_safetensors
from opensd.library.models_dir import ModelFolders
from opensd.workflows import NodeError, execute
from test_flux_controlnet import tiny_controlnet
from test_workflows_dit import PROMPT, SEED, SIZE, _flux_graph, _run, flux_encode_inputs


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return controlnet_env(tmp_path_factory.mktemp("fluxcnwf"), "flux_canny.safetensors",
                          tiny_controlnet(1, 1).state_dict())


def controlnet_env(tmp, name: str, weights):
    """(ctx, our tiny Flux, the ControlNet's path): the Flux split into models/, `weights` saved as
    controlnet/`name`, a random hint.png in the inputs."""
    models = tmp / "models"
    flux = load_tiny(tmp / "flux", "flux", flux_parts())
    write_split_files(models, flux.model, "flux1", META_FLUX, file_prefix="flux_")
    (models / "controlnet").mkdir()
    cn = models / "controlnet" / name
    save_safetensors({k: v.contiguous() for k, v in weights.items()}, cn)
    folders = ModelFolders(models, include_builtin=False)
    ctx = make_ctx(folders, Loader(folders), tmp)
    ctx.inputs_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(ctx.inputs_dir / "hint.png")
    return ctx, flux, cn


def _graph(strength=0.8, start=0.0, end=1.0, name="flux_canny.safetensors", vae=True):
    g = _flux_graph(flux_encode_inputs(PROMPT))
    g["30"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": name}}
    g["31"] = {"class_type": "LoadImage", "inputs": {"image": "hint.png"}}
    g["32"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
        "positive": ["6", 0], "negative": ["7", 0], "control_net": ["30", 0], "image": ["31", 0],
        "strength": strength, "start_percent": start, "end_percent": end, "vae": ["13", 0]}}
    if not vae:
        del g["32"]["inputs"]["vae"]
    g["3"]["inputs"]["positive"], g["3"]["inputs"]["negative"] = ["32", 0], ["32", 1]
    return g


def test_graph_equals_our_txt2img_with_the_controlnet(env):
    assert_graph_equals_txt2img(*env, _run(env[0], _graph()))


def assert_graph_equals_txt2img(ctx, flux, cn, got: np.ndarray) -> None:
    """`got` (the graph's image, strength 0.8) is our txt2img's with the ControlNet at weight 0.8, and
    differs from the image without it."""
    spec = ControlSpec(load_controlnet(cn, flux), Image.open(ctx.inputs_dir / "hint.png"), weight=0.8)
    want = np.asarray(flux.txt2img(PROMPT, steps=3, seed=SEED, width=SIZE, height=SIZE, cfg=1.0, sampler="euler",
                                   scheduler="simple", controls=[spec])[0])
    plain = _run(ctx, _flux_graph(flux_encode_inputs(PROMPT)))
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    assert np.abs(got.astype(int) - plain.astype(int)).max() > 8


def test_strength_zero_and_an_empty_window_change_nothing(env):
    ctx, _, _ = env
    plain = _run(ctx, _flux_graph(flux_encode_inputs(PROMPT)))
    assert np.array_equal(_run(ctx, _graph(strength=0.0)), plain)
    assert np.array_equal(_run(ctx, _graph(end=0.0)), plain)
    half = _run(ctx, _graph(end=0.5))
    assert not np.array_equal(half, plain) and not np.array_equal(half, _run(ctx, _graph()))



def test_without_a_vae_a_network_alone_asks_for_one(env):
    ctx, _, _ = env
    graph = _graph()
    del graph["32"]["inputs"]["vae"]
    with pytest.raises(NodeError, match="connect the VAE to Apply ControlNet's vae input"):
        execute(graph, ctx)


def test_cli_control_on_a_flux_network_equals_the_graph(env, tmp_path):
    """`opensd generate -m <Flux network alone> --vae --text-encoder ... --control file,image,weight=0.8`
    gives the ComfyUI graph's image."""
    ctx, _, cn = env
    assert np.abs(cli_image(ctx, cn, tmp_path).astype(int) - _run(ctx, _graph()).astype(int)).max() <= 1


def cli_image(ctx, cn, tmp_path) -> np.ndarray:
    """`opensd generate` on the env's files with --control cn,hint.png,weight=0.8."""
    from opensd.cli import main
    models = cn.parent.parent
    out = tmp_path / "cli.png"
    assert main(["generate", PROMPT, "-m", str(models / "diffusion_models" / "flux1.safetensors"), "--steps", "3",
                 "--seed", str(SEED), "--width", str(SIZE), "--height", str(SIZE), "--cfg", "1", "--sampler", "euler",
                 "--scheduler", "simple", "--precision", "fp32", "--device", "cpu",
                 "--vae", str(models / "vae" / "flux1_vae.safetensors"),
                 "--text-encoder", str(models / "text_encoders" / "flux_clip_l.safetensors"),
                 "--text-encoder", str(models / "text_encoders" / "flux_t5xxl_fp16.safetensors"),
                 "--control", f"{cn},{ctx.inputs_dir / 'hint.png'},weight=0.8", "-o", str(out)]) == 0
    return np.asarray(Image.open(out).convert("RGB"))


def test_controlnet_apply_sd3_is_apply_advanced_with_its_vae(env):
    ctx, _, _ = env
    graph = _graph()
    graph["32"]["class_type"] = "ControlNetApplySD3"
    assert np.array_equal(_run(ctx, graph), _run(ctx, _graph()))
