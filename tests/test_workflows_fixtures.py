"""API-format workflows in the shapes people share (tests/comfy_workflows/*.json: regional prompts,
masks, latent blends, upscale-then-refine, grown and feathered inpainting masks, SamplerCustomAdvanced
chains and split sigmas, SDXL text encoding from a checkpoint and from separate files, model
patches, LCM / Turbo / AYS schedules, post-processing and the extra outputs, latent batch
surgery, prompt scheduling, a block merge under speed and guidance patches, an SDXL Union ControlNet
with its control type), each run end to end
on tiny models, with the image sizes they must produce and, where two graphs must agree, pixel
equality."""
import copy
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from workflow_fixtures import Loader, make_ctx
from workflow_models import TINY_SDXL, make_all_models

from opensd.workflows import OutputCache, execute

FIXTURES = Path(__file__).parent / "comfy_workflows"

# fixture -> {output node: (number of images, (width, height))}
SIZES = {
    "regional_area_prompts": {"13": (1, (128, 64))},
    "regional_masks_and_percentages": {"17": (1, (128, 64)), "19": (1, (128, 64))},
    "latent_blend_then_refine": {"14": (1, (64, 64))},
    "upscale_then_refine": {"9": (1, (192, 192))},  # 8x8 latent -> 12x12 (bislerp 1.5) -> 96 px -> x2
    "inpaint_grown_feathered_mask": {"13": (1, (64, 64)), "16": (1, (64, 64))},
    "sampler_custom_advanced": {"11": (1, (64, 64)), "13": (1, (64, 64))},
    "split_sigmas_two_stage": {"17": (1, (64, 64))},
    "sdxl_text_encode": {"19": (1, (64, 64))},
    "sdxl_separate_files": {"10": (1, (64, 64))},
    "model_patches": {"12": (1, (64, 64))},
    "lcm_turbo_and_ays": {"10": (1, (64, 64)), "17": (1, (64, 64)), "21": (1, (64, 64))},
    # crop 48x40 -> 0.01 megapixels (10485 px) -> 112x93; batched with the halved originals
    "image_postprocess_and_outputs": {"17": (4, (112, 93)), "15": (1, (112, 93))},
    "latent_batch_ops": {"16": (2, (64, 64))},
    "prompt_scheduling_and_mixing": {"14": (1, (64, 64))},
    "speed_and_guidance_patches": {"17": (1, (64, 64))},
    "sdxl_union_controlnet": {"11": (1, (64, 64))},
}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fx")
    # v1-inference.yaml's shape, with the tiny UNet's context width
    folders, _ = make_all_models(tmp / "models", {"v1-inference.yaml": (
        "model:\n  params:\n    scale_factor: 0.18215\n    unet_config:\n      params:\n"
        "        context_dim: 64\n        in_channels: 4\n")})
    inputs = tmp / "input"
    inputs.mkdir()
    photo = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(photo).save(inputs / "photo.png")
    alpha = np.full((64, 64), 255, dtype=np.uint8)
    alpha[20:40, 24:44] = 0  # transparent = masked
    Image.fromarray(np.dstack([photo, alpha]), "RGBA").save(inputs / "mask.png")
    write_union_controlnet(tmp / "models" / "controlnet" / "controlnet-union-sdxl-promax.safetensors")
    return tmp, folders, Loader(folders)


def write_union_controlnet(path: Path) -> None:
    """A random 8-type Union ControlNet for TINY_SDXL, diffusers-keyed in one file as xinsir ships it."""
    from reference import randomize_

    from opensd.checkpoints.controlnet_files import controlnet_to_diffusers, split_union
    from opensd.checkpoints.files import save_safetensors
    from opensd.models.controlnet import ControlNet, ControlNetConfig

    u = TINY_SDXL.unet
    net = randomize_(ControlNet(ControlNetConfig(u, union_types=8, union_width=u.model_channels)), seed=4)
    plain, union = split_union(net.state_dict())
    path.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors({**controlnet_to_diffusers(plain, u), **union}, path)


def run(env, name_or_graph, tmp_path):
    _, folders, loader = env
    ctx = make_ctx(folders, loader, tmp_path, cache=OutputCache())
    ctx.inputs_dir = env[0] / "input"
    graph = name_or_graph if isinstance(name_or_graph, dict) else load(name_or_graph)
    events = []
    return execute(graph, ctx, lambda kind, data: events.append((kind, data))), ctx, events


