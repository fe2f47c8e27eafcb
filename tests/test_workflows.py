"""Running ComfyUI API-format graphs on a tiny random model: outputs, caching, KSampler semantics,
interrupts, inpainting and the image nodes."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from workflow_fixtures import Loader, default_graph, make_ctx, make_models

from opensd.pipeline.pipeline import Interrupted
from opensd.sampling.schedules import make_sigmas
from opensd.workflows import NodeError, OutputCache, execute
from opensd.workflows import ksampler as K
from opensd.workflows.nodes_core import clip_text_encode
from opensd.workflows.types import ClipRef, ModelRef


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wf")
    folders = make_models(tmp / "models")
    return tmp, folders, Loader(folders)


@pytest.fixture
def ctx(env, tmp_path):
    _, folders, loader = env
    c = make_ctx(folders, loader, tmp_path)
    c.inputs_dir.mkdir(parents=True)
    return c


def _run(prompt, ctx):
    events = []
    out = execute(prompt, ctx, lambda kind, data: events.append((kind, data)))
    return out, events


def _png(ctx, out, node="9"):
    (entry,) = out[node]["images"]
    folder = ctx.outputs_dir if entry["type"] == "output" else ctx.temp_folder()
    return folder / entry["subfolder"] / entry["filename"]


def _executing(events):
    return [d["node"] for k, d in events if k == "executing"]


def test_default_graph_saves_an_image_with_the_prompt_embedded(ctx):
    ctx.extra_pnginfo = {"workflow": {"nodes": []}}
    g = default_graph()
    out, events = _run(g, ctx)
    assert out == {"9": {"images": [{"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"}]}}
    with Image.open(_png(ctx, out)) as im:
        assert im.size == (64, 64)
        assert json.loads(im.text["prompt"]) == g and json.loads(im.text["workflow"]) == {"nodes": []}
    assert ("executed", {"node": "9", "output": out["9"]}) in events
    progress = [d for k, d in events if k == "progress"]
    assert progress[-1] == {"value": 3, "max": 3, "node": "3"}
    assert any(k == "preview" and isinstance(d, Image.Image) for k, d in events)
    assert set(_executing(events)) == {"3", "4", "5", "6", "7", "8", "9"}
    assert _executing(events).index("4") < _executing(events).index("6") < _executing(events).index("3")


def test_same_seed_same_image_and_counters_advance(ctx):
    a, _ = _run(default_graph(), ctx)
    ctx.cache = OutputCache()  # a cold cache: everything runs again
    b, events = _run(default_graph(), ctx)
    assert "3" in _executing(events)
    assert b["9"]["images"][0]["filename"] == "ComfyUI_00002_.png"
    assert np.array_equal(np.asarray(Image.open(_png(ctx, a))), np.asarray(Image.open(_png(ctx, b))))
    c, _ = _run(default_graph(seed=1), ctx)
    assert not np.array_equal(np.asarray(Image.open(_png(ctx, a))), np.asarray(Image.open(_png(ctx, c))))


def test_cache_reruns_only_what_changed(ctx, env):
    loader = env[2]
    _run(default_graph(), ctx)
    calls = loader.calls
    out, events = _run(default_graph(), ctx)  # nothing changed: nothing runs, the UI output is re-sent
    assert _executing(events) == []
    assert ("executed", {"node": "9", "output": out["9"]}) in events
    _, events = _run(default_graph(seed=2), ctx)
    assert _executing(events) == ["3", "8", "9"]
    assert sorted(next(d["nodes"] for k, d in events if k == "execution_cached")) == ["4", "5", "6", "7"]
    assert loader.calls == calls  # the checkpoint loader did not run again
    g = default_graph(seed=2)
    g["6"]["inputs"]["text"] = "a cat"
    _, events = _run(g, ctx)
    assert _executing(events) == ["6", "3", "8", "9"]


def _karras_euler_cfg_reference(unet, pos, neg, latent, seed, steps, cfg, scaling_factor):
    """ComfyUI's KSampler (euler, karras, denoise 1) written out from first principles, sharing no
    code with the pipeline: CPU noise from manual_seed(seed), SD's scaled-linear schedule, Karras
    sigmas (rho 7), the start x = noise * sqrt(1 + sigma_max^2) + latent * scaling_factor, eps
    prediction with c_in = 1/sqrt(sigma^2 + 1) and the timestep interpolated in log sigma, CFG as
    uncond + cfg * (cond - uncond), Euler steps, and the result divided by the scaling factor."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    alphas = torch.cumprod(1 - betas, dim=0)
    log_sigmas = ((1 - alphas) / alphas).sqrt().log().numpy()
    lo, hi = math.exp(log_sigmas[0]) ** (1 / 7), math.exp(log_sigmas[-1]) ** (1 / 7)
    sigmas = [(hi + i / (steps - 1) * (lo - hi)) ** 7 for i in range(steps)] + [0.0]
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    x = noise * math.sqrt(1 + sigmas[0] ** 2) + latent * scaling_factor
    for sigma, following in zip(sigmas, sigmas[1:]):
        t = torch.tensor([float(np.interp(math.log(sigma), log_sigmas, np.arange(1000)))])
        with torch.no_grad():
            eps_cond = unet(x / math.sqrt(sigma ** 2 + 1), t, pos, None).float()
            eps_uncond = unet(x / math.sqrt(sigma ** 2 + 1), t, neg, None).float()
        denoised = x - sigma * (eps_uncond + cfg * (eps_cond - eps_uncond))
        x = x + (x - denoised) / sigma * (following - sigma)
    return x / scaling_factor


