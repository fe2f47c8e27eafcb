"""Loading real file layouts end to end: diffusers folders, single files, standalone VAEs, sidecars."""
import json

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from opensd.checkpoints import detect as D
from opensd.checkpoints.files import save_safetensors
from opensd.errors import CheckpointError
from opensd.library.synthetic import TINY, random_state_dict, write_random_checkpoint
from opensd.pipeline.loader import load_model
from reference import assert_close_scaled, randomize_

VOCAB = 49408


def _text_config(width=64, act="quick_gelu", proj=0, **extra):
    kw = dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=2, num_attention_heads=max(1, width // 64),
              hidden_act=act, max_position_embeddings=77, vocab_size=VOCAB)
    if proj:
        kw["projection_dim"] = proj
    return CLIPTextConfig(**{**kw, **extra})


def make_diffusers_folder(root, family="sd1", text=None, unet=None):
    """A tiny diffusers pipeline folder, saved by diffusers/transformers themselves; `text` overrides
    fields of the (sd1/sd2) text encoder's config, `unet` the UNet's (in_channels=8: an edit model)."""
    context = {"sd1": 64, "sd2": 64, "sdxl": 64 + 32}[family]
    unet_kw = dict(sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
                   down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                   up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=context,
                   attention_head_dim=2 if family == "sd1" else (1, 2), norm_num_groups=32,
                   use_linear_projection=family != "sd1", **(unet or {}))
    if family == "sdxl":
        unet_kw.update(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                       up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                       addition_embed_type="text_time", addition_time_embed_dim=256,
                       projection_class_embeddings_input_dim=32 + 6 * 256)
    parts = {"unet": randomize_(UNet2DConditionModel(**unet_kw), 1),
             "vae": randomize_(AutoencoderKL(block_out_channels=(32, 32, 32, 32), layers_per_block=1,
                                             down_block_types=("DownEncoderBlock2D",) * 4,
                                             up_block_types=("UpDecoderBlock2D",) * 4), 2)}
    if family == "sdxl":
        parts["text_encoder"] = randomize_(CLIPTextModel(_text_config(64)), 3)
        parts["text_encoder_2"] = randomize_(CLIPTextModelWithProjection(_text_config(32, "gelu", 32)), 4)
    else:
        act = "gelu" if family == "sd2" else "quick_gelu"
        parts["text_encoder"] = randomize_(CLIPTextModel(_text_config(64, act, **(text or {}))), 3)
    for name, module in parts.items():
        module.eval().save_pretrained(root / name)
    (root / "scheduler").mkdir()
    pred = "v_prediction" if family == "sd2" else "epsilon"
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps({"prediction_type": pred}))
    (root / "model_index.json").write_text("{}")
    return parts


def _unet_inputs(context_dim, adm=0):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    ctx = torch.randn(2, 77, context_dim, generator=g)
    return x, torch.tensor([900, 20]), ctx


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_diffusers_folder_matches_reference_and_single_file(tmp_path, family):
    parts = make_diffusers_folder(tmp_path / "model", family)
    loaded = load_model(tmp_path / "model")
    cfg = loaded.config
    assert cfg.family == ("sd2" if family == "sd2" else "small")
    assert cfg.prediction == ("v" if family == "sd2" else "eps")
    x, t, ctx = _unet_inputs(64)
    with torch.no_grad():
        ref = parts["unet"](x, t, ctx).sample
        assert_close_scaled(loaded.model.unet(x, t, ctx), ref)
        z = torch.randn(1, 4, 4, 4)
        assert_close_scaled(loaded.model.vae.decode(z), parts["vae"].decode(z).sample)
        ids = torch.tensor([[49406, 320, 1125, 49407] + [49407] * 73])
        hidden = parts["text_encoder"](ids, output_hidden_states=True)
        ours = loaded.model.text_encoders[0](ids).hidden
        expected = hidden.last_hidden_state  # 2 layers: SD2's 23rd-of-24 rule keeps the last here
        assert_close_scaled(ours, expected)

    # Saving what we loaded as an original-layout single file gives the same model back.
    single = tmp_path / "model.safetensors"
    save_safetensors(loaded.model.state_dict(), single, metadata=D.metadata_for(cfg))
    again = load_model(single)
    assert again.config.unet == cfg.unet and again.config.text_encoders == cfg.text_encoders
    with torch.no_grad():
        assert torch.equal(again.model.unet(x, t, ctx), loaded.model.unet(x, t, ctx))


