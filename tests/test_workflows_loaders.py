"""ComfyUI's separate loaders on tiny models split into ComfyUI's files: each part loaded alone
behaves exactly as the same part inside the checkpoint; CheckpointLoader's yaml; LoRA on the model
only; SDXL's two text encoders and CLIPTextEncodeSDXL."""
import logging
import shutil

import pytest
import torch
from workflow_fixtures import Loader, default_graph, make_ctx
from workflow_models import make_all_models

from opensd.errors import CheckpointError
from opensd.workflows import NODES, NodeError, execute, object_info
from opensd.workflows import ksampler as K
from opensd.workflows import nodes_conditioning as N
from opensd.workflows import nodes_loaders as L
from opensd.workflows.nodes_core import clip_text_encode, lora_loader, vae_decode_tensor, vae_encode_tensor
from opensd.workflows.types import ClipRef, ModelRef, NodeCall


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ld")
    folders, names = make_all_models(tmp / "models", {
        "v.yaml": "model:\n  params:\n    parameterization: v\n    scale_factor: 0.5\n",
        "wrong.yaml": "model:\n  params:\n    unet_config:\n      params:\n        context_dim: 768\n"})
    ctx = make_ctx(folders, Loader(folders), tmp)
    return NodeCall(ctx, "1", {}, lambda kind, data: None), names


def _ckpt(call, name="tiny.safetensors"):
    pipe = call.ctx.load_pipeline(name)
    return ModelRef(pipe, name), ClipRef(pipe, name)


KW = dict(seed=6, steps=2, cfg=5.0, sampler_name="euler", scheduler="normal")


def test_vae_loader_decodes_and_encodes_like_the_checkpoints_vae(env):
    call, names = env
    (vae,) = L.vae_loader(call, names["vae"])
    pipe = call.ctx.load_pipeline("tiny.safetensors")
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    image = vae_decode_tensor(vae.pipe, latents)
    assert torch.equal(image, vae_decode_tensor(pipe, latents))
    assert torch.equal(vae_encode_tensor(vae.pipe, image), vae_encode_tensor(pipe, image))
    assert all(p.is_meta for p in vae.pipe.model.unet.parameters())  # only the VAE holds weights


def test_unet_and_clip_loaders_sample_like_the_checkpoint(env):
    call, names = env
    model, clip = _ckpt(call)
    (unet,) = L.unet_loader(call, names["unet"], "default")
    (clip_only,) = L.clip_loader(call, names["clip_l"], "stable_diffusion")
    pos, neg = clip_text_encode(None, "a kite", clip)[0], clip_text_encode(None, "dull", clip)[0]
    pos2 = clip_text_encode(None, "a kite", clip_only)[0]
    assert torch.equal(pos2[0][0], pos[0][0])
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    assert torch.equal(K.sample(unet, pos2, neg, latent, **KW)["samples"], K.sample(model, pos, neg, latent, **KW)["samples"])


def test_dual_clip_loader_takes_sdxls_encoders_in_either_order(env):
    call, names = env
    _, clip = _ckpt(call, "tiny_xl.safetensors")
    (dual,) = L.dual_clip_loader(call, names["xl_clip_g"], names["xl_clip_l"], "sdxl")
    assert dual.pipe.config.family == "sdxl"
    want, got = clip_text_encode(None, "a kite, (sky:1.2)", clip)[0], clip_text_encode(None, "a kite, (sky:1.2)", dual)[0]
    assert torch.equal(got[0][0], want[0][0]) and torch.equal(got[0][1]["pooled_output"], want[0][1]["pooled_output"])