def test_ksampler_equals_a_first_principles_reference(ctx):
    pipe = ctx.load_pipeline("tiny.safetensors")
    clip = ClipRef(pipe, "tiny")
    pos, neg = clip_text_encode(None, "a red (apple:1.3)", clip)[0], clip_text_encode(None, "blurry", clip)[0]
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))  # an img2img-style start
    out = K.sample(ModelRef(pipe, "tiny"), pos, neg, {"samples": latent}, seed=123, steps=4, cfg=6.0,
                   sampler_name="euler", scheduler="karras")["samples"]
    ref = _karras_euler_cfg_reference(pipe.model.unet, pos[0][0], neg[0][0], latent, 123, 4, 6.0,
                                      pipe.config.vae.scaling_factor)
    assert (ref - latent).abs().mean() > 0.1  # the reference moved far from its start
    # float32 rounding, amplified by CFG 6 over 4 steps: ~1e-6 of the (random model's large) values
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))


def test_clip_set_last_layer_is_clip_skip(ctx):
    pipe = ctx.load_pipeline("tiny.safetensors")
    from opensd.workflows.nodes_core import clip_set_last_layer
    (clip,) = clip_set_last_layer(None, ClipRef(pipe, "tiny"), -2)
    (cond,) = clip_text_encode(None, "a red apple", clip)
    torch.testing.assert_close(cond[0][0], pipe.conditioner(2).encode("a red apple").context)
    (last,) = clip_text_encode(None, "a red apple", ClipRef(pipe, "tiny"))
    assert not torch.allclose(cond[0][0], last[0][0])


def test_denoise_and_advanced_step_ranges(ctx):
    pipe = ctx.load_pipeline("tiny.safetensors")
    full = make_sigmas("normal", pipe.schedule, 20)
    assert torch.equal(K.comfy_sigmas(pipe.schedule, "euler", "normal", 10, 0.5), full[-11:])
    assert len(K.comfy_sigmas(pipe.schedule, "dpm_2", "karras", 10)) == 11  # penultimate of 11 steps dropped
    clip = ClipRef(pipe, "tiny")
    pos, neg = clip_text_encode(None, "x", clip)[0], clip_text_encode(None, "", clip)[0]
    model, latent = ModelRef(pipe, "tiny"), {"samples": torch.zeros(1, 4, 8, 8)}
    kw = {"seed": 7, "steps": 6, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal"}
    whole = K.sample(model, pos, neg, latent, start_step=0, last_step=10000, force_full_denoise=True, **kw)
    first = K.sample(model, pos, neg, latent, start_step=0, last_step=3, force_full_denoise=False, **kw)
    rest = K.sample(model, pos, neg, first, add_noise=False, start_step=3, last_step=10000,
                    force_full_denoise=True, **kw)
    torch.testing.assert_close(rest["samples"], whole["samples"], rtol=1e-4, atol=1e-4)
    start = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))}
    assert torch.equal(K.sample(model, pos, neg, start, denoise=0.0, **kw)["samples"], start["samples"])


