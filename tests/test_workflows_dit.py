"""ComfyUI graphs for SD3 and Flux on tiny random models in a ComfyUI models folder: the SD3 example
graph from a whole checkpoint equals our txt2img with the same seed; UNETLoader + TripleCLIPLoader +
VAELoader + CLIPTextEncodeSD3 equal the checkpoint; Flux from diffusion_models/ with DualCLIPLoader
(type flux), FluxGuidance or CLIPTextEncodeFlux, ModelSamplingFlux and EmptySD3LatentImage."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from workflow_fixtures import Loader, make_ctx

from dit_fixtures import META_FLUX, META_SD3, assert_same_pixels, flux_parts, load_tiny, sd3_parts, write_single_file, write_split_files
from opensd.library.models_dir import ModelFolders
from opensd.workflows import NodeError, execute

SIZE, SEED, PROMPT, NEGATIVE = 64, 5, "a photo of a cat", "blurry"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ditwf")
    models = tmp / "models"
    sd3 = load_tiny(tmp / "sd3", "sd3", sd3_parts())
    flux = load_tiny(tmp / "flux", "flux", flux_parts())
    write_single_file(models / "checkpoints" / "sd3.safetensors", sd3.model, META_SD3)
    write_split_files(models, sd3.model, "sd3", META_SD3)
    write_split_files(models, flux.model, "flux1", META_FLUX, file_prefix="flux_")
    folders = ModelFolders(models, include_builtin=False)
    return make_ctx(folders, Loader(folders), tmp), sd3, tmp


def _run(ctx, graph) -> np.ndarray:
    out = execute(graph, ctx)
    image = out["9"]["images"][0]
    return np.asarray(Image.open(ctx.outputs_dir / image["subfolder"] / image["filename"]))


def _sd3_graph(model, clip, vae, sampler="euler", scheduler="normal", cfg=4.5, encode="CLIPTextEncode"):
    def text(t):
        if encode == "CLIPTextEncode":
            return {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": t}}
        return {"class_type": "CLIPTextEncodeSD3", "inputs": {"clip": clip, "clip_l": t, "clip_g": t, "t5xxl": t,
                                                              "empty_padding": "empty_prompt"}}
    return {
        "3": {"class_type": "KSampler", "inputs": {
            "cfg": cfg, "denoise": 1, "latent_image": ["5", 0], "model": model, "negative": ["7", 0],
            "positive": ["6", 0], "sampler_name": sampler, "scheduler": scheduler, "seed": SEED, "steps": 3}},
        "5": {"class_type": "EmptySD3LatentImage", "inputs": {"batch_size": 1, "height": SIZE, "width": SIZE}},
        "6": text(PROMPT), "7": text(NEGATIVE),
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": vae}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "dit", "images": ["8", 0]}},
    }


def test_sd3_checkpoint_graph_equals_our_txt2img(env):
    ctx, sd3, _ = env
    graph = _sd3_graph(["10", 0], ["4", 1], ["4", 2])
    graph["4"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd3.safetensors"}}
    graph["10"] = {"class_type": "ModelSamplingSD3", "inputs": {"model": ["4", 0], "shift": 3.0}}
    got = _run(ctx, graph)
    want = np.asarray(sd3.txt2img(PROMPT, NEGATIVE, steps=3, cfg=4.5, seed=SEED, width=SIZE, height=SIZE)[0])
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1 and want.std() > 1
    graph["10"]["inputs"]["shift"] = 6.0  # the patch reaches the schedule
    assert not np.array_equal(_run(ctx, graph), got)


def test_sd3_from_separate_files_equals_the_checkpoint(env):
    ctx, _, _ = env
    whole = _sd3_graph(["4", 0], ["4", 1], ["4", 2])
    whole["4"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd3.safetensors"}}
    split = _sd3_graph(["11", 0], ["12", 0], ["13", 0], encode="CLIPTextEncodeSD3")
    split["11"] = {"class_type": "UNETLoader", "inputs": {"unet_name": "sd3.safetensors", "weight_dtype": "default"}}
    split["12"] = {"class_type": "TripleCLIPLoader", "inputs": {
        "clip_name1": "clip_l.safetensors", "clip_name2": "clip_g.safetensors", "clip_name3": "t5xxl_fp16.safetensors"}}
    split["13"] = {"class_type": "VAELoader", "inputs": {"vae_name": "sd3_vae.safetensors"}}
    assert_same_pixels(_run(ctx, split), _run(ctx, whole))


def _flux_graph(positive: dict, shift=True) -> dict:
    graph = {
        "3": {"class_type": "KSampler", "inputs": {
            "cfg": 1.0, "denoise": 1, "latent_image": ["5", 0], "model": ["20", 0] if shift else ["11", 0],
            "negative": ["7", 0], "positive": ["6", 0], "sampler_name": "euler", "scheduler": "simple", "seed": SEED,
            "steps": 3}},
        "5": {"class_type": "EmptySD3LatentImage", "inputs": {"batch_size": 1, "height": SIZE, "width": SIZE}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["12", 0], "text": ""}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["13", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "flux", "images": ["8", 0]}},
        "11": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux1.safetensors", "weight_dtype": "default"}},
        "12": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "flux_t5xxl_fp16.safetensors",
                                                          "clip_name2": "flux_clip_l.safetensors", "type": "flux"}},
        "13": {"class_type": "VAELoader", "inputs": {"vae_name": "flux1_vae.safetensors"}},
        "20": {"class_type": "ModelSamplingFlux", "inputs": {"model": ["11", 0], "max_shift": 1.15, "base_shift": 0.5,
                                                             "width": SIZE, "height": SIZE}},
    }
    graph.update(positive)
    return graph


def test_flux_graph_with_flux_guidance_or_clip_text_encode_flux(env):
    ctx, _, _ = env
    guided = _flux_graph({
        "6": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["14", 0], "guidance": 3.5}},
        "14": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["12", 0], "text": PROMPT}}})
    flux_encode = _flux_graph({"6": {"class_type": "CLIPTextEncodeFlux", "inputs": {
        "clip": ["12", 0], "clip_l": PROMPT, "t5xxl": PROMPT, "guidance": 3.5}}})
    image = _run(ctx, guided)
    assert image.std() > 1 and np.array_equal(_run(ctx, flux_encode), image)
    guided["6"]["inputs"]["guidance"] = 1.0  # the distilled guidance reaches the network
    assert not np.array_equal(_run(ctx, guided), image)
    assert not np.array_equal(_run(ctx, _flux_graph(flux_encode_inputs(PROMPT), shift=False)), image)


def flux_encode_inputs(text):
    return {"6": {"class_type": "CLIPTextEncodeFlux", "inputs": {
        "clip": ["12", 0], "clip_l": text, "t5xxl": text, "guidance": 3.5}}}


def test_sd3_nodes_refuse_a_flux_clip_in_one_line(env):
    ctx, _, _ = env
    graph = _flux_graph({"6": {"class_type": "CLIPTextEncodeSD3", "inputs": {
        "clip": ["12", 0], "clip_l": "a", "clip_g": "a", "t5xxl": "a", "empty_padding": "none"}}})
    with pytest.raises(NodeError, match="clip: this node encodes for SD3 models; this CLIP is for Flux.1"):
        execute(graph, ctx)


def _write_gguf_flux(models):
    """The tiny Flux network as unet/flux1-Q8_0.gguf and, dequantised, diffusion_models/flux1_dequantised.safetensors."""
    import gguf
    from opensd.checkpoints.files import read_state_dict, save_safetensors
    from test_stored_weights import write_gguf
    (models / "unet").mkdir(exist_ok=True)
    sd = read_state_dict(models / "diffusion_models" / "flux1.safetensors")
    held = write_gguf(models / "unet" / "flux1-Q8_0.gguf", sd, gguf.GGMLQuantizationType.Q8_0, META_FLUX, "flux")
    save_safetensors(held, models / "diffusion_models" / "flux1_dequantised.safetensors", META_FLUX)
    return models


def test_gguf_network_in_the_models_folder(env):
    """city96's UnetLoaderGGUF lists unet/ and diffusion_models/ .gguf files and runs a Q8_0 network as
    UNETLoader runs the same weights dequantised (and, with weight_dtype fp8_e4m3fn, nearly so);
    `opensd generate -m x.gguf` finds its text encoders and VAE in the models folder as for a
    safetensors network."""
    from opensd.pipeline.pipeline import load
    from opensd.workflows import object_info
    ctx, _, tmp = env
    models = _write_gguf_flux(tmp / "models")
    info = object_info(ctx, "UnetLoaderGGUF")["UnetLoaderGGUF"]
    assert info["input"]["required"]["unet_name"] == [["flux1-Q8_0.gguf"]]
    graph = _flux_graph(flux_encode_inputs(PROMPT))
    plain = _run(ctx, {**graph, "11": {"class_type": "UNETLoader", "inputs": {
        "unet_name": "flux1_dequantised.safetensors", "weight_dtype": "default"}}})
    quantised = _run(ctx, {**graph, "11": {"class_type": "UnetLoaderGGUF", "inputs": {"unet_name": "flux1-Q8_0.gguf"}}})
    assert np.abs(plain.astype(int) - quantised.astype(int)).max() <= 1 and plain.std() > 1
    fp8 = _run(ctx, {**graph, "11": {"class_type": "UNETLoader", "inputs": {
        "unet_name": "flux1_dequantised.safetensors", "weight_dtype": "fp8_e4m3fn"}}})
    assert 0 < np.abs(plain.astype(int) - fp8.astype(int)).mean() < 8  # stored in float8, cast per layer
    kw = dict(steps=2, seed=SEED, width=SIZE, height=SIZE)
    a = load(models / "unet" / "flux1-Q8_0.gguf", precision="fp32", device="cpu").txt2img(PROMPT, **kw)[0]
    b = load(models / "diffusion_models" / "flux1_dequantised.safetensors", precision="fp32", device="cpu")
    assert np.abs(np.asarray(a, int) - np.asarray(b.txt2img(PROMPT, **kw)[0], int)).max() <= 1


def test_flux_disable_guidance_leaves_the_guidance_embedding_out(env, monkeypatch):
    """FluxDisableGuidance: whatever guidance came before, the network gets none (ComfyUI's None), which
    is the guided network with its guidance_in giving zeros."""
    import torch

    from opensd.models.flux import Flux

    ctx, _, _ = env

    def disabled(scale):
        return _flux_graph({
            "6": {"class_type": "FluxDisableGuidance", "inputs": {"conditioning": ["15", 0]}},
            "15": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["14", 0], "guidance": scale}},
            "14": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["12", 0], "text": PROMPT}}})

    off = _run(ctx, disabled(3.5))
    assert off.std() > 1 and np.array_equal(_run(ctx, disabled(1.0)), off)
    guided = disabled(3.5)
    guided["6"] = guided.pop("15")
    assert not np.array_equal(_run(ctx, guided), off)

    real = Flux.forward_tokens

    def zero_guidance(self, *args):
        if args[6] is None:  # (img, ids, txt, txt_ids, t, y, guidance, control)
            raise AssertionError("the reference run must get a guidance tensor")
        with torch.no_grad():
            saved = [p.clone() for p in self.guidance_in.out_layer.parameters()]
            for p in self.guidance_in.out_layer.parameters():
                p.zero_()
            try:
                return real(self, *args)
            finally:
                for p, s in zip(self.guidance_in.out_layer.parameters(), saved):
                    p.copy_(s)

    monkeypatch.setattr(Flux, "forward_tokens", zero_guidance)
    ctx.cache = None
    assert np.array_equal(_run(ctx, guided), off)


def test_loras_on_gguf_and_fp8_networks(env):
    """LoraLoaderModelOnly on UnetLoaderGGUF's network, and on UNETLoader's with weight_dtype fp8, changes
    the image as on the same weights loaded dequantised, and leaves no patch after the run; the same
    LoRA as a prompt's <lora:name:w> on `opensd generate -m x.gguf` does too. A merge of the GGUF
    network is refused, saying why."""
    from opensd.models.stored_weights import StoredLinear
    from opensd.pipeline import parts
    from opensd.pipeline.pipeline import load
    from test_stored_lora import write_lora
    ctx, _, tmp = env
    models = _write_gguf_flux(tmp / "models")
    plain_pipe = parts.load_unet(models / "diffusion_models" / "flux1_dequantised.safetensors", device="cpu")
    (models / "loras").mkdir(exist_ok=True)
    write_lora(models / "loras" / "style.safetensors", plain_pipe, size=0.2)
    gguf_loader = {"class_type": "UnetLoaderGGUF", "inputs": {"unet_name": "flux1-Q8_0.gguf"}}
    float_loader = {"class_type": "UNETLoader", "inputs": {"unet_name": "flux1_dequantised.safetensors",
                                                           "weight_dtype": "default"}}
    fp8_loader = {**float_loader, "inputs": {**float_loader["inputs"], "weight_dtype": "fp8_e4m3fn"}}

    def image(loader, strength=None):
        graph = {**_flux_graph(flux_encode_inputs(PROMPT)), "11": loader}
        if strength is not None:
            graph["30"] = {"class_type": "LoraLoaderModelOnly", "inputs": {
                "model": ["11", 0], "lora_name": "style.safetensors", "strength_model": strength}}
            graph["20"]["inputs"]["model"] = ["30", 0]
        return _run(ctx, graph).astype(int)

    plain, plain_lora = image(float_loader), image(float_loader, 0.8)
    quantised, quantised_lora = image(gguf_loader), image(gguf_loader, 0.8)
    change = np.abs(plain_lora - plain).mean()
    assert change > 2  # the LoRA shows in the image
    assert np.abs(quantised_lora - plain_lora).max() <= 1 and np.abs(quantised - plain).max() <= 1
    assert np.array_equal(image(gguf_loader, 0.0), quantised)  # strength 0: no LoRA
    assert np.array_equal(image(gguf_loader), quantised)  # and after a LoRA run: no patch left behind
    fp8, fp8_lora = image(fp8_loader), image(fp8_loader, 0.8)
    assert 0.5 * change < np.abs(fp8_lora - fp8).mean() < 2 * change
    assert np.abs(fp8_lora - plain_lora).mean() < 8  # as near the float image as without the LoRA
    merge = {**_flux_graph(flux_encode_inputs(PROMPT)), "11": gguf_loader,
             "31": {"class_type": "ModelMergeSimple", "inputs": {"model1": ["11", 0], "model2": ["11", 0], "ratio": 0.5}}}
    merge["20"]["inputs"]["model"] = ["31", 0]
    with pytest.raises(NodeError, match="keeps its weights stored as float8/GGUF blocks.*cannot be merged: a merge"):
        execute(merge, ctx)
    kw = dict(steps=2, seed=SEED, width=SIZE, height=SIZE)
    prompt = f"{PROMPT} <lora:style:0.8>"
    pipes = [load(models / "unet" / "flux1-Q8_0.gguf", precision="fp32", device="cpu", loras_dir=models / "loras"),
             load(models / "diffusion_models" / "flux1_dequantised.safetensors", precision="fp32", device="cpu",
                  loras_dir=models / "loras")]
    network = pipes[0].family.network(pipes[0].model)
    a, b = (np.asarray(p.txt2img(prompt, **kw)[0], int) for p in pipes)
    assert any(m.patches for m in network.modules() if isinstance(m, StoredLinear))
    a0, b0 = (np.asarray(p.txt2img(PROMPT, **kw)[0], int) for p in pipes)
    assert not any(m.patches for m in network.modules() if isinstance(m, StoredLinear))
    assert np.abs(a - b).max() <= 1 and np.abs(a - a0).mean() > 2 and np.abs(a0 - b0).max() <= 1