def test_clip_text_encode_sdxl_sends_each_text_to_its_encoder(env):
    call, _ = env
    model, clip = _ckpt(call, "tiny_xl.safetensors")
    pc = clip.pipe.conditioner()
    long_l = ", ".join(["a small red kite"] * 20)  # two 77-token chunks
    (c,) = N.clip_text_encode_sdxl(None, clip, 640, 480, 8, 16, 512, 384, "a kite", long_l)
    ctx, extra = c[0]
    g, l_ = pc.encode("a kite"), pc.encode(long_l)
    assert ctx.shape == (1, 154, 96)
    assert torch.equal(ctx[:, :, :32], l_.context[:, :, :32])            # CLIP-L read text_l
    assert torch.equal(ctx[:, :77, 32:], g.context[:, :, 32:])           # bigG read text_g...
    assert torch.equal(ctx[:, 77:, 32:], pc.empty().context[:, :, 32:])  # ...padded with an empty chunk
    assert torch.equal(extra["pooled_output"], g.pooled)
    assert {k: extra[k] for k in ("width", "height", "crop_w", "crop_h", "target_width", "target_height")} == \
        {"width": 640, "height": 480, "crop_w": 8, "crop_h": 16, "target_width": 512, "target_height": 384}
    (r,) = N.clip_text_encode_sdxl_refiner(None, 2.5, 800, 600, "a kite", clip)
    assert r[0][1]["aesthetic_score"] == 2.5 and torch.equal(r[0][0], clip_text_encode(None, "a kite", clip)[0][0][0])


def test_sdxl_size_conditioning_reaches_the_model(env):
    call, _ = env
    model, clip = _ckpt(call, "tiny_xl.safetensors")
    neg = clip_text_encode(None, "", clip)[0]
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    plain = K.sample(model, clip_text_encode(None, "a kite", clip)[0], neg, latent, **KW)["samples"]
    # CLIPTextEncode's defaults are the latent's pixel size, no crop, the same target
    (same,) = N.clip_text_encode_sdxl(None, clip, 64, 64, 0, 0, 64, 64, "a kite", "a kite")
    assert torch.equal(K.sample(model, same, neg, latent, **KW)["samples"], plain)
    (cropped,) = N.clip_text_encode_sdxl(None, clip, 64, 64, 32, 0, 64, 64, "a kite", "a kite")
    assert not torch.equal(K.sample(model, cropped, neg, latent, **KW)["samples"], plain)


def test_checkpoint_loader_reads_v_prediction_and_scale_from_the_yaml(env):
    call, _ = env
    model, clip = _ckpt(call)
    v_model, _, _ = L.checkpoint_loader_with_config(call, "v.yaml", "tiny.safetensors")
    assert v_model.sampling.prediction == "v" and v_model.latent_format.scaling_factor == 0.5
    from opensd.pipeline.pipeline import load
    v_pipe = load(call.ctx.folders.resolve("checkpoints", "tiny.safetensors"), prediction="v")
    pos, neg = clip_text_encode(None, "a kite", clip)[0], clip_text_encode(None, "", clip)[0]
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    want = K.sample(ModelRef(v_pipe, "v"), pos, neg, latent, **KW)["samples"]
    got = K.sample(v_model, pos, neg, latent, **KW)["samples"]
    # the same v-prediction sampling, only the latents' scale differs: 0.5 instead of 0.18215
    torch.testing.assert_close(got * 0.5, want * v_pipe.config.vae.scaling_factor, rtol=1e-4, atol=1e-4)
    g = default_graph()
    g["4"] = {"class_type": "CheckpointLoader", "inputs": {"config_name": "wrong.yaml", "ckpt_name": "tiny.safetensors"}}
    with pytest.raises(NodeError, match="wrong.yaml describes a UNet with context_dim 768, but tiny.safetensors has 64"):
        execute(g, call.ctx)
    assert object_info(call.ctx, "CheckpointLoader")["CheckpointLoader"]["input"]["required"]["config_name"][0] == \
        ["v.yaml", "wrong.yaml"]


def test_lora_on_the_model_only(env):
    call, _ = env
    model, clip = _ckpt(call)
    (only,) = L.lora_loader_model_only(call, model, "style.safetensors", 0.8)
    both, _ = lora_loader(call, model, clip, "style.safetensors", 0.8, 0.0)
    assert only == both
    assert L.lora_loader_model_only(call, model, "style.safetensors", 0.0)[0] is model
    pos, neg = clip_text_encode(None, "a kite", clip)[0], clip_text_encode(None, "", clip)[0]
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    assert not torch.equal(K.sample(only, pos, neg, latent, **KW)["samples"],
                           K.sample(model, pos, neg, latent, **KW)["samples"])


