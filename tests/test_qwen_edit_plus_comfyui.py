"""ComfyUI's TextEncodeQwenImageEditPlus on a tiny Qwen-Image-Edit-2509 / 2511 in a ComfyUI models
folder: the node's conditioning is the prompt encoded with the given images as ComfyUI prepares them
(each area-scaled to ~384x384 in whole pixels, bilinear for the vision encoder, labelled by its input's
number, the template cut after "user\\n"), with one reference latent per image (~1 MP, sides multiples
of 8) when given a VAE; without images the prompt is in the edit template. The graph (UNETLoader +
CLIPLoader + VAELoader + LoadImage x2 + the node + KSampler) runs and sees both references; a 2511
network file (ComfyUI's __index_timestep_zero__ marker) defaults to the index_timestep_zero method,
which FluxKontextMultiReferenceLatentMethod can set or override."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from workflow_fixtures import Loader, make_ctx

from opensd.checkpoints.files import read_state_dict, save_safetensors
from opensd.library.models_dir import ModelFolders
from opensd.text.qwen_edit_prompts import SYSTEM_TEMPLATE, comfy_drop, encode_qwen_edit_prompts
from opensd.text.qwen_vl_image import comfy_vl_patches
from opensd.workflows import execute
from test_qwen_edit_pipeline import SEED, SIZE, edit, write_edit_split_files  # noqa: F401
from test_qwen_edit_plus_pipeline import PROMPT, _images

PLUS, MARKED = "qwen_image_edit_2509_bf16.safetensors", "edit_marked_bf16.safetensors"


@pytest.fixture(scope="module")
def ctx(edit, tmp_path_factory):
    _, ref = edit
    tmp = tmp_path_factory.mktemp("qwen_edit_plus_comfy")
    files = write_edit_split_files(tmp / "models", ref, net_name=PLUS)
    marked = {**read_state_dict(files["unet"]), "__index_timestep_zero__": torch.empty(0)}
    save_safetensors(marked, files["unet"].parent / MARKED)
    (tmp / "input").mkdir()
    for i, image in enumerate(_images(2)):
        image.save(tmp / "input" / f"photo{i + 1}.png")
    folders = ModelFolders(tmp / "models", include_builtin=False)
    return make_ctx(folders, Loader(folders), tmp)


def _tensor(image):
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255)[None]


def _area(image, area, multiple=1):
    scale = math.sqrt(area / (image.shape[1] * image.shape[2]))
    size = (round(image.shape[1] * scale / multiple) * multiple, round(image.shape[2] * scale / multiple) * multiple)
    return F.interpolate(image.movedim(-1, 1), size=size, mode="area").movedim(1, -1)


@torch.no_grad()
def test_the_node_encodes_as_comfyui(ctx):
    from opensd.pipeline.pipeline import load
    from opensd.workflows.nodes_qwen_edit import text_encode_qwen_image_edit_plus
    from opensd.workflows.types import ClipRef
    pipe = load(ctx.folders.root / "diffusion_models" / PLUS, precision="fp32", device="cpu",
                vae=ctx.folders.root / "vae" / "qwen_image_vae.safetensors")
    clip = ClipRef(pipe, "te")
    first, second = (_tensor(i) for i in _images(2))
    (cond,) = text_encode_qwen_image_edit_plus(None, clip, PROMPT, None, first, None, second)
    context, extra = cond[0]
    encoder, tokenizer = pipe.model.encoder("qwen25_7b"), pipe.loaded.tokenizers["qwen"]
    shown = [comfy_vl_patches(_area(i, 384 * 384)[0]) for i in (first, second)]
    want, _ = encode_qwen_edit_prompts(encoder.transformer, encoder.visual, tokenizer, [PROMPT], shown,
                                       drop="comfy", pictures=[1, 3])  # image3's label: "Picture 3: "
    torch.testing.assert_close(context, want.float(), rtol=1e-5, atol=1e-5)
    other, _ = encode_qwen_edit_prompts(encoder.transformer, encoder.visual, tokenizer, [PROMPT], shown,
                                        drop="comfy", pictures=[1, 2])
    assert other.shape == want.shape and (other - want).abs().max() > 1e-4  # the labels are seen
    assert "reference_latents" not in extra  # no vae: the images are in the prompt only
    # with no image: the prompt alone in the edit template (ComfyUI's llama_template), cut alike
    (cond,) = text_encode_qwen_image_edit_plus(None, clip, PROMPT)
    full, _ = encode_qwen_edit_prompts(encoder.transformer, None, tokenizer, [PROMPT], [], drop=0, pictures=[])
    cut = comfy_drop(tokenizer, tokenizer.encode(SYSTEM_TEMPLATE.format(PROMPT)))
    torch.testing.assert_close(cond[0][0], full[:, cut:].float(), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_the_node_encodes_a_reference_latent_per_image(ctx):
    """With a VAE: each image's latent at ~1 MP, sides multiples of 8 (ComfyUI's, not diffusers' 32)."""
    from types import SimpleNamespace
    from opensd.pipeline.pipeline import load
    from opensd.workflows.nodes_core import vae_encode_tensor
    from opensd.workflows.nodes_qwen_edit import text_encode_qwen_image_edit_plus
    from opensd.workflows.types import ClipRef
    pipe = load(ctx.folders.root / "diffusion_models" / PLUS, precision="fp32", device="cpu",
                vae=ctx.folders.root / "vae" / "qwen_image_vae.safetensors")
    images = [_tensor(i) for i in _images(2)]
    (cond,) = text_encode_qwen_image_edit_plus(None, ClipRef(pipe, "te"), PROMPT, SimpleNamespace(pipe=pipe), *images)
    refs = cond[0][1]["reference_latents"]
    assert len(refs) == 2
    for ref, image in zip(refs, images):
        fitted = _area(image, 1024 * 1024, 8)
        assert fitted.shape[1] % 16 or fitted.shape[2] % 16  # not whole 2x2 latent patches: padded in the network
        torch.testing.assert_close(ref, vae_encode_tensor(pipe, fitted))