def load(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def images(ctx, out, node) -> list[Image.Image]:
    folder = {"output": ctx.outputs_dir, "temp": ctx.temp_folder()}
    return [Image.open(folder[e["type"]] / e["subfolder"] / e["filename"]) for e in out[node]["images"]]


def test_there_are_at_least_ten_fixtures():
    assert len(list(FIXTURES.glob("*.json"))) == len(SIZES) >= 10


@pytest.mark.parametrize("name", sorted(SIZES))
def test_fixture_runs_end_to_end(env, name, tmp_path):
    out, ctx, events = run(env, name, tmp_path)
    assert set(out) == set(SIZES[name])
    for node, (count, size) in SIZES[name].items():
        got = images(ctx, out, node)
        assert len(got) == count and all(im.size == size for im in got), (node, [im.size for im in got])
    if name == "image_postprocess_and_outputs":
        (webp,) = images(ctx, out, "15")
        assert webp.n_frames == 4 and out["15"]["animated"] == (True,)
        assert [k for k, _ in events].count("image_png") == 2  # SaveImageWebsocket: the two cropped images
    if name == "inpaint_grown_feathered_mask":
        result = np.asarray(images(ctx, out, "13")[0])
        photo = np.asarray(Image.open(env[0] / "input" / "photo.png"))
        # the mask (20:40, 24:44) grown by 4 and feathered: everything farther out is the photo itself
        keep = np.ones((64, 64), dtype=bool)
        keep[16:44, 20:48] = False
        assert np.array_equal(result[keep], photo[keep])
        assert not np.array_equal(result[24:36, 28:40], photo[24:36, 28:40])


def _pixels(env, graph, tmp_path, node):
    out, ctx, _ = run(env, graph, tmp_path)
    return np.asarray(images(ctx, out, node)[0])


def test_the_custom_sampler_chain_equals_a_ksampler(env, tmp_path):
    custom = _pixels(env, "sampler_custom_advanced", tmp_path / "a", "11")
    g = load("sampler_custom_advanced")
    g["9"] = {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "seed": 8566257, "steps": 3, "cfg": 6.0, "sampler_name": "dpmpp_2m", "scheduler": "karras",
        "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["8", 0], "denoise": 1.0}}
    del g["12"], g["13"]
    assert np.array_equal(_pixels(env, g, tmp_path / "b", "11"), custom)


def test_sdxl_from_separate_files_equals_the_checkpoint(env, tmp_path):
    parts = _pixels(env, "sdxl_separate_files", tmp_path / "a", "10")
    g = load("sdxl_separate_files")
    g["4"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_xl.safetensors"}}
    g["6"]["inputs"]["clip"] = g["7"]["inputs"]["clip"] = ["4", 1]
    g["8"]["inputs"]["model"], g["9"]["inputs"]["vae"] = ["4", 0], ["4", 2]
    for n in ("1", "2", "3"):
        del g[n]
    assert TINY_SDXL.family == "sdxl"
    assert np.array_equal(_pixels(env, g, tmp_path / "b", "10"), parts)


def test_the_union_controlnets_type_steers_and_auto_is_no_type_node(env, tmp_path):
    depth = _pixels(env, "sdxl_union_controlnet", tmp_path / "a", "11")
    auto = load("sdxl_union_controlnet")
    auto["5"]["inputs"]["type"] = "auto"
    unset = load("sdxl_union_controlnet")
    unset["7"]["inputs"]["control_net"] = ["4", 0]
    del unset["5"]
    assert np.array_equal(_pixels(env, auto, tmp_path / "b", "11"), _pixels(env, unset, tmp_path / "c", "11"))
    assert np.abs(_pixels(env, auto, tmp_path / "d", "11").astype(float) - depth).mean() > 0.1


def test_an_image_picked_from_a_batch_keeps_its_noise(env, tmp_path):
    base = load("latent_batch_ops")
    whole = copy.deepcopy(base)
    whole["15"]["inputs"]["samples"] = ["5", 0]
    out, ctx, _ = run(env, whole, tmp_path / "a")
    third = np.asarray(images(ctx, out, "16")[2])
    picked = copy.deepcopy(base)
    picked["20"] = {"class_type": "LatentFromBatch", "inputs": {"samples": ["4", 0], "batch_index": 2, "length": 1}}
    picked["5"]["inputs"]["latent_image"] = ["20", 0]
    picked["15"]["inputs"]["samples"] = ["5", 0]
    out, ctx, _ = run(env, picked, tmp_path / "b")
    assert np.array_equal(np.asarray(images(ctx, out, "16")[0]), third)