def test_sdxl_diffusers_folder_loads_and_generates(tmp_path):
    make_diffusers_folder(tmp_path / "xl", "sdxl")
    from opensd.pipeline.pipeline import load
    pipe = load(tmp_path / "xl")
    assert pipe.config.family == "sdxl"
    assert [e.naming for e in pipe.config.text_encoders] == ["hf", "openclip"]
    (image,) = pipe.txt2img("a cat", steps=2, seed=3, width=64, height=64)
    assert image.size == (64, 64)


def test_standalone_vae_replaces_the_checkpoint_vae(tmp_path):
    ckpt = write_random_checkpoint(tmp_path / "m.safetensors", seed=1)
    other = random_state_dict(TINY, seed=9)
    vae_only = {k[len(D.VAE):]: v for k, v in other.items() if k.startswith(D.VAE)}
    save_safetensors(vae_only, tmp_path / "vae.safetensors")
    loaded = load_model(ckpt, vae=tmp_path / "vae.safetensors")
    key = "decoder.conv_out.weight"
    assert torch.equal(loaded.model.vae.state_dict()[key], vae_only[key])
    base = load_model(ckpt)
    assert not torch.equal(base.model.vae.state_dict()[key], vae_only[key])


def test_vae_of_another_latent_size_is_refused(tmp_path):
    from dataclasses import replace
    ckpt = write_random_checkpoint(tmp_path / "m.safetensors")
    odd = replace(TINY, vae=replace(TINY.vae, z_channels=16, embed_dim=16))
    sd = {k[len(D.VAE):]: v for k, v in random_state_dict(odd).items() if k.startswith(D.VAE)}
    save_safetensors(sd, tmp_path / "vae16.safetensors")
    with pytest.raises(CheckpointError, match="16 latent channels"):
        load_model(ckpt, vae=tmp_path / "vae16.safetensors")


def test_sidecar_yaml_sets_v_prediction(tmp_path):
    ckpt = write_random_checkpoint(tmp_path / "m.safetensors")
    # synthetic checkpoints record their prediction; a file without metadata relies on the sidecar
    sd = random_state_dict(TINY)
    bare = tmp_path / "bare.safetensors"
    save_safetensors(sd, bare)
    assert load_model(bare).config.prediction == "eps"
    (tmp_path / "bare.yaml").write_text("model:\n  params:\n    parameterization: \"v\"\n")
    assert load_model(bare).config.prediction == "v"
    assert load_model(bare, prediction="eps").config.prediction == "eps"
    assert load_model(ckpt).config.prediction == "eps"


