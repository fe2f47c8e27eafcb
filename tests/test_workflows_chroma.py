"""A ComfyUI graph for Chroma as ComfyUI's own example wires it, on a tiny random model in a ComfyUI
models folder: UNETLoader (the released naming, network alone) + CLIPLoader type "chroma" (T5-XXL
alone) + VAELoader, CLIPTextEncode for prompt and negative, KSampler with real CFG; with
ModelSamplingFlux at the image size it equals our txt2img of the same weights from a diffusers folder."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from workflow_fixtures import Loader, make_ctx

from dit_fixtures import META_FLUX, chroma_parts, load_tiny, write_split_files
from opensd.library.models_dir import ModelFolders
from opensd.workflows import NodeError, execute

SIZE, SEED, PROMPT, NEGATIVE, CFG = 64, 5, "a photo of a cat", "blurry", 4.0


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chromawf")
    models = tmp / "models"
    chroma = load_tiny(tmp / "chroma", "chroma", chroma_parts())
    write_split_files(models, chroma.model, "chroma", META_FLUX, file_prefix="chroma_")
    folders = ModelFolders(models, include_builtin=False)
    return make_ctx(folders, Loader(folders), tmp), chroma


def _graph(clip_type="chroma", shift=True) -> dict:
    def text(t):
        return {"class_type": "CLIPTextEncode", "inputs": {"clip": ["12", 0], "text": t}}
    return {
        "3": {"class_type": "KSampler", "inputs": {
            "cfg": CFG, "denoise": 1, "latent_image": ["5", 0], "model": ["20", 0] if shift else ["11", 0],
            "negative": ["7", 0], "positive": ["6", 0], "sampler_name": "euler", "scheduler": "simple", "seed": SEED,
            "steps": 3}},
        "5": {"class_type": "EmptySD3LatentImage", "inputs": {"batch_size": 1, "height": SIZE, "width": SIZE}},
        "6": text(PROMPT), "7": text(NEGATIVE),
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["13", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "chroma", "images": ["8", 0]}},
        "11": {"class_type": "UNETLoader", "inputs": {"unet_name": "chroma.safetensors", "weight_dtype": "default"}},
        "12": {"class_type": "CLIPLoader", "inputs": {"clip_name": "chroma_t5xxl_fp16.safetensors", "type": clip_type}},
        "13": {"class_type": "VAELoader", "inputs": {"vae_name": "chroma_vae.safetensors"}},
        "20": {"class_type": "ModelSamplingFlux", "inputs": {"model": ["11", 0], "max_shift": 1.15, "base_shift": 0.5,
                                                             "width": SIZE, "height": SIZE}},
    }


def _run(ctx, graph) -> np.ndarray:
    out = execute(graph, ctx)
    image = out["9"]["images"][0]
    return np.asarray(Image.open(ctx.outputs_dir / image["subfolder"] / image["filename"]))


def test_chroma_graph_equals_our_txt2img(env):
    ctx, chroma = env
    got = _run(ctx, _graph())
    want = chroma.txt2img(PROMPT, NEGATIVE, steps=3, cfg=CFG, seed=SEED, width=SIZE, height=SIZE,
                          sampler="euler", scheduler="simple")[0]
    want = np.asarray(want)  # ComfyUI's SaveImage truncates where our images round: one level at most
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1 and want.std() > 1
    assert not np.array_equal(_run(ctx, _graph(shift=False)), got)  # ComfyUI's default 1.15 without the patch


def test_clip_loader_lists_chroma_and_refuses_families_it_does_not_run(env):
    ctx, _ = env
    from opensd.workflows.nodes_loaders import CLIP_TYPES
    assert "chroma" in CLIP_TYPES
    with pytest.raises(NodeError, match="stable_cascade"):
        _run(ctx, _graph(clip_type="stable_cascade"))


def test_cli_generate_with_a_text_encoder_equals_the_graph(env, tmp_path):
    """`opensd generate -m <Chroma network alone> --vae ... --text-encoder t5xxl ...` (real CFG, the
    negative prompt) gives the ComfyUI graph's image."""
    from opensd.cli import main
    ctx, chroma = env
    models = ctx.outputs_dir.parent / "models"
    args = ["generate", PROMPT, "--negative", NEGATIVE, "-m", str(models / "diffusion_models" / "chroma.safetensors"),
            "--steps", "3", "--seed", str(SEED), "--width", str(SIZE), "--height", str(SIZE), "--cfg", str(CFG),
            "--sampler", "euler", "--scheduler", "simple", "--precision", "fp32", "--device", "cpu",
            "--vae", str(models / "vae" / "chroma_vae.safetensors")]
    out = tmp_path / "cli.png"
    t5 = ["--text-encoder", str(models / "text_encoders" / "chroma_t5xxl_fp16.safetensors")]
    assert main(args + t5 + ["-o", str(out)]) == 0
    got = np.asarray(Image.open(out).convert("RGB"))
    assert np.abs(got.astype(int) - _run(ctx, _graph()).astype(int)).max() <= 1
