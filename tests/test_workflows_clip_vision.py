"""ComfyUI's CLIPVisionLoader, CLIPVisionEncode, StyleModelLoader and StyleModelApply on tiny random
models in a ComfyUI models folder (clip_vision/, style_models/, a tiny Flux split into its files):
the nodes in /object_info with ComfyUI's inputs; CLIPVisionEncode equals transformers' SigLIP on
the image preprocessed as ComfyUI does; StyleModelApply's conditioning (Redux tokens appended,
multiply scaling, refusals); a whole Flux graph with Redux hands the network the text tokens plus
the image's Redux tokens; hostile inputs through POST /prompt end in one line."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from PIL import Image
from server_live import BASE
from vision_fixtures import clip_vision, redux_weights, save_redux, save_vision, siglip
from workflow_fixtures import Loader, make_ctx

from dit_fixtures import META_FLUX, flux_parts, load_tiny, write_split_files
from opensd.library.models_dir import ModelFolders
from opensd.models import flux as flux_model
from opensd.models.clip_vision import VisionOutput, preprocess
from opensd.server.app import create_app
from opensd.server.settings import Settings
from opensd.workflows import execute, object_info
from opensd.errors import InvalidArgument
from opensd.workflows import types
from opensd.workflows.types import NODES, NodeCall

SIZE = 32


def node(class_type: str, **inputs) -> dict:
    return {"class_type": class_type, "inputs": inputs}


def write_models(models) -> dict:
    """The files of the tests: the tiny Flux split ComfyUI's way, a SigLIP and a CLIP vision model,
    a Redux that reads the SigLIP (32 wide) and makes Flux's T5 width (128), and misplaced files."""
    refs = {"siglip": siglip(seed=4), "clip": clip_vision(seed=5)}
    save_vision(refs["siglip"], models / "clip_vision" / "sigclip_vision_patch14_384.safetensors")
    save_vision(refs["clip"], models / "clip_vision" / "clip_vision_h.safetensors")
    save_redux(models / "style_models" / "flux1-redux-dev.safetensors", vision_width=32, text_width=128)
    save_redux(models / "style_models" / "redux_wide.safetensors", vision_width=64, text_width=128)
    save_redux(models / "clip_vision" / "misplaced_redux.safetensors")
    save_vision(refs["siglip"], models / "style_models" / "misplaced_siglip.safetensors")
    return refs


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("redux")
    models = tmp / "models"
    flux = load_tiny(tmp / "flux", "flux", flux_parts())
    write_split_files(models, flux.model, "flux1", META_FLUX, file_prefix="flux_")
    refs = write_models(models)
    folders = ModelFolders(models, include_builtin=False)
    ctx = make_ctx(folders, Loader(folders), tmp)
    ctx.inputs_dir.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(ctx.inputs_dir / "ref.png")
    return ctx, refs, torch.from_numpy(pixels).float()[None] / 255


def _call(ctx) -> NodeCall:
    return NodeCall(ctx, "1", {}, lambda kind, data: None)


def _fn(name):
    return NODES[name].fn


def test_object_info_has_comfyui_inputs(env):
    ctx, _, _ = env
    info = object_info(ctx)
    assert info["CLIPVisionLoader"]["input"]["required"] == {"clip_name": [[
        "clip_vision_h.safetensors", "misplaced_redux.safetensors", "sigclip_vision_patch14_384.safetensors"]]}
    assert info["CLIPVisionLoader"]["output"] == ["CLIP_VISION"] and info["CLIPVisionLoader"]["category"] == "loaders"
    assert info["CLIPVisionEncode"]["input"]["required"] == {
        "clip_vision": ["CLIP_VISION"], "image": ["IMAGE"], "crop": [["center", "none"]]}
    assert info["CLIPVisionEncode"]["output"] == ["CLIP_VISION_OUTPUT"]
    assert info["StyleModelLoader"]["input"]["required"]["style_model_name"][0][0] == "flux1-redux-dev.safetensors"
    assert info["StyleModelLoader"]["output"] == ["STYLE_MODEL"]
    assert info["StyleModelApply"]["input"]["required"] == {
        "conditioning": ["CONDITIONING"], "style_model": ["STYLE_MODEL"], "clip_vision_output": ["CLIP_VISION_OUTPUT"],
        "strength": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.001}],
        "strength_type": [["multiply", "attn_bias"]]}
    assert info["StyleModelApply"]["category"] == "conditioning/style_model"