def _graph(net=PLUS, images=2, vae=True, method=None) -> dict:
    def text(t):
        inputs = {"clip": ["38", 0], "prompt": t, **{f"image{i + 1}": [f"7{i}", 0] for i in range(images)}}
        if vae:
            inputs["vae"] = ["39", 0]
        return {"class_type": "TextEncodeQwenImageEditPlus", "inputs": inputs}
    graph = {
        "3": {"class_type": "KSampler", "inputs": {
            "cfg": 1.0, "denoise": 1, "latent_image": ["58", 0], "model": ["37", 0], "negative": ["7", 0],
            "positive": ["6", 0], "sampler_name": "euler", "scheduler": "simple", "seed": SEED, "steps": 2}},
        "6": text(PROMPT), "7": text(""),
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["39", 0]}},
        "60": {"class_type": "SaveImage", "inputs": {"filename_prefix": "plus", "images": ["8", 0]}},
        "37": {"class_type": "UNETLoader", "inputs": {"unet_name": net, "weight_dtype": "default"}},
        "38": {"class_type": "CLIPLoader", "inputs": {"clip_name": "qwen_2.5_vl_7b.safetensors", "type": "qwen_image",
                                                      "device": "default"}},
        "39": {"class_type": "VAELoader", "inputs": {"vae_name": "qwen_image_vae.safetensors"}},
        "58": {"class_type": "EmptySD3LatentImage", "inputs": {"batch_size": 1, "height": SIZE, "width": SIZE}},
        "70": {"class_type": "LoadImage", "inputs": {"image": "photo1.png"}},
        "71": {"class_type": "LoadImage", "inputs": {"image": "photo2.png"}},
    }
    if method is not None:
        graph["11"] = {"class_type": "FluxKontextMultiReferenceLatentMethod",
                       "inputs": {"conditioning": ["6", 0], "reference_latents_method": method}}
        graph["12"] = {"class_type": "FluxKontextMultiReferenceLatentMethod",
                       "inputs": {"conditioning": ["7", 0], "reference_latents_method": method}}
        graph["3"]["inputs"].update(positive=["11", 0], negative=["12", 0])
    return graph


def _run(ctx, graph) -> np.ndarray:
    out = execute(graph, ctx)
    image = out["60"]["images"][0]
    return np.asarray(Image.open(ctx.outputs_dir / image["subfolder"] / image["filename"])).astype(int)


def test_the_graph_runs_and_sees_both_references(ctx):
    two, one = _run(ctx, _graph()), _run(ctx, _graph(images=1))
    assert two.shape == (SIZE, SIZE, 3)
    assert not np.array_equal(two, one)  # the second image is seen (by little, on these tiny weights)
    assert np.abs(two - _run(ctx, _graph(vae=False))).max() > 3  # the reference latents are seen


def test_a_2511_file_defaults_to_index_timestep_zero(ctx):
    default, zero = _run(ctx, _graph(MARKED)), _run(ctx, _graph(MARKED, method="index_timestep_zero"))
    index = _run(ctx, _graph(MARKED, method="index"))
    assert np.array_equal(default, zero)
    assert np.abs(default - index).max() > 3
    assert np.array_equal(index, _run(ctx, _graph()))  # "index" on 2511 is the 2509 network's
    assert np.array_equal(_run(ctx, _graph(method="index_timestep_zero")), zero)  # the method sets it


def test_a1111_reference_images_follow_the_family_limit(ctx, tmp_path):
    """/sdapi/v1/txt2img's `reference_images`: two on the Edit-2509 network are taken; on a
    Qwen-Image-Edit network the second is refused (422) naming the models that take several."""
    import base64
    import io
    import shutil
    from fastapi.testclient import TestClient
    from opensd.server.app import create_app
    from opensd.server.settings import Settings
    from server_live import BASE
    models = ctx.folders.root
    (models / "checkpoints").mkdir(exist_ok=True)
    shutil.copyfile(models / "diffusion_models" / PLUS, models / "checkpoints" / PLUS)
    single = "qwen_image_edit_bf16.safetensors"
    shutil.copyfile(models / "diffusion_models" / PLUS, models / "checkpoints" / single)
    refs = []
    for image in _images(2):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        refs.append(base64.b64encode(buf.getvalue()).decode())
    request = {"prompt": PROMPT, "steps": 1, "width": SIZE, "height": SIZE, "cfg_scale": 1, "seed": SEED,
               "sampler_name": "Euler", "scheduler": "Simple", "reference_images": refs}
    with TestClient(create_app(Settings(models_dir=models, outputs_dir=tmp_path)), base_url=BASE) as client:
        ok = client.post("/sdapi/v1/txt2img", json={**request, "override_settings": {"sd_model_checkpoint": PLUS}})
        refused = client.post("/sdapi/v1/txt2img",
                              json={**request, "override_settings": {"sd_model_checkpoint": single}})
    assert ok.status_code == 200, ok.text
    assert refused.status_code == 422, refused.text
    assert "Qwen-Image-Edit takes one reference image (2 given); Edit-2509/2511" in refused.json()["detail"]
