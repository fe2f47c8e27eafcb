"""ComfyUI's TextEncodeQwenImageEdit on a tiny Qwen-Image-Edit in a ComfyUI models folder: the graph
(UNETLoader + CLIPLoader type qwen_image + VAELoader + LoadImage + TextEncodeQwenImageEdit for both
prompts + KSampler) runs; the node's conditioning is the prompt encoded with the image as ComfyUI
prepares it (area-scaled to ~1 MP with whole-pixel sides, bilinear for the vision encoder, the template
cut after "user\\n" so the kept tokens start at <|vision_start|>) and carries the image's latent; the
reference changes the image; without an image the node is CLIPTextEncode."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from workflow_fixtures import Loader, make_ctx

from opensd.library.models_dir import ModelFolders
from opensd.text.qwen_edit_prompts import encode_qwen_edit_prompts
from opensd.text.qwen_vl_image import comfy_vl_patches
from opensd.workflows import execute
from test_qwen_edit_pipeline import PROMPT, SEED, SIZE, _image, edit, write_edit_split_files  # noqa: F401

STEPS = 2


@pytest.fixture(scope="module")
def ctx(edit, tmp_path_factory):
    _, ref = edit
    tmp = tmp_path_factory.mktemp("qwen_edit_comfy")
    write_edit_split_files(tmp / "models", ref)
    (tmp / "input").mkdir()
    _image().save(tmp / "input" / "photo.png")
    folders = ModelFolders(tmp / "models", include_builtin=False)
    return make_ctx(folders, Loader(folders), tmp)


def _graph(image=True, vae=True, encoder="TextEncodeQwenImageEdit") -> dict:
    def text(t):
        if encoder == "CLIPTextEncode":
            return {"class_type": encoder, "inputs": {"clip": ["38", 0], "text": t}}
        inputs = {"clip": ["38", 0], "prompt": t}
        if image:
            inputs["image"] = ["70", 0]
        if vae:
            inputs["vae"] = ["39", 0]
        return {"class_type": encoder, "inputs": inputs}
    return {
        "3": {"class_type": "KSampler", "inputs": {
            "cfg": 1.0, "denoise": 1, "latent_image": ["58", 0], "model": ["37", 0], "negative": ["7", 0],
            "positive": ["6", 0], "sampler_name": "euler", "scheduler": "simple", "seed": SEED, "steps": STEPS}},
        "6": text(PROMPT), "7": text(""),
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["39", 0]}},
        "60": {"class_type": "SaveImage", "inputs": {"filename_prefix": "edit", "images": ["8", 0]}},
        "37": {"class_type": "UNETLoader", "inputs": {"unet_name": "qwen_image_edit_bf16.safetensors",
                                                      "weight_dtype": "default"}},
        "38": {"class_type": "CLIPLoader", "inputs": {"clip_name": "qwen_2.5_vl_7b.safetensors", "type": "qwen_image",
                                                      "device": "default"}},
        "39": {"class_type": "VAELoader", "inputs": {"vae_name": "qwen_image_vae.safetensors"}},
        "58": {"class_type": "EmptySD3LatentImage", "inputs": {"batch_size": 1, "height": SIZE, "width": SIZE}},
        "70": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
    }


def _run(ctx, graph) -> np.ndarray:
    out = execute(graph, ctx)
    image = out["60"]["images"][0]
    return np.asarray(Image.open(ctx.outputs_dir / image["subfolder"] / image["filename"])).astype(int)


@torch.no_grad()
def test_the_node_encodes_as_comfyui(ctx):
    """The image area-scaled to ~1 MP (whole pixels), bilinear for the vision encoder; the features
    kept from <|vision_start|> on (ComfyUI's cut after the second <|im_start|> and "user\\n")."""
    from opensd.pipeline.pipeline import load
    from opensd.text.qwen_edit_prompts import EDIT_TEMPLATE, IMAGE_PAD
    from opensd.text.qwen_vl_image import merged_tokens
    from opensd.workflows.nodes_qwen_edit import text_encode_qwen_image_edit
    from opensd.workflows.types import ClipRef
    pipe = load(ctx.folders.root / "diffusion_models" / "qwen_image_edit_bf16.safetensors", precision="fp32",
                device="cpu")
    image = torch.from_numpy(np.asarray(_image(), dtype=np.float32) / 255)[None]
    (cond,) = text_encode_qwen_image_edit(None, ClipRef(pipe, "te"), PROMPT, None, image)
    context, extra = cond[0]
    scale = math.sqrt(1024 * 1024 / (90 * 60))
    fitted = F.interpolate(image.movedim(-1, 1), size=(round(60 * scale), round(90 * scale)), mode="area")
    patches, grid = comfy_vl_patches(fitted[0].movedim(0, -1))
    encoder, tokenizer = pipe.model.encoder("qwen25_7b"), pipe.loaded.tokenizers["qwen"]
    full, _ = encode_qwen_edit_prompts(encoder.transformer, encoder.visual, tokenizer, [PROMPT], (patches, grid),
                                       drop=0)
    head, tail = EDIT_TEMPLATE.split(IMAGE_PAD)
    ids = tokenizer.encode(head + IMAGE_PAD * merged_tokens(grid) + tail.format(PROMPT))
    # this tiny vocabulary has no single "user" token: ComfyUI's rule then cuts at the second <|im_start|>
    assert len(tokenizer.encode("user")) > 1
    first = [i for i, t in enumerate(ids) if t == tokenizer.encode("<|im_start|>")[0]][1]
    assert context.shape[1] == len(ids) - first
    torch.testing.assert_close(context[0], full[0, first:].float(), rtol=1e-5, atol=1e-5)
    assert "reference_latents" not in extra


def test_comfyui_cut_with_qwens_vocabulary():
    """With Qwen's ids ("user" 872, newline 198, <|im_start|> 151644) the cut is past "user\\n"."""
    from types import SimpleNamespace
    from opensd.text.qwen_edit_prompts import comfy_drop
    vocab = {"<|im_start|>": [151644], "user": [872], "\n": [198]}
    tok = SimpleNamespace(encode=lambda s: vocab[s])
    ids = [151644, 8948, 198, 5, 151645, 198, 151644, 872, 198, 151652, 151655, 151653, 77]
    assert comfy_drop(tok, ids) == 9 and ids[9] == 151652
    assert comfy_drop(tok, ids[:8] + [42, 43, 44]) == 6  # not "user\\n": cut at the <|im_start|>


def test_the_graph_runs_and_sees_the_reference(ctx):
    with_ref = _run(ctx, _graph())
    without_vae = _run(ctx, _graph(vae=False))
    plain = _run(ctx, _graph(image=False, vae=False))
    assert with_ref.shape == (SIZE, SIZE, 3)
    assert np.abs(with_ref - without_vae).max() > 3  # the reference latent is seen
    assert np.abs(without_vae - plain).max() > 3  # the image in the prompt is seen
    assert np.array_equal(_run(ctx, _graph(image=False, vae=False, encoder="CLIPTextEncode")), plain)