@pytest.mark.parametrize("crop", ["center", "none"])
def test_clip_vision_encode_equals_transformers_on_the_preprocessed_image(env, crop):
    ctx, refs, image = env
    for name, ref in (("sigclip_vision_patch14_384.safetensors", refs["siglip"]),
                      ("clip_vision_h.safetensors", refs["clip"])):
        (cv,) = _fn("CLIPVisionLoader")(_call(ctx), name)
        (out,) = _fn("CLIPVisionEncode")(_call(ctx), cv, image, crop)
        with torch.no_grad():
            want = ref(pixel_values=preprocess(image, cv.model.config, crop=crop == "center"), output_hidden_states=True)
        torch.testing.assert_close(out.last_hidden_state, want.last_hidden_state, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out.penultimate_hidden_states, want.hidden_states[-2], atol=1e-5, rtol=1e-4)
        if name.startswith("clip"):
            torch.testing.assert_close(out.image_embeds, want.image_embeds, atol=1e-5, rtol=1e-4)


def _redux(x: torch.Tensor) -> torch.Tensor:
    w = redux_weights(32, 128)
    return F.linear(F.silu(F.linear(x, w["redux_up.weight"], w["redux_up.bias"])), w["redux_down.weight"],
                    w["redux_down.bias"])


def test_style_model_apply_appends_redux_tokens(env):
    ctx, _, _ = env
    (style,) = _fn("StyleModelLoader")(_call(ctx), "flux1-redux-dev.safetensors")
    hidden = torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(1))  # two images
    vision = VisionOutput(hidden, hidden, hidden)
    text = torch.randn(1, 7, 128)
    pooled = torch.randn(1, 32)
    conditioning = [[text, {"pooled_output": pooled, "guidance": 3.5}], [text[:, :3], {}]]
    apply = _fn("StyleModelApply")
    (out,) = apply(_call(ctx), conditioning, style, vision, 0.5, "multiply")
    want = _redux(hidden).flatten(0, 1)[None]  # every image's tokens in one sequence, as ComfyUI
    assert [c.shape for c, _ in out] == [(1, 7 + 32, 128), (1, 3 + 32, 128)]
    assert torch.equal(out[0][0][:, :7], text) and out[0][1] == conditioning[0][1]
    assert out[0][1] is not conditioning[0][1]  # a copy: the input stays as it was
    torch.testing.assert_close(out[0][0][:, 7:], 0.5 * want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1][0][:, 3:], 0.5 * want, atol=1e-5, rtol=1e-5)
    # at strength 1 attn_bias and multiply are the same; elsewhere attn_bias needs a mask Flux lacks here
    same = [apply(_call(ctx), conditioning, style, vision, 1.0, kind)[0][0][0] for kind in ("multiply", "attn_bias")]
    assert torch.equal(*same)
    with pytest.raises(ValueError, match="attn_bias with a strength other than 1"):
        apply(_call(ctx), conditioning, style, vision, 0.5, "attn_bias")
    with pytest.raises(ValueError, match="its text tokens are 64 wide, but flux1-redux-dev.safetensors makes 128"):
        apply(_call(ctx), [[torch.zeros(1, 7, 64), {}]], style, vision, 1.0, "multiply")
    with pytest.raises(ValueError, match="its tokens are 24 wide, but flux1-redux-dev.safetensors reads 32"):
        apply(_call(ctx), conditioning, style, VisionOutput(*(torch.zeros(1, 5, 24),) * 3), 1.0, "multiply")


def test_clip_vision_encode_checks_the_resized_size_first(env, monkeypatch):
    # a thin image grows long under the center crop's shorter-side scaling: 1 x 4096 -> 32 x 131072
    ctx, _, _ = env
    monkeypatch.setattr(types, "MAX_ELEMENTS", 10**7)
    (cv,) = _fn("CLIPVisionLoader")(_call(ctx), "sigclip_vision_patch14_384.safetensors")
    with pytest.raises(InvalidArgument, match="image: resized for the CLIP vision model: 1 x 3 x 131072 x 32 is"):
        _fn("CLIPVisionEncode")(_call(ctx), cv, torch.zeros(1, 4096, 1, 3), "center")
    assert _fn("CLIPVisionEncode")(_call(ctx), cv, torch.zeros(1, 4096, 1, 3), "none")[0].last_hidden_state.shape == (
        1, 16, 32)