def test_two_advanced_samplers_equal_one_ksampler(ctx):
    out, _ = _run(default_graph(), ctx)
    whole = np.asarray(Image.open(_png(ctx, out))).astype(int)
    g = default_graph()
    common = {"model": ["4", 0], "noise_seed": 8566257, "steps": 3, "cfg": 8, "sampler_name": "euler",
              "scheduler": "normal", "positive": ["6", 0], "negative": ["7", 0]}
    g["3"] = {"class_type": "KSamplerAdvanced", "inputs": dict(
        common, add_noise="enable", latent_image=["5", 0], start_at_step=0, end_at_step=2,
        return_with_leftover_noise="enable")}
    g["30"] = {"class_type": "KSamplerAdvanced", "inputs": dict(
        common, add_noise="disable", latent_image=["3", 0], start_at_step=2, end_at_step=10000,
        return_with_leftover_noise="disable")}
    g["8"]["inputs"]["samples"] = ["30", 0]
    out, _ = _run(g, ctx)
    split = np.asarray(Image.open(_png(ctx, out))).astype(int)
    assert np.abs(split - whole).max() <= 1


def test_interrupt_stops_within_a_step(ctx):
    seen = []

    def on_event(kind, data):
        seen.append(kind)

    ctx.should_stop = lambda: "progress" in seen
    with pytest.raises(Interrupted) as e:
        execute(default_graph(steps=10), ctx, on_event)
    assert e.value.node_id == "3" and seen.count("progress") == 1
    assert not list(ctx.outputs_dir.glob("*.png"))


def test_node_failure_is_reported_with_the_node(ctx):
    g = default_graph()
    ctx.load_pipeline = lambda name: (_ for _ in ()).throw(OSError("disk on fire"))
    with pytest.raises(NodeError) as e:
        execute(g, ctx, None)
    assert e.value.node_id == "4" and e.value.node_type == "CheckpointLoaderSimple"
    assert "disk on fire" in e.value.exception_message


def _inpaint_graph(denoise=1.0):
    g = default_graph(denoise=denoise, latent_image=["11", 0])
    del g["5"]
    g["10"] = {"class_type": "LoadImage", "inputs": {"image": "photo.png"}}
    g["11"] = {"class_type": "VAEEncodeForInpaint",
               "inputs": {"pixels": ["10", 0], "vae": ["4", 2], "mask": ["10", 1], "grow_mask_by": 6}}
    return g


def _photo(ctx):
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 3] = 200, 60, 255
    rgba[16:40, 16:40, 3] = 0  # transparent = repaint
    Image.fromarray(rgba, "RGBA").save(ctx.inputs_dir / "photo.png")


def test_inpaint_graph_repaints_only_the_masked_area(ctx):
    _photo(ctx)
    out, _ = _run(_inpaint_graph(), ctx)
    assert Image.open(_png(ctx, out)).size == (64, 64)
    # at the latent level the kept area comes back exactly as encoded
    from opensd.workflows.nodes_core import vae_encode_for_inpaint
    from opensd.workflows.nodes_image import load_image
    from opensd.workflows.types import NodeCall, VaeRef
    pipe = ctx.load_pipeline("tiny.safetensors")
    image, mask = load_image(NodeCall(ctx, "10", {}, print), "photo.png")
    assert mask.shape == (1, 64, 64) and mask[0, 20, 20] == 1 and mask[0, 0, 0] == 0
    (latent,) = vae_encode_for_inpaint(None, image, VaeRef(pipe, "tiny"), mask, 6)
    clip = ClipRef(pipe, "tiny")
    pos, neg = clip_text_encode(None, "x", clip)[0], clip_text_encode(None, "", clip)[0]
    res = K.sample(ModelRef(pipe, "tiny"), pos, neg, latent, seed=3, steps=3, cfg=5.0, sampler_name="euler",
                   scheduler="normal")["samples"]
    # pixels 16..39 are repainted, the mask grown by 6: latent rows and columns 0, 6 and 7 (8 pixels
    # each) lie wholly outside it, 2..4 wholly inside
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[1:6, 1:6] = False
    torch.testing.assert_close(res[..., outside], latent["samples"][..., outside], rtol=1e-4, atol=1e-4)
    inside = res[..., 2:5, 2:5] - latent["samples"][..., 2:5, 2:5]
    assert (inside.abs() > 1e-3).all()


