"""Qwen-Image from the faces people use, on a tiny random model in a ComfyUI models folder as the
released split files are kept (diffusion_models/qwen_image_bf16.safetensors, text_encoders/
qwen_2.5_vl_7b.safetensors with its tokenizer in text_encoders/qwen_tokenizer/, vae/
qwen_image_vae.safetensors): `opensd generate -m <the network's file>` with the family's defaults
(true CFG 4 against the empty prompt), the A1111 API's txt2img, and ComfyUI's Qwen-Image graph
(UNETLoader + CLIPLoader type "qwen_image" + VAELoader + ModelSamplingAuraFlow 3.1 + EmptySD3LatentImage
+ KSampler), which runs ComfyUI's plain CFG: the pipeline's image with the CFG renormalisation off."""
from __future__ import annotations


import numpy as np
import pytest
from PIL import Image
from workflow_fixtures import Loader, make_ctx

from dit_fixtures import a1111_txt2img_from_checkpoints
from opensd.cli import main
from opensd.library.models_dir import ModelFolders
from opensd.models.config_dit import QwenImageModelConfig
from opensd.pipeline.infotext import read_infotext
from opensd.pipeline.pipeline import load
from opensd.workflows import NodeError, execute
from qwen_image_fixtures import qwen_image_parts, write_qwen_image_split_files_of

SIZE, SEED, STEPS, PROMPT, NEGATIVE = 64, 3, 3, "a photo of a cat", "blurry"
UNET = "qwen_image_bf16.safetensors"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("qwenimagefaces")
    models = tmp / "models"
    files = write_qwen_image_split_files_of(models, qwen_image_parts(seed=4))
    return models, load(files["unet"], precision="fp32", device="cpu"), tmp


def _pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(int)


def _want(pipe, cfg=4.0, negative="", **kw):
    return pipe.txt2img(PROMPT, negative, steps=STEPS, seed=SEED, width=SIZE, height=SIZE, cfg=cfg,
                        sampler="euler", scheduler="simple", **kw)[0]


def test_cli_generates_by_name_from_the_models_folder_with_the_family_defaults(env, tmp_path):
    """The network is listed as a whole model (its VAE and text encoder in the folder) and `-m` takes
    its name."""
    from opensd.library.network_models import whole_models
    models, pipe, _ = env
    assert [(m.kind, m.name) for m in whole_models(ModelFolders(models, include_builtin=False))] == [("unet", UNET)]
    out = tmp_path / "q.png"
    assert main(["generate", PROMPT, "-m", "qwen_image_bf16", "--models-dir", str(models), "--steps", str(STEPS),
                 "--seed", str(SEED), "--width", str(SIZE), "--height", str(SIZE), "--sampler", "euler",
                 "--precision", "fp32", "--device", "cpu", "-o", str(out)]) == 0
    assert np.abs(_pixels(Image.open(out)) - _pixels(_want(pipe))).max() <= 1
    text = read_infotext(out)
    assert "CFG scale: 4" in text and "Schedule type: Simple" in text


def test_a1111_api_txt2img_with_cfg(env, tmp_path):
    models, pipe, _ = env
    request = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "steps": STEPS, "seed": SEED, "cfg_scale": 2.5,
               "width": SIZE, "height": SIZE, "sampler_name": "Euler", "scheduler": "Simple"}
    image, info = a1111_txt2img_from_checkpoints(models, UNET, request, tmp_path / "out")
    assert np.abs(_pixels(image) - _pixels(_want(pipe, 2.5, NEGATIVE))).max() <= 1
    assert "CFG scale: 2.5" in info


def _graph(cfg=2.5, clip_type="qwen_image", shift=3.1) -> dict:
    def text(t):
        return {"class_type": "CLIPTextEncode", "inputs": {"clip": ["38", 0], "text": t}}
    return {
        "3": {"class_type": "KSampler", "inputs": {
            "cfg": cfg, "denoise": 1, "latent_image": ["58", 0], "model": ["66", 0], "negative": ["7", 0],
            "positive": ["6", 0], "sampler_name": "euler", "scheduler": "simple", "seed": SEED, "steps": STEPS}},
        "6": text(PROMPT), "7": text(NEGATIVE),
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["39", 0]}},
        "60": {"class_type": "SaveImage", "inputs": {"filename_prefix": "qwen_image", "images": ["8", 0]}},
        "37": {"class_type": "UNETLoader", "inputs": {"unet_name": UNET, "weight_dtype": "default"}},
        "38": {"class_type": "CLIPLoader", "inputs": {"clip_name": "qwen_2.5_vl_7b.safetensors", "type": clip_type,
                                                      "device": "default"}},
        "39": {"class_type": "VAELoader", "inputs": {"vae_name": "qwen_image_vae.safetensors"}},
        "58": {"class_type": "EmptySD3LatentImage", "inputs": {"batch_size": 1, "height": SIZE, "width": SIZE}},
        "66": {"class_type": "ModelSamplingAuraFlow", "inputs": {"model": ["37", 0], "shift": shift}},
    }


