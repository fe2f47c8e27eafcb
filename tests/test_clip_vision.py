"""Our CLIP vision and SigLIP encoders equal transformers' on tiny random models loaded from the
same safetensors files; the encoder kind and size are detected from the keys (released sizes at
their full shapes, on the meta device), other files are refused in one line; ComfyUI's
preprocessing on hand-computed cases; Flux Redux tokens against their formula."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, SiglipVisionConfig, SiglipVisionModel
from vision_fixtures import clip_vision, redux_weights, released_names, save_redux, save_vision, siglip

from opensd.checkpoints.clip_vision_files import detect_vision, load_clip_vision, read_style_model
from opensd.errors import CheckpointError
from opensd.models.clip_vision import CLIP_MEAN, CLIP_STD, VisionConfig, preprocess
from opensd.models.redux import ReduxImageEncoder


def _pixels(batch=2, size=32, seed=1):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_clip_vision_equals_transformers(tmp_path, act):
    ref = clip_vision(act)
    ours = load_clip_vision(save_vision(ref, tmp_path / "clip_vision.safetensors"))
    assert ours.config.kind == "clip" and ours.config.heads == 4 and ours.config.hidden_act == act
    pixels = _pixels()
    with torch.no_grad():
        want = ref(pixel_values=pixels, output_hidden_states=True)
        got = ours(pixels)
    torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got.image_embeds, want.image_embeds, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got.penultimate_hidden_states, want.hidden_states[-2], atol=1e-5, rtol=1e-4)
    assert got["image_embeds"] is got.image_embeds  # ComfyUI's Output reads by key too


def test_siglip_equals_transformers(tmp_path):
    ref = siglip()
    ours = load_clip_vision(save_vision(ref, tmp_path / "sigclip.safetensors"))
    assert ours.config.kind == "siglip" and ours.config.projection_dim is None
    pixels = _pixels()
    with torch.no_grad():
        want = ref(pixel_values=pixels, output_hidden_states=True)
        got = ours(pixels)
    torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got.penultimate_hidden_states, want.hidden_states[-2], atol=1e-5, rtol=1e-4)
    # ComfyUI gives SigLIP's whole normed sequence as image_embeds (it skips the pooling head)
    assert torch.equal(got.image_embeds, got.last_hidden_state) and got.last_hidden_state.shape == (2, 16, 32)


def _as_openclip(sd: dict) -> dict:
    """A transformers CLIP vision state dict written in OpenCLIP's layout (visual.*, fused q/k/v,
    proj as x @ proj), as a whole OpenCLIP model holds it, with a text tower beside it."""
    top = {"embeddings.class_embedding": "class_embedding", "embeddings.patch_embedding.weight": "conv1.weight",
           "embeddings.position_embedding.weight": "positional_embedding", "pre_layrnorm.weight": "ln_pre.weight",
           "pre_layrnorm.bias": "ln_pre.bias", "post_layernorm.weight": "ln_post.weight",
           "post_layernorm.bias": "ln_post.bias"}
    parts = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
             "self_attn.out_proj": "attn.out_proj"}
    out = {"visual.proj": sd["visual_projection.weight"].t().contiguous(), "token_embedding.weight": torch.zeros(9, 4)}
    for key, value in sd.items():
        name = key.removeprefix("vision_model.")
        if name in top:
            out["visual." + top[name]] = value
        elif name.startswith("encoder.layers.") and ".self_attn.q_proj." in name:
            i, kind = name.split(".")[2], name.rsplit(".", 1)[1]
            out[f"visual.transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat(
                [sd[f"vision_model.encoder.layers.{i}.self_attn.{p}_proj.{kind}"] for p in "qkv"])
        elif name.startswith("encoder.layers."):
            i, part = name.split(".", 3)[2:]
            module, kind = part.rsplit(".", 1)
            if module in parts:
                out[f"visual.transformer.resblocks.{i}.{parts[module]}.{kind}"] = value
    return out


def test_an_openclip_layout_file_equals_transformers(tmp_path):
    ref = clip_vision("gelu", seed=7)
    path = tmp_path / "open_clip.safetensors"
    save_file(_as_openclip(ref.state_dict()), str(path), metadata={"num_attention_heads": "4", "hidden_act": "gelu"})
    ours = load_clip_vision(path)
    pixels = _pixels()
    with torch.no_grad():
        want, got = ref(pixel_values=pixels, output_hidden_states=True), ours(pixels)
    torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got.image_embeds, want.image_embeds, atol=1e-5, rtol=1e-4)


def _meta_shapes(model_class, config) -> dict:
    with torch.device("meta"):
        model = model_class(config)
    return {k: tuple(v.shape) for k, v in released_names(model.state_dict()).items()}


def _clip(hidden, intermediate, layers, image, projection):
    return lambda: _meta_shapes(CLIPVisionModelWithProjection, CLIPVisionConfig(
        hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers, num_attention_heads=16,
        image_size=image, patch_size=14, projection_dim=projection))


@pytest.mark.parametrize("name, make, want", [
    ("ViT-L/14", _clip(1024, 4096, 24, 224, 768), ("clip", 16, "quick_gelu", 224, 768, "CLIP ViT-L/14")),
    ("ViT-L/14 at 336", _clip(1024, 4096, 24, 336, 768), ("clip", 16, "quick_gelu", 336, 768, "CLIP ViT-L/14")),
    ("ViT-H/14", _clip(1280, 5120, 32, 224, 1024), ("clip", 16, "gelu", 224, 1024, "CLIP ViT-H/14")),
    ("ViT-bigG/14", _clip(1664, 8192, 48, 224, 1280), ("clip", 16, "gelu", 224, 1280, "CLIP ViT-bigG/14")),
    ("SigLIP so400m 384", lambda: _meta_shapes(SiglipVisionModel, SiglipVisionConfig(
        hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16, image_size=384,
        patch_size=14)), ("siglip", 16, "gelu_pytorch_tanh", 384, None, "SigLIP so400m")),
])
def test_released_encoders_are_detected_from_their_keys(name, make, want):
    cfg = detect_vision(make(), {})
    assert (cfg.kind, cfg.heads, cfg.hidden_act, cfg.image_size, cfg.projection_dim, cfg.label) == want
    if cfg.kind == "siglip":
        assert cfg.positions == 729 and cfg.intermediate_size == 4304 and cfg.layer_norm_eps == 1e-6


def test_other_files_are_refused_in_one_line(tmp_path):
    def refused(path) -> str:
        with pytest.raises(CheckpointError) as e:
            load_clip_vision(path)
        assert "\n" not in str(e.value)
        return str(e.value)

    assert "Flux Redux style model" in refused(save_redux(tmp_path / "redux.safetensors"))
    unknown = save_vision(clip_vision(), tmp_path / "odd.safetensors", heads=False)
    assert "not one of the released sizes" in refused(unknown) and "3 layers of width 32" in refused(unknown)
    text = tmp_path / "text.safetensors"
    save_file({"text_model.embeddings.token_embedding.weight": torch.zeros(10, 4)}, str(text))
    assert "is not a CLIP vision model: it looks like a CLIP text encoder" in refused(text)
    # a CLIP vision file with its projection cut off
    sd = clip_vision().state_dict()
    del sd["visual_projection.weight"]
    cut = tmp_path / "cut.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(cut), metadata={"num_attention_heads": "4"})
    assert "'visual_projection.weight', which this file lacks" in refused(cut)
    # a file naming a layer far past any encoder's (the model is not built for it)
    sd = dict(clip_vision().state_dict())
    sd["vision_model.encoder.layers.100000.layer_norm1.weight"] = torch.zeros(32)
    many = tmp_path / "many.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(many), metadata={"num_attention_heads": "4"})
    assert "lacks 'vision_model.encoder.layers.3.layer_norm1.weight'" in refused(many)
    sd.update({f"vision_model.encoder.layers.{i}.layer_norm1.weight": torch.zeros(32) for i in range(200)})
    save_file({k: v.contiguous() for k, v in sd.items()}, str(many), metadata={"num_attention_heads": "4"})
    assert "names 201 encoder layers" in refused(many)
    # and a style model file that is not Redux
    with pytest.raises(CheckpointError, match="not a Flux Redux style model: it looks like a CLIP vision model"):
        read_style_model(unknown)


def _cfg(kind="clip", size=2) -> VisionConfig:
    return VisionConfig(kind=kind, hidden_size=8, layers=2, heads=2, intermediate_size=8, image_size=size,
                        patch_size=1, hidden_act="gelu")


def test_preprocess_center_crop_by_hand():
    # 2 x 4 image: the shorter side already fits, so the crop keeps columns 1 and 2
    image = torch.tensor([[0.0, 0.1, 0.2, 0.3], [0.4, 0.5, 0.6, 0.7]])[None, :, :, None].expand(1, 2, 4, 3)
    got = preprocess(image, _cfg())
    kept = torch.tensor([[0.1, 0.2], [0.5, 0.6]])
    quantised = (kept * 255).round() / 255  # 25.5 -> 26 (round half to even), 51, 127.5 -> 128, 153
    for c in range(3):
        torch.testing.assert_close(got[0, c], (quantised - CLIP_MEAN[c]) / CLIP_STD[c])
    assert got.shape == (1, 3, 2, 2)


def test_preprocess_squash_and_siglip_normalisation_by_hand():
    # a flat colour stays flat through any resize: 0.6 -> 153 / 255, then (x - 0.5) / 0.5
    image = torch.full((2, 3, 5, 4), 0.6)  # 4 channels: alpha is dropped
    got = preprocess(image, _cfg("siglip", size=3), crop=False)
    assert got.shape == (2, 3, 3, 3)
    torch.testing.assert_close(got, torch.full_like(got, (153 / 255 - 0.5) / 0.5), atol=1e-6, rtol=0)
    # center crop vs squash differ on a non-square image with structure
    ramp = torch.linspace(0, 1, 12).view(1, 1, 12, 1).expand(1, 6, 12, 3)
    assert not torch.allclose(preprocess(ramp, _cfg(size=4)), preprocess(ramp, _cfg(size=4), crop=False))


def test_redux_tokens_equal_the_formula(tmp_path):
    sd, vision, text = read_style_model(save_redux(tmp_path / "redux.safetensors", vision_width=32, text_width=128))
    assert (vision, text) == (32, 128)
    model = ReduxImageEncoder(vision, text)
    model.load_state_dict(sd)
    x = torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(3))
    w = redux_weights(32, 128)
    want = F.linear(F.silu(F.linear(x, w["redux_up.weight"], w["redux_up.bias"])), w["redux_down.weight"],
                    w["redux_down.bias"])
    with torch.no_grad():
        torch.testing.assert_close(model(x), want)


def test_a_redux_file_with_mismatched_layers_is_refused(tmp_path):
    w = redux_weights()
    w["redux_down.weight"] = w["redux_down.weight"][:, :10].contiguous()
    save_file(w, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError, match="Redux layers do not fit together"):
        read_style_model(tmp_path / "bad.safetensors")