def test_outputs_are_sized_before_they_are_made(env, monkeypatch):
    # thousands of images (EmptyImage makes 4096) would make SigLIP outputs and Redux tokens of GBs
    ctx, _, _ = env
    monkeypatch.setattr(types, "MAX_ELEMENTS", 30000)
    (cv,) = _fn("CLIPVisionLoader")(_call(ctx), "sigclip_vision_patch14_384.safetensors")
    with pytest.raises(InvalidArgument, match="clip_vision_output: 64 x 16 x 32 is 32,768 values"):
        _fn("CLIPVisionEncode")(_call(ctx), cv, torch.zeros(64, 8, 8, 3), "center")
    (style,) = _fn("StyleModelLoader")(_call(ctx), "flux1-redux-dev.safetensors")
    vision = VisionOutput(*(torch.zeros(64, 16, 32),) * 3)
    with pytest.raises(InvalidArgument, match="conditioning: the Redux tokens: 1 x 1024 x 128 is"):
        _fn("StyleModelApply")(_call(ctx), [[torch.zeros(1, 4, 128), {}]], style, vision, 1.0, "multiply")


def test_clip_vision_encode_runs_a_batch_in_chunks_as_one(env):
    ctx, _, image = env
    (cv,) = _fn("CLIPVisionLoader")(_call(ctx), "clip_vision_h.safetensors")
    batch = torch.cat([image, image.flip(1)] * 9)  # 18 images: chunks of 8, 8 and 2
    (whole,) = _fn("CLIPVisionEncode")(_call(ctx), cv, batch, "center")
    (one,) = _fn("CLIPVisionEncode")(_call(ctx), cv, batch[1:2], "center")
    assert whole.last_hidden_state.shape == (18, 17, 32) and whole.image_embeds.shape == (18, 24)
    torch.testing.assert_close(whole.image_embeds[17:18], one.image_embeds)
    torch.testing.assert_close(whole.penultimate_hidden_states[9:10], one.penultimate_hidden_states)


def _flux_graph(style: dict | None = None) -> dict:
    g = {
        "11": node("UNETLoader", unet_name="flux1.safetensors", weight_dtype="default"),
        "12": node("DualCLIPLoader", clip_name1="flux_t5xxl_fp16.safetensors", clip_name2="flux_clip_l.safetensors",
                   type="flux"),
        "13": node("VAELoader", vae_name="flux1_vae.safetensors"),
        "14": node("CLIPTextEncode", clip=["12", 0], text="a photo of a cat"),
        "6": node("FluxGuidance", conditioning=["14", 0], guidance=3.5),
        "5": node("EmptySD3LatentImage", width=SIZE, height=SIZE, batch_size=1),
        "3": node("KSampler", model=["11", 0], positive=["6", 0], negative=["6", 0], latent_image=["5", 0], seed=5,
                  steps=2, cfg=1.0, sampler_name="euler", scheduler="simple", denoise=1.0),
        "8": node("VAEDecode", samples=["3", 0], vae=["13", 0]),
        "9": node("SaveImage", images=["8", 0], filename_prefix="redux"),
    }
    if style:
        g |= {"20": node("CLIPVisionLoader", clip_name="sigclip_vision_patch14_384.safetensors"),
              "21": node("LoadImage", image="ref.png"),
              "22": node("CLIPVisionEncode", clip_vision=["20", 0], image=["21", 0], crop="center"),
              "23": node("StyleModelLoader", style_model_name="flux1-redux-dev.safetensors"),
              "24": node("StyleModelApply", conditioning=["6", 0], style_model=["23", 0], clip_vision_output=["22", 0],
                         **style)}
        g["3"]["inputs"]["positive"] = ["24", 0]
    return g


def _saved(ctx, out) -> np.ndarray:
    image = out["9"]["images"][0]
    return np.asarray(Image.open(ctx.outputs_dir / image["subfolder"] / image["filename"]))


def test_a_flux_graph_with_redux_feeds_the_network_text_and_image_tokens(env, monkeypatch):
    ctx, refs, image = env
    contexts = []
    forward = flux_model.Flux.forward

    def spy(self, x, timesteps, context, *args, **kw):
        contexts.append(context.detach().float().cpu())
        return forward(self, x, timesteps, context, *args, **kw)

    monkeypatch.setattr(flux_model.Flux, "forward", spy)
    plain = _saved(ctx, execute(_flux_graph(), ctx))
    text = contexts[-1]
    contexts.clear()
    styled = _saved(ctx, execute(_flux_graph({"strength": 0.8, "strength_type": "multiply"}), ctx))
    # 16 SigLIP tokens (32 x 32 pixels, 8-pixel patches) become 16 more context tokens at every step
    assert len(contexts) == 2 and all(c.shape == (1, text.shape[1] + 16, 128) for c in contexts)
    torch.testing.assert_close(contexts[0][:, :text.shape[1]], text)
    with torch.no_grad():
        hidden = refs["siglip"](pixel_values=preprocess(image, _siglip_config(ctx))).last_hidden_state
    torch.testing.assert_close(contexts[0][:, text.shape[1]:], 0.8 * _redux(hidden), atol=1e-4, rtol=1e-4)
    assert styled.std() > 1 and not np.array_equal(styled, plain)


