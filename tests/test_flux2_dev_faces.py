"""FLUX.2 [dev] from the faces people use, on a tiny random model (its VAE at the released 1/8) in a
ComfyUI models folder as the released files are kept (diffusion_models/flux2_dev_fp8mixed.safetensors,
text_encoders/mistral_3_small_flux2_bf16.safetensors cut to 31 layers with its tokenizer in
text_encoders/mistral_tokenizer/, vae/flux2-vae.safetensors): `opensd generate -m <the network's
file>` with the family defaults (CFG 1, guidance 4), the A1111 API's txt2img with a distilled CFG
scale, and ComfyUI's [dev] graph (UNETLoader + CLIPLoader type "flux2" + VAELoader +
EmptyFlux2LatentImage + FluxGuidance + Flux2Scheduler + CFGGuider at 1 + SamplerCustomAdvanced)
give the pipeline's image of the same weights; a reference image edits as with klein."""
from __future__ import annotations

import numpy as np
import pytest
from split_faces import a1111_txt2img, cli_image, graph_image, pixels, split_env
from workflow_fixtures import Loader, make_ctx

from flux2_dev_fixtures import flux2_dev_parts, write_flux2_dev_folder, write_flux2_dev_split_files
from opensd.library.models_dir import ModelFolders
from opensd.pipeline.infotext import read_infotext
from opensd.workflows import execute

SIZE, SEED, STEPS, PROMPT = 64, 3, 3, "a photo of a cat"
UNET = "flux2_dev_fp8mixed.safetensors"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flux2devfaces")
    return split_env(tmp, flux2_dev_parts(seed=4, levels=4), write_flux2_dev_folder, write_flux2_dev_split_files)


def _want(pipe, guidance=None, **kw):
    extra = {} if guidance is None else {"distilled_guidance": guidance}
    return pipe.txt2img(PROMPT, "", steps=STEPS, seed=SEED, width=SIZE, height=SIZE, cfg=1.0, sampler="euler",
                        scheduler="simple", **extra, **kw)[0]


def test_cli_generates_with_the_family_defaults(env, tmp_path):
    models, pipe, _ = env
    out = tmp_path / "d.png"
    image = cli_image(models / "diffusion_models" / UNET, out, PROMPT, STEPS, SEED, SIZE)
    assert np.abs(pixels(image) - pixels(_want(pipe))).max() <= 1
    text = read_infotext(out)
    assert "CFG scale: 1" in text and "Distilled CFG Scale: 4" in text
    assert not np.array_equal(pixels(_want(pipe, 1.5)), pixels(_want(pipe)))  # the guidance input matters


def test_a1111_api_txt2img_with_distilled_cfg(env, tmp_path):
    models, pipe, _ = env
    image, info = a1111_txt2img(models, UNET, tmp_path / "out", prompt=PROMPT, steps=STEPS, seed=SEED, cfg_scale=1,
                                distilled_cfg_scale=2.5, width=SIZE, height=SIZE)
    assert np.abs(pixels(image) - pixels(_want(pipe, 2.5))).max() <= 1
    assert "Distilled CFG Scale: 2.5" in info


def _graph(guidance: float) -> dict:
    return {
        "5": {"class_type": "EmptyFlux2LatentImage", "inputs": {"batch_size": 1, "height": SIZE, "width": SIZE}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["12", 0], "text": PROMPT}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["12", 0], "text": ""}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["30", 0], "vae": ["13", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "dev", "images": ["8", 0]}},
        "11": {"class_type": "UNETLoader", "inputs": {"unet_name": UNET, "weight_dtype": "default"}},
        "12": {"class_type": "CLIPLoader", "inputs": {"clip_name": "mistral_3_small_flux2_bf16.safetensors",
                                                      "type": "flux2"}},
        "13": {"class_type": "VAELoader", "inputs": {"vae_name": "flux2-vae.safetensors"}},
        "20": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["6", 0], "guidance": guidance}},
        "25": {"class_type": "RandomNoise", "inputs": {"noise_seed": SEED}},
        "26": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "27": {"class_type": "Flux2Scheduler", "inputs": {"steps": STEPS, "width": SIZE, "height": SIZE}},
        "28": {"class_type": "CFGGuider", "inputs": {"model": ["11", 0], "positive": ["20", 0], "negative": ["7", 0],
                                                     "cfg": 1.0}},
        "30": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["25", 0], "guider": ["28", 0], "sampler": ["26", 0], "sigmas": ["27", 0],
            "latent_image": ["5", 0]}},
    }


def test_comfyui_dev_graph_equals_our_txt2img(env):
    models, pipe, tmp = env
    folders = ModelFolders(models, include_builtin=False)
    ctx = make_ctx(folders, Loader(folders), tmp)
    assert np.abs(graph_image(ctx, _graph(4.0), execute) - pixels(_want(pipe))).max() <= 1
    assert np.abs(graph_image(ctx, _graph(2.0), execute) - pixels(_want(pipe, 2.0))).max() <= 1


def test_cli_reference_image_edits_with_dev(env, tmp_path):
    from PIL import Image
    models, pipe, _ = env
    ref = Image.fromarray(np.random.default_rng(11).integers(0, 255, (64, 48, 3), dtype=np.uint8))
    ref.save(tmp_path / "ref.png")
    got = cli_image(models / "diffusion_models" / UNET, tmp_path / "d.png", PROMPT, STEPS, SEED, SIZE,
                    "--reference-image", str(tmp_path / "ref.png"))
    want = pixels(_want(pipe, references=[ref]))
    assert np.abs(pixels(got) - want).max() <= 1
    assert np.abs(want - pixels(_want(pipe))).max() > 8  # the reference changes the image
