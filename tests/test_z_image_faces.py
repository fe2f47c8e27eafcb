"""Z-Image from the faces people use, on a tiny random model in a ComfyUI models folder as the
released files are kept (diffusion_models/z_image_turbo_bf16.safetensors, text_encoders/
qwen_3_4b.safetensors with its tokenizer in text_encoders/qwen_tokenizer/, vae/ae.safetensors):
`opensd generate -m <the network's file>`, the A1111 API's txt2img (sd_model_checkpoint naming the
network placed in checkpoints/; by name from diffusion_models/: test_network_models.py) and ComfyUI's Z-Image
graph (UNETLoader + CLIPLoader type "lumina2" + VAELoader + ModelSamplingAuraFlow + KSampler) all give
the pipeline's image of the same weights, the VAE and text encoder found in the models folder; the
CLI's default CFG is the family's (1: no CFG)."""
from __future__ import annotations


import numpy as np
import pytest
from PIL import Image
from workflow_fixtures import Loader, make_ctx

from dit_fixtures import a1111_txt2img_from_checkpoints
from opensd.cli import main
from opensd.library.models_dir import ModelFolders
from opensd.pipeline.infotext import read_infotext
from opensd.workflows import NodeError, execute
from z_image_fixtures import z_image_models

SIZE, SEED, STEPS, PROMPT, NEGATIVE = 64, 3, 3, "a photo of a cat", "blurry"
UNET = "z_image_turbo_bf16.safetensors"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("zimagefaces")
    models, pipe = z_image_models(tmp, seed=4)
    return models, pipe, tmp


def _pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(int)


def _want(pipe, cfg=1.0, negative=""):
    return pipe.txt2img(PROMPT, negative, steps=STEPS, seed=SEED, width=SIZE, height=SIZE, cfg=cfg,
                        sampler="euler", scheduler="simple")[0]


def test_cli_generates_from_the_models_folder_with_the_family_defaults(env, tmp_path):
    models, pipe, _ = env
    out = tmp_path / "z.png"
    assert main(["generate", PROMPT, "-m", str(models / "diffusion_models" / UNET), "--steps", str(STEPS),
                 "--seed", str(SEED), "--width", str(SIZE), "--height", str(SIZE), "--sampler", "euler",
                 "--precision", "fp32", "--device", "cpu", "-o", str(out)]) == 0
    assert np.abs(_pixels(Image.open(out)) - _pixels(_want(pipe))).max() <= 1
    text = read_infotext(out)
    assert "CFG scale: 1" in text and "Schedule type: Simple" in text and "Distilled CFG" not in text


def test_a1111_api_txt2img_with_cfg(env, tmp_path):
    models, pipe, _ = env
    request = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "steps": STEPS, "seed": SEED, "cfg_scale": 3,
               "width": SIZE, "height": SIZE, "sampler_name": "Euler", "scheduler": "Simple"}
    image, info = a1111_txt2img_from_checkpoints(models, UNET, request, tmp_path / "out")
    want = _want(pipe, 3.0, NEGATIVE)
    assert np.abs(_pixels(image) - _pixels(want)).max() <= 1
    assert not np.array_equal(_pixels(want), _pixels(_want(pipe)))  # CFG against the negative changes it
    assert "CFG scale: 3" in info


def _graph(clip_type="lumina2", shift=3.0) -> dict:
    def text(t):
        return {"class_type": "CLIPTextEncode", "inputs": {"clip": ["12", 0], "text": t}}
    return {
        "3": {"class_type": "KSampler", "inputs": {
            "cfg": 1.0, "denoise": 1, "latent_image": ["5", 0], "model": ["20", 0], "negative": ["21", 0],
            "positive": ["6", 0], "sampler_name": "euler", "scheduler": "simple", "seed": SEED, "steps": STEPS}},
        "5": {"class_type": "EmptySD3LatentImage", "inputs": {"batch_size": 1, "height": SIZE, "width": SIZE}},
        "6": text(PROMPT),
        "21": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["6", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["13", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "z_image", "images": ["8", 0]}},
        "11": {"class_type": "UNETLoader", "inputs": {"unet_name": UNET, "weight_dtype": "default"}},
        "12": {"class_type": "CLIPLoader", "inputs": {"clip_name": "qwen_3_4b.safetensors", "type": clip_type}},
        "13": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
        "20": {"class_type": "ModelSamplingAuraFlow", "inputs": {"model": ["11", 0], "shift": shift}},
    }


def _run(ctx, graph) -> np.ndarray:
    out = execute(graph, ctx)
    image = out["9"]["images"][0]
    return np.asarray(Image.open(ctx.outputs_dir / image["subfolder"] / image["filename"])).astype(int)


def test_comfyui_z_image_graph_equals_our_txt2img(env):
    models, pipe, tmp = env
    folders = ModelFolders(models, include_builtin=False)
    ctx = make_ctx(folders, Loader(folders), tmp)
    got = _run(ctx, _graph())
    assert np.abs(got - _pixels(_want(pipe))).max() <= 1  # SaveImage truncates where ours round
    assert not np.array_equal(_run(ctx, _graph(shift=1.0)), got)  # the shift is the node's
    with pytest.raises(NodeError, match="lumina2"):
        _run(ctx, _graph(clip_type="stable_cascade"))