def test_unsupported_types_and_wrong_files_are_clear_errors(env, caplog):
    call, names = env
    with pytest.raises(ValueError, match="type: 'stable_cascade' text encoders are for model families opensd does not run"):
        L.clip_loader(call, names["clip_l"], "stable_cascade")
    with pytest.raises(CheckpointError, match="2 CLIP text encoders given; a Flux.1 model takes 1"):
        L.dual_clip_loader(call, names["xl_clip_l"], names["xl_clip_g"], "flux")
    shutil.copy(call.ctx.folders.resolve("vae", names["vae"]), call.ctx.folders.folders("unet")[0] / "a_vae.safetensors")
    with pytest.raises(CheckpointError, match="not a diffusion model .*standalone VAE"):
        L.unet_loader(call, "a_vae.safetensors", "default")
    with caplog.at_level(logging.WARNING):
        (unet,) = L.unet_loader(call, names["unet"], "fp8_e4m3fn")
    assert "fp8_e4m3fn storage is not supported" in caplog.text and unet.pipe.dtype == torch.float32


def test_part_loaders_take_the_servers_auto_precision(env, monkeypatch):
    """The server runs with --precision auto; its ComfyUI context passes that on to the part loaders,
    which choose as a whole checkpoint of the same family would (here: a small model, fp32 on a CPU)."""
    import dataclasses

    from opensd.server.app import create_app
    from opensd.server.settings import Settings
    call, names = env
    auto = dataclasses.replace(call.ctx, precision="auto", device="auto")
    (unet,) = L.unet_loader(NodeCall(auto, "1", {}, call.emit), names["unet"], "default")
    assert next(p for p in unet.pipe.model.unet.parameters()).dtype == torch.float32
    (vae,) = L.vae_loader(NodeCall(auto, "1", {}, call.emit), names["vae"])  # a VAE alone: as SD1's would
    image = vae_decode_tensor(vae.pipe, torch.zeros(1, 4, 8, 8))
    assert image.shape == (1, 64, 64, 3) and torch.isfinite(image).all()
    state = create_app(Settings(outputs_dir=call.ctx.outputs_dir / "srv", start_worker=False)).state.opensd
    ctx = state.comfy.context()
    assert (ctx.device, ctx.precision) == (state.cache.device, state.cache.precision) == ("auto", "auto")


def test_bypass_lora_loaders_match_lora_loader(env):
    """ComfyUI's bypass LoRA computes base(x) + lora(x) per layer, (W + delta) x for layers linear in
    their weights: the merged LoRA's result, so the nodes give LoraLoader's values."""
    call, _ = env
    model, clip = _ckpt(call)
    bypass = NODES["LoraLoaderBypass"].fn(call, model, clip, "style.safetensors", 0.7, 0.4)
    assert bypass == lora_loader(call, model, clip, "style.safetensors", 0.7, 0.4)
    assert bypass[0].loras[-1].unet == 0.7 and bypass[1].loras[-1].te == 0.4
    assert NODES["LoraLoaderBypassModelOnly"].fn(call, model, "style.safetensors", 0.7) == \
        L.lora_loader_model_only(call, model, "style.safetensors", 0.7)
    assert NODES["LoraLoaderBypass"].fn(call, model, clip, "style.safetensors", 0.0, 0.0) == (model, clip)
    with pytest.raises(Exception, match="missing.safetensors"):
        NODES["LoraLoaderBypass"].fn(call, model, clip, "missing.safetensors", 1.0, 1.0)
    pos, neg = clip_text_encode(None, "a kite", bypass[1])[0], clip_text_encode(None, "", bypass[1])[0]
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    assert not torch.equal(K.sample(bypass[0], pos, neg, latent, **KW)["samples"],
                           K.sample(model, pos, neg, latent, **KW)["samples"])
