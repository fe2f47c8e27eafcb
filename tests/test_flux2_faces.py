"""FLUX.2 [klein] from the faces people use, on a tiny random model (its VAE at the released 1/8) in a
ComfyUI models folder as the released files are kept (diffusion_models/flux-2-klein-4b.safetensors,
text_encoders/qwen_3_4b.safetensors with its tokenizer in text_encoders/qwen_tokenizer/,
vae/flux2-vae.safetensors): `opensd generate -m <the network's file>`, the A1111 API's txt2img and
ComfyUI's klein graph (UNETLoader + CLIPLoader type "flux2" + VAELoader + EmptyFlux2LatentImage +
Flux2Scheduler + CFGGuider + SamplerCustomAdvanced) all give the pipeline's image of the same
weights; the CLI's default CFG is the distilled model's (1)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from split_faces import a1111_txt2img, cli_image, graph_image, pixels, split_env, want
from workflow_fixtures import Loader, make_ctx

from flux2_fixtures import flux2_parts, write_flux2_folder, write_flux2_split_files
from opensd.library.models_dir import ModelFolders
from opensd.pipeline.infotext import read_infotext
from opensd.sampling.flow import flux2_mu
from opensd.workflows import NodeError, execute

SIZE, SEED, STEPS, PROMPT, NEGATIVE = 64, 3, 3, "a photo of a cat", "blurry"
UNET = "flux-2-klein-4b.safetensors"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flux2faces")
    parts = flux2_parts(seed=4, levels=4)
    return split_env(tmp, parts, write_flux2_folder, write_flux2_split_files)


def _want(pipe, cfg=1.0, negative=""):
    return want(pipe, PROMPT, STEPS, SEED, SIZE, cfg, negative)


def test_cli_generates_from_the_models_folder_with_the_family_defaults(env, tmp_path):
    models, pipe, _ = env
    out = tmp_path / "k.png"
    image = cli_image(models / "diffusion_models" / UNET, out, PROMPT, STEPS, SEED, SIZE)
    assert np.abs(pixels(image) - pixels(_want(pipe))).max() <= 1
    text = read_infotext(out)
    assert "CFG scale: 1" in text and "Schedule type: Simple" in text


def test_a1111_api_txt2img_with_cfg(env, tmp_path):
    models, pipe, _ = env
    image, info = a1111_txt2img(models, UNET, tmp_path / "out", prompt=PROMPT, negative_prompt=NEGATIVE, steps=STEPS,
                                seed=SEED, cfg_scale=3, width=SIZE, height=SIZE)
    want = _want(pipe, 3.0, NEGATIVE)
    assert np.abs(pixels(image) - pixels(want)).max() <= 1
    assert not np.array_equal(pixels(want), pixels(_want(pipe)))  # CFG against the negative changes it
    assert "CFG scale: 3" in info


def _graph(clip_type="flux2") -> dict:
    def text(t):
        return {"class_type": "CLIPTextEncode", "inputs": {"clip": ["12", 0], "text": t}}
    return {
        "5": {"class_type": "EmptyFlux2LatentImage", "inputs": {"batch_size": 1, "height": SIZE, "width": SIZE}},
        "6": text(PROMPT),
        "7": text(""),
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["30", 0], "vae": ["13", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "klein", "images": ["8", 0]}},
        "11": {"class_type": "UNETLoader", "inputs": {"unet_name": UNET, "weight_dtype": "default"}},
        "12": {"class_type": "CLIPLoader", "inputs": {"clip_name": "qwen_3_4b.safetensors", "type": clip_type}},
        "13": {"class_type": "VAELoader", "inputs": {"vae_name": "flux2-vae.safetensors"}},
        "25": {"class_type": "RandomNoise", "inputs": {"noise_seed": SEED}},
        "26": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "27": {"class_type": "Flux2Scheduler", "inputs": {"steps": STEPS, "width": SIZE, "height": SIZE}},
        "28": {"class_type": "CFGGuider", "inputs": {"model": ["11", 0], "positive": ["6", 0], "negative": ["7", 0],
                                                     "cfg": 1.0}},
        "30": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["25", 0], "guider": ["28", 0], "sampler": ["26", 0], "sigmas": ["27", 0],
            "latent_image": ["5", 0]}},
    }


def _run(ctx, graph) -> np.ndarray:
    return graph_image(ctx, graph, execute)


@pytest.mark.parametrize("steps", [3, 4, 7])
def test_the_pipelines_simple_schedule_is_exact_at_any_step_count(env, steps):
    """The times 1, 1 - 1/n, ... exactly (diffusers' linspace, Flux2Scheduler's), not the nearest
    entries of a fixed table: equal to the node's sigmas."""
    from opensd.workflows.nodes_dit import flux2_scheduler
    _, pipe, _ = env
    sigmas = pipe.sigmas(pipe._params(PROMPT, "", dict(width=SIZE, height=SIZE, sampler="euler")), steps)
    torch.testing.assert_close(sigmas, flux2_scheduler(None, steps, SIZE, SIZE)[0], rtol=1e-6, atol=1e-7)