def _run(ctx, graph) -> np.ndarray:
    out = execute(graph, ctx)
    image = out["60"]["images"][0]
    return np.asarray(Image.open(ctx.outputs_dir / image["subfolder"] / image["filename"])).astype(int)


def test_comfyui_qwen_image_graph_is_plain_cfg_at_its_shift(env, monkeypatch):
    """The graph's image is the pipeline's at the node's shift, and its sampler's latents are the
    pipeline's with the CFG renormalisation off (plain CFG, as ComfyUI), not with it on."""
    import torch
    from dit_fixtures import spy_euler
    models, pipe, tmp = env
    folders = ModelFolders(models, include_builtin=False)
    ctx = make_ctx(folders, Loader(folders), tmp)
    seen = spy_euler(monkeypatch)
    got = _run(ctx, _graph(cfg=8.0))
    graph_steps = seen.pop("steps")
    renormed = _want(pipe, 8.0, NEGATIVE, shift=3.1)
    renormed_steps = seen.pop("steps")
    monkeypatch.setattr(QwenImageModelConfig, "cfg_renorm", 0)
    plain = _pixels(_want(pipe, 8.0, NEGATIVE, shift=3.1))
    plain_steps = seen.pop("steps")
    assert np.abs(got - plain).max() <= 1 and np.abs(got - _pixels(renormed)).max() <= 2  # SaveImage truncates
    torch.testing.assert_close(graph_steps[-1], plain_steps[-1], rtol=1e-4, atol=1e-4)
    assert (graph_steps[-1] - renormed_steps[-1]).abs().max() > 1e-2  # the pipeline renormalises; ComfyUI not
    assert not np.array_equal(_run(ctx, _graph(cfg=8.0, shift=1.0)), got)  # the shift is the node's
    with pytest.raises(NodeError, match="qwen_image"):
        _run(ctx, _graph(clip_type="stable_cascade"))


def test_comfyui_lora_loader_model_only_with_a_lightning_style_lora(env, tmp_path):
    """ComfyUI's template chains LoraLoaderModelOnly (Qwen-Image-Lightning, bare diffusers names) before
    ModelSamplingAuraFlow: the graph's image is the pipeline's with the same LoRA (CFG 1: no negative)."""
    import torch
    from safetensors.torch import save_file

    from opensd.adapters.lora import LoraSpec
    models, pipe, tmp = env
    g = torch.Generator().manual_seed(11)
    lora = {}
    for i in range(2):
        for name in ("attn.to_q", "attn.add_v_proj", "img_mlp.net.2", "txt_mod.1"):
            w = pipe.model.network.get_submodule(f"transformer_blocks.{i}.{name}").weight
            lora[f"transformer_blocks.{i}.{name}.lora_A.weight"] = torch.randn(4, w.shape[1], generator=g) * 0.2
            lora[f"transformer_blocks.{i}.{name}.lora_B.weight"] = torch.randn(w.shape[0], 4, generator=g) * 0.2
    (models / "loras").mkdir(exist_ok=True)
    save_file(lora, models / "loras" / "Qwen-Image-Lightning-8steps-V1.0.safetensors")
    graph = _graph(cfg=1.0)
    graph["70"] = {"class_type": "LoraLoaderModelOnly", "inputs": {
        "model": ["37", 0], "lora_name": "Qwen-Image-Lightning-8steps-V1.0.safetensors", "strength_model": 1.0}}
    graph["66"]["inputs"]["model"] = ["70", 0]
    folders = ModelFolders(models, include_builtin=False)
    got = _run(make_ctx(folders, Loader(folders), tmp), graph)
    plain = _pixels(_want(pipe, 1.0, NEGATIVE, shift=3.1))
    pipe.set_loras([LoraSpec(models / "loras" / "Qwen-Image-Lightning-8steps-V1.0.safetensors")])
    try:
        want = _pixels(_want(pipe, 1.0, NEGATIVE, shift=3.1))
        assert pipe.lora_reports[0].patched == 8 and pipe.lora_reports[0].unmatched == []
    finally:
        pipe.set_loras([])
        pipe.apply_loras("")
    assert np.abs(got - want).max() <= 1 and np.abs(want - plain).max() > 1