def test_img2img_and_outpaint_nodes(ctx):
    _photo(ctx)
    g = _inpaint_graph(denoise=0.5)
    g["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["12", 0], "vae": ["4", 2]}}
    g["12"] = {"class_type": "ImageScale", "inputs": {"image": ["13", 0], "upscale_method": "lanczos",
                                                      "width": 96, "height": 64, "crop": "center"}}
    g["13"] = {"class_type": "ImagePadForOutpaint",
               "inputs": {"image": ["10", 0], "left": 32, "top": 0, "right": 0, "bottom": 0, "feathering": 8}}
    g["14"] = {"class_type": "PreviewImage", "inputs": {"images": ["12", 0]}}
    out, _ = _run(g, ctx)
    assert Image.open(_png(ctx, out)).size == (96, 64)
    assert out["14"]["images"][0]["type"] == "temp" and _png(ctx, out, "14").is_file()


def test_image_and_latent_helpers():
    from opensd.workflows.nodes_image import (
        latent_upscale,
        pad_for_outpaint,
        set_noise_mask,
    )
    image = torch.rand(1, 40, 30, 3)
    padded, mask = pad_for_outpaint(None, image, 8, 0, 16, 0, feathering=4)
    assert padded.shape == (1, 40, 54, 3) and mask.shape == (1, 40, 54)
    assert mask[0, 20, :8].eq(1).all() and mask[0, 20, 38:].eq(1).all()
    assert mask[0, 20, 8] == 1.0 and mask[0, 20, 8 + 4] == 0 and 0 < mask[0, 20, 9] < 1
    assert torch.equal(padded[:, :, 8:38], image) and padded[0, 0, 0, 0] == 0.5
    lat = {"samples": torch.rand(2, 4, 8, 8)}
    (up,) = latent_upscale(None, lat, "nearest-exact", 128, 0, "disabled")
    assert up["samples"].shape == (2, 4, 16, 16)
    (masked,) = set_noise_mask(None, lat, torch.ones(64, 64))
    assert masked["noise_mask"].shape == (1, 1, 64, 64) and "noise_mask" not in lat


def _random_lora(pipe, path):
    from opensd.adapters.lora_keys import lora_modules
    from opensd.checkpoints.files import save_safetensors
    g, sd = torch.Generator().manual_seed(0), {}
    for m in lora_modules(pipe.model):
        w = m.module.weight
        if w.ndim != 2:
            continue
        sd[f"{m.kohya}.lora_down.weight"] = torch.randn(2, w.shape[1], generator=g) * 0.3
        sd[f"{m.kohya}.lora_up.weight"] = torch.randn(w.shape[0], 2, generator=g) * 0.3
        sd[f"{m.kohya}.alpha"] = torch.tensor(2.0)
    save_safetensors(sd, path)


def test_lora_loader(ctx, env):
    pipe = ctx.load_pipeline("tiny.safetensors")
    _random_lora(pipe, env[1].folders("loras")[0] / "style.safetensors")

    def graph(unet, te):
        g = default_graph()
        g["20"] = {"class_type": "LoraLoader", "inputs": {"model": ["4", 0], "clip": ["4", 1],
                                                          "lora_name": "style.safetensors",
                                                          "strength_model": unet, "strength_clip": te}}
        g["3"]["inputs"]["model"] = ["20", 0]
        g["6"]["inputs"]["clip"] = ["20", 1]
        return g

    def pixels(g):
        out, _ = _run(g, ctx)
        return np.asarray(Image.open(_png(ctx, out)))

    base = pixels(default_graph())
    assert np.array_equal(pixels(graph(0.0, 0.0)), base)
    both, unet_only = pixels(graph(1.0, 1.0)), pixels(graph(1.0, 0.0))
    assert not np.array_equal(both, base) and not np.array_equal(unet_only, both)
    ctx.cache = OutputCache()
    assert np.array_equal(pixels(default_graph()), base)  # the base weights came back
    assert getattr(pipe, "lora_reports", []) == []  # and the pipeline's own LoRA list is as before


def test_empty_latent_decodes_to_the_requested_size_on_a_model_with_a_4x_vae(tmp_path):
    # The built-in model's VAE downsamples by 4, not the /8 EmptyLatentImage assumes.
    from opensd.library.models_dir import ModelFolders
    folders = ModelFolders(None)
    c = make_ctx(folders, Loader(folders), tmp_path)
    g = default_graph(steps=1)
    g["4"]["inputs"]["ckpt_name"] = "opensd-emoji.safetensors"
    g["5"]["inputs"].update(width=64, height=48)
    out, _ = _run(g, c)
    assert Image.open(_png(c, out)).size == (64, 48)