def test_flux2_scheduler_node_is_the_pipelines_schedule():
    from opensd.workflows.nodes_dit import flux2_scheduler
    (sigmas,) = flux2_scheduler(None, 4, 1024, 768)
    mu = flux2_mu(3072, 4)
    t = torch.tensor([1.0, 0.75, 0.5, 0.25], dtype=torch.float64)
    want = torch.cat([math_shift(mu, t), torch.zeros(1, dtype=torch.float64)]).float()
    torch.testing.assert_close(sigmas, want, rtol=1e-6, atol=1e-7)


def math_shift(mu, t):
    return torch.exp(torch.tensor(mu, dtype=torch.float64)) / (torch.exp(torch.tensor(mu, dtype=torch.float64))
                                                               + (1 / t - 1))


def test_comfyui_klein_graph_equals_our_txt2img(env):
    models, pipe, tmp = env
    folders = ModelFolders(models, include_builtin=False)
    ctx = make_ctx(folders, Loader(folders), tmp)
    got = _run(ctx, _graph())
    assert np.abs(got - pixels(_want(pipe))).max() <= 1  # SaveImage truncates where ours round
    with pytest.raises(NodeError, match="flux2"):
        _run(ctx, _graph(clip_type="stable_cascade"))


def test_the_network_is_a_model_by_name_and_a_missing_part_is_named(env, tmp_path):
    """diffusion_models/'s klein network, completed by the models folder, is a model by name; in a
    folder without its VAE the name is refused naming the part."""
    import shutil as sh

    from opensd.errors import InvalidArgument
    from opensd.library.network_models import resolve_model, whole_models
    models, _, _ = env
    assert any(m.path.name == UNET for m in whole_models(ModelFolders(models, include_builtin=False)))
    bare = tmp_path / "models"
    sh.copytree(models / "diffusion_models", bare / "diffusion_models")
    sh.copytree(models / "text_encoders", bare / "text_encoders")
    assert not any(m.path.name == UNET for m in whole_models(ModelFolders(bare, include_builtin=False)))
    with pytest.raises(InvalidArgument, match="has no FLUX.2 VAE for it"):
        resolve_model(ModelFolders(bare, include_builtin=False), "flux-2-klein-4b")


def _reference(path) -> "Image.Image":
    """A 48x64 reference (whole 16-pixel tokens: nothing cropped on either path), saved at `path`."""
    from PIL import Image
    rng = np.random.default_rng(11)
    image = Image.fromarray(rng.integers(0, 255, (64, 48, 3), dtype=np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return image


def test_comfyui_klein_edit_graph_equals_our_txt2img_with_the_reference(env):
    """ComfyUI's klein edit template: LoadImage -> VAEEncode -> ReferenceLatent on the positive and
    the negative conditioning -> CFGGuider: the image of our txt2img with the same reference, which
    differs from the one without it."""
    models, pipe, tmp = env
    image = _reference(tmp / "input" / "ref.png")
    graph = _graph()
    graph.update({
        "40": {"class_type": "LoadImage", "inputs": {"image": "ref.png"}},
        "41": {"class_type": "VAEEncode", "inputs": {"pixels": ["40", 0], "vae": ["13", 0]}},
        "42": {"class_type": "ReferenceLatent", "inputs": {"conditioning": ["6", 0], "latent": ["41", 0]}},
        "43": {"class_type": "ReferenceLatent", "inputs": {"conditioning": ["7", 0], "latent": ["41", 0]}},
    })
    graph["28"]["inputs"].update(positive=["42", 0], negative=["43", 0])
    folders = ModelFolders(models, include_builtin=False)
    got = _run(make_ctx(folders, Loader(folders), tmp), graph)
    want = pixels(pipe.txt2img(PROMPT, "", references=[image], steps=STEPS, seed=SEED, width=SIZE, height=SIZE,
                               cfg=1.0, sampler="euler", scheduler="simple")[0])
    assert np.abs(got - want).max() <= 1
    assert np.abs(want - pixels(_want(pipe))).max() > 8  # the reference changes the image


def test_cli_reference_image_edits_with_klein(env, tmp_path):
    """`opensd generate --reference-image` (as for Flux.1 Kontext) on the klein network's file."""
    models, pipe, _ = env
    image = _reference(tmp_path / "ref.png")
    got = cli_image(models / "diffusion_models" / UNET, tmp_path / "k.png", PROMPT, STEPS, SEED, SIZE,
                    "--reference-image", str(tmp_path / "ref.png"))
    want = pipe.txt2img(PROMPT, "", references=[image], steps=STEPS, seed=SEED, width=SIZE, height=SIZE, cfg=1.0,
                        sampler="euler", scheduler="simple")[0]
    assert np.abs(pixels(got) - pixels(want)).max() <= 1