def test_fp16_file_loads_in_requested_dtype(tmp_path):
    ckpt = write_random_checkpoint(tmp_path / "m.safetensors", dtype=torch.float16)
    loaded = load_model(ckpt, dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("damage", ["truncate", "lora", "missing"])
def test_broken_or_foreign_files_give_one_clear_error(tmp_path, damage):
    path = tmp_path / "m.safetensors"
    if damage == "truncate":
        write_random_checkpoint(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        words = "truncated"
    elif damage == "lora":
        save_safetensors({"lora_unet_x.lora_down.weight": torch.zeros(4, 8)}, path)
        words = "LoRA"
    else:
        sd = random_state_dict(TINY)
        del sd[D.UNET + "middle_block.0.in_layers.2.weight"]
        save_safetensors(sd, path)
        words = "missing"
    with pytest.raises(CheckpointError, match=words) as e:
        load_model(path)
    assert str(path) in str(e.value)


def test_diffusers_folder_with_a_link_out_of_it_is_refused(tmp_path):
    make_diffusers_folder(tmp_path / "model")
    weights = tmp_path / "model" / "vae" / "diffusion_pytorch_model.safetensors"
    outside = tmp_path / "elsewhere.safetensors"
    weights.rename(outside)
    weights.symlink_to(outside)
    with pytest.raises(CheckpointError, match="outside the model folder") as e:
        load_model(tmp_path / "model")
    assert "vae" in str(e.value)


def test_hugging_face_cache_layout_links_are_followed(tmp_path):
    """The hub cache stores repo/blobs/<hash> and links repo/snapshots/<rev>/<file> to it."""
    repo = tmp_path / "models--org--tiny"
    snap = repo / "snapshots" / "abc123"
    make_diffusers_folder(snap)
    (repo / "blobs").mkdir()
    for i, f in enumerate(sorted(p for p in snap.rglob("*") if p.is_file())):
        blob = repo / "blobs" / f"{i:040x}"
        f.rename(blob)
        f.symlink_to(f"{'../' * (len(f.relative_to(repo).parts) - 1)}blobs/{blob.name}")
    assert load_model(snap).config.family == "small"


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_diffusers_clip_with_another_mlp_width_matches_transformers(tmp_path, act):
    parts = make_diffusers_folder(tmp_path / "model", "sd2" if act == "gelu" else "sd1",
                                  text={"hidden_act": act, "intermediate_size": 96})
    loaded = load_model(tmp_path / "model")
    assert loaded.config.text_encoders[0].mlp_width == 96
    ids = torch.tensor([[49406, 320, 1125, 49407] + [49407] * 73])
    with torch.no_grad():
        expected = parts["text_encoder"](ids).last_hidden_state
        assert_close_scaled(loaded.model.text_encoders[0](ids).hidden, expected)
    # A single file records the width in its shapes.
    single = tmp_path / "model.safetensors"
    save_safetensors(loaded.model.state_dict(), single, metadata=D.metadata_for(loaded.config))
    assert load_model(single).config.text_encoders == loaded.config.text_encoders
    # ...and converting it back to a folder writes it into config.json.
    from opensd.library.convert import convert_to_diffusers
    convert_to_diffusers(single, tmp_path / "again")
    assert load_model(tmp_path / "again").config.text_encoders == loaded.config.text_encoders


def _edit_json(path, **fields):
    j = json.loads(path.read_text())
    j.update(fields)
    path.write_text(json.dumps(j))


@pytest.mark.parametrize("component, fields, words", [
    ("text_encoder/config.json", {"hidden_act": "gelu_new"}, "hidden_act = 'gelu_new' is not supported"),
    ("text_encoder/config.json", {"layer_norm_eps": 1e-6}, "layer_norm_eps"),
    ("text_encoder/config.json", {"architectures": ["T5EncoderModel"]}, "only CLIP text encoders"),
    ("unet/config.json", {"norm_num_groups": 16}, "norm_num_groups = 16 is not supported"),
    ("unet/config.json", {"act_fn": "gelu"}, "act_fn"),
    ("unet/config.json", {"time_cond_proj_dim": 256}, "time_cond_proj_dim"),
    ("unet/config.json", {"resnet_time_scale_shift": "scale_shift"}, "resnet_time_scale_shift"),
    ("unet/config.json", {"class_embed_type": "timestep"}, "class_embed_type"),
    ("unet/config.json", {"flip_sin_to_cos": False}, "flip_sin_to_cos"),
    ("unet/config.json", {"up_block_types": ["UpBlock2D", "UpBlock2D"]}, "does not mirror"),
    ("unet/config.json", {"_class_name": "UNetSpatioTemporalConditionModel"}, "only UNet2DConditionModel"),
    ("vae/config.json", {"latents_mean": [0.1, 0.2, 0.3, 0.4]}, "latents_mean / latents_std must be lists of 4"),
    ("vae/config.json", {"use_post_quant_conv": False}, "use_quant_conv and use_post_quant_conv differ"),
    ("scheduler/scheduler_config.json", {"beta_schedule": "linear"}, "beta_schedule = 'linear'"),
    ("scheduler/scheduler_config.json", {"beta_end": 0.02}, "beta_end"),
    ("scheduler/scheduler_config.json", {"prediction_type": "sample"}, "prediction_type"),
    ("scheduler/scheduler_config.json", {"_class_name": "EDMDPMSolverMultistepScheduler", "prediction_type": "sample"},
     "EDM's continuous noise schedule"),
    ("scheduler/scheduler_config.json", {"_class_name": "FlowMatchEulerDiscreteScheduler"}, "flow-matching"),
])
def test_diffusers_config_fields_we_do_not_compute_are_refused(tmp_path, component, fields, words):
    make_diffusers_folder(tmp_path / "model")
    _edit_json(tmp_path / "model" / component, **fields)
    with pytest.raises(CheckpointError) as e:
        load_model(tmp_path / "model")
    assert str(e.value).startswith(str(tmp_path / "model" / component) + ": ")
    assert words in str(e.value)


def test_diffusers_config_irrelevant_fields_are_accepted(tmp_path):
    make_diffusers_folder(tmp_path / "model")
    _edit_json(tmp_path / "model" / "unet" / "config.json", upcast_attention=True, dropout=0.1,
               only_cross_attention=[False, False])
    _edit_json(tmp_path / "model" / "scheduler" / "scheduler_config.json", timestep_spacing="trailing",
               steps_offset=1, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    assert load_model(tmp_path / "model").config.family == "small"


def _vae_file(path, cfg=TINY, seed=9, metadata=None):
    sd = {k[len(D.VAE):]: v for k, v in random_state_dict(cfg, seed=seed).items() if k.startswith(D.VAE)}
    save_safetensors(sd, path, metadata=metadata)
    return path


def test_vae_with_another_downscale_is_refused(tmp_path):
    from dataclasses import replace
    ckpt = write_random_checkpoint(tmp_path / "m.safetensors")
    vae = _vae_file(tmp_path / "vae16x.safetensors", replace(TINY, vae=replace(TINY.vae, ch_mult=(1, 1, 2, 2, 2))))
    with pytest.raises(CheckpointError, match=r"vae16x.safetensors: .*downscales images 16x.*8x"):
        load_model(ckpt, vae=vae)


@pytest.mark.parametrize("source", ["metadata", "diffusers config.json", "whole checkpoint"])
def test_vae_declaring_another_scaling_factor_warns_with_the_numbers(tmp_path, caplog, source):
    from dataclasses import replace
    ckpt = write_random_checkpoint(tmp_path / "m.safetensors")
    xl = {D.META_SCALING: "0.13025"}
    if source == "metadata":
        vae = _vae_file(tmp_path / "sdxl_vae.safetensors", metadata=xl)
    elif source == "diffusers config.json":
        (tmp_path / "sdxl-vae").mkdir()
        vae = _vae_file(tmp_path / "sdxl-vae" / "diffusion_pytorch_model.safetensors")
        (tmp_path / "sdxl-vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", "scaling_factor": 0.13025}))
    else:  # --vae given a whole checkpoint of another family: its VAE is that family's
        vae = write_random_checkpoint(tmp_path / "xl.safetensors", replace(TINY, vae=replace(TINY.vae, scaling_factor=0.13025)), seed=4)
    with caplog.at_level("WARNING"):
        loaded = load_model(ckpt, vae=vae)
    assert loaded.config.vae.scaling_factor == load_model(ckpt).config.vae.scaling_factor  # the model's own
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert str(vae) in warned and "0.13025" in warned and "0.18215" in warned, warned
    caplog.clear()
    same = _vae_file(tmp_path / "sd_vae.safetensors", metadata={D.META_SCALING: "0.18215"})
    with caplog.at_level("WARNING"):
        load_model(ckpt, vae=same)
    assert not caplog.records