def _siglip_config(ctx):
    (cv,) = _fn("CLIPVisionLoader")(_call(ctx), "sigclip_vision_patch14_384.safetensors")
    return cv.model.config


# --- hostile values through POST /prompt ---------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory, env):
    ctx, _, _ = env
    root = tmp_path_factory.mktemp("redux_server")
    with TestClient(create_app(Settings(models_dir=ctx.folders.root, outputs_dir=root / "out")), base_url=BASE) as c:
        inputs = c.app.state.opensd.settings.data_dir / "inputs"
        inputs.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(inputs / "ref.png")
        yield c


def _hostile(**style) -> dict:
    g = _flux_graph({"strength": 1.0, "strength_type": "multiply"})
    g["9"] = node("SaveLatent", samples=["3", 0], filename_prefix="latents/redux")
    del g["8"]
    g["3"]["inputs"]["steps"] = 1
    for node_id, inputs in style.items():
        g[node_id]["inputs"].update(inputs)
    return g


HOSTILE = [
    ("CLIPVisionLoader of a Redux file", _hostile(**{"20": {"clip_name": "misplaced_redux.safetensors"}}),
     ("error", "is not a CLIP vision model: it looks like a Flux Redux style model")),
    ("StyleModelLoader of a SigLIP file", _hostile(**{"23": {"style_model_name": "misplaced_siglip.safetensors"}}),
     ("error", "is not a Flux Redux style model: it looks like a CLIP vision model")),
    ("CLIPVisionEncode of a latent", _hostile(**{"22": {"image": ["5", 0]}}), ("400", "22", "return_type_mismatch")),
    ("CLIPVisionEncode crop 'left'", _hostile(**{"22": {"crop": "left"}}), ("400", "22", "value_not_in_list")),
    ("CLIPVisionLoader of a missing name", _hostile(**{"20": {"clip_name": "../../etc/passwd"}}),
     ("400", "20", "value_not_in_list")),
    ("StyleModelApply strength 11", _hostile(**{"24": {"strength": 11}}), ("400", "24", "value_bigger_than_max")),
    ("StyleModelApply strength 'nan'", _hostile(**{"24": {"strength": "nan"}}), ("400", "24", "invalid_input_type")),
    ("StyleModelApply attn_bias 0.5", _hostile(**{"24": {"strength": 0.5, "strength_type": "attn_bias"}}),
     ("error", "strength_type: attn_bias with a strength other than 1")),
    ("StyleModelApply of a Redux for another encoder",
     _hostile(**{"23": {"style_model_name": "redux_wide.safetensors"}}), ("error", "its tokens are 32 wide")),
    ("StyleModelApply at attn_bias 1 runs", _hostile(**{"24": {"strength_type": "attn_bias"}}), ("ok", None)),
]


def _post(client, graph: dict) -> dict:
    r = client.post("/prompt", json={"prompt": graph})
    assert r.status_code in (200, 400), r.text
    if r.status_code == 400:
        return {"status": 400, "body": r.json()}
    pid, deadline = r.json()["prompt_id"], time.time() + 60
    while not (done := client.get(f"/history/{pid}").json()) and time.time() < deadline:
        time.sleep(0.05)
    assert done, "the graph did not finish in 60 s"
    return {"status": 200, "history": done[pid]}


@pytest.mark.parametrize("case", HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_inputs_are_one_line(server, case):
    _, graph, (kind, needle, *error_type) = case
    result = _post(server, graph)
    if kind == "400":
        assert result["status"] == 400, result
        body = result["body"]
        (error, *_) = body["node_errors"][needle]["errors"]
        assert error["type"] == error_type[0], error
        return
    assert result["status"] == 200, result
    status = result["history"]["status"]
    errors = [data for k, data in status["messages"] if k == "execution_error"]
    if kind == "ok":
        assert status["status_str"] == "success", errors
        return
    assert status["status_str"] == "error" and len(errors) == 1, status
    message = errors[0]["exception_message"]
    assert needle in message and "\n" not in message and "Traceback" not in message, message
    assert server.get("/internal/ping").json()["status"] == "ok"
