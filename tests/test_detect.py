"""Detection and key maps at real sizes, on the meta device.

The full-size state dicts are assembled from the reference libraries' models built from the
published diffusers/transformers configs of each release (written out literally below), mapped
to the original layout, plus the extra buffers real single files carry. Detection must return our
preset config for the family, and loading must consume every key.
"""
from dataclasses import replace

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from opensd.checkpoints import detect as D
from opensd.checkpoints.keymap_clip import clip_from_transformers
from opensd.checkpoints.keymap_unet import unet_from_diffusers
from opensd.checkpoints.keymap_vae import vae_from_diffusers
from opensd.errors import CheckpointError
from opensd.models import config as C
from opensd.pipeline.loader import build

SD15_UNET = dict(
    attention_head_dim=8, block_out_channels=[320, 640, 1280, 1280], cross_attention_dim=768,
    down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, in_channels=4, layers_per_block=2,
    out_channels=4, sample_size=64)
SD21_UNET = dict(SD15_UNET, attention_head_dim=[5, 10, 20, 20], cross_attention_dim=1024,
                 use_linear_projection=True, sample_size=96)
SDXL_UNET = dict(
    attention_head_dim=[5, 10, 20], block_out_channels=[320, 640, 1280], cross_attention_dim=2048,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    transformer_layers_per_block=[1, 2, 10], use_linear_projection=True, addition_embed_type="text_time",
    addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816, layers_per_block=2,
    sample_size=128)
REFINER_UNET = dict(
    attention_head_dim=[6, 12, 24, 24], block_out_channels=[384, 768, 1536, 1536], cross_attention_dim=1280,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    transformer_layers_per_block=4, use_linear_projection=True, addition_embed_type="text_time",
    addition_time_embed_dim=256, projection_class_embeddings_input_dim=2560, layers_per_block=2,
    sample_size=128)
VAE = dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=4,
           down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              hidden_act="quick_gelu", max_position_embeddings=77, vocab_size=49408)
OPENCLIP_H = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                  hidden_act="gelu", max_position_embeddings=77, vocab_size=49408, projection_dim=1024)
OPENCLIP_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                  hidden_act="gelu", max_position_embeddings=77, vocab_size=49408, projection_dim=1280)

# What real single files carry besides the modules (LDM's DDPM buffers, an old transformers buffer).
DDPM_BUFFERS = ["betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod",
                "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
                "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2"]


def _unet(kw, cfg):
    return {D.UNET + k: v for k, v in unet_from_diffusers(UNet2DConditionModel(**kw).state_dict(), cfg).items()}


def _vae(cfg):
    return {D.VAE + k: v for k, v in vae_from_diffusers(AutoencoderKL(**VAE).state_dict(), cfg).items()}


def _clip(kw, cfg, prefix, projection):
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    sd = cls(CLIPTextConfig(**kw)).state_dict()
    return {prefix + k: v for k, v in clip_from_transformers(sd, cfg).items()}


def _openclip_with_scale(kw, cfg, prefix):
    sd = _clip(kw, cfg, prefix, projection=True)
    assert prefix + "logit_scale" in sd
    return sd


def full_size(name: str) -> tuple[dict, C.ModelConfig]:
    with torch.device("meta"):
        if name in ("sd15", "sd15-inpaint"):
            expected = C.sd1(inpainting=name.endswith("inpaint"))
            sd = _unet(dict(SD15_UNET, in_channels=expected.unet.in_channels), expected.unet)
            sd.update(_clip(CLIP_L, C.CLIP_L, D.LDM_HF, False))
            sd[D.LDM_HF + "text_model.embeddings.position_ids"] = torch.zeros(1, 77, dtype=torch.long)
        elif name in ("sd21-v", "sd2-inpaint"):
            inpaint = name == "sd2-inpaint"
            expected = C.sd2(prediction="eps" if inpaint else "v", inpainting=inpaint)
            sd = _unet(dict(SD21_UNET, in_channels=expected.unet.in_channels), expected.unet)
            sd.update(_openclip_with_scale(OPENCLIP_H, C.OPENCLIP_H, D.LDM_OPENCLIP))
        elif name == "sdxl":
            expected = C.sdxl()
            sd = _unet(SDXL_UNET, expected.unet)
            sd.update(_clip(CLIP_L, C.SDXL_CLIP_L, D.SGM + "0.transformer.", False))
            sd.update(_openclip_with_scale(OPENCLIP_G, C.OPENCLIP_BIGG, D.SGM + "1.model."))
        else:
            expected = C.sdxl_refiner()
            sd = _unet(REFINER_UNET, expected.unet)
            sd.update(_openclip_with_scale(OPENCLIP_G, C.OPENCLIP_BIGG, D.SGM + "0.model."))
        sd.update(_vae(expected.vae))
        sd.update({k: torch.zeros(1000, dtype=torch.float32) for k in DDPM_BUFFERS})
    return sd, expected


@pytest.mark.parametrize("name", ["sd15", "sd15-inpaint", "sd21-v", "sd2-inpaint", "sdxl", "sdxl-refiner"])
def test_full_size_detection_and_every_key_consumed(name):
    sd, expected = full_size(name)
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    cfg = D.detect(shapes, name)
    assert cfg == expected
    model, unknown = build(cfg, sd, name, torch.float16, "meta")
    assert unknown == []  # nothing unexpected; DDPM buffers and position_ids are known extras
    assert next(model.parameters()).dtype == torch.float16


def test_sd2_prediction_override_and_metadata():
    sd, _ = full_size("sd21-v")
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert D.detect(shapes, prediction="eps").prediction == "eps"
    assert D.detect(shapes, metadata={D.META_PREDICTION: "epsilon"}).prediction == "eps"
    assert D.detect(shapes, metadata={D.META_PREDICTION: "v"}).resolution == 768
    # An explicit override beats metadata.
    assert D.detect(shapes, metadata={D.META_PREDICTION: "epsilon"}, prediction="v").prediction == "v"


def test_missing_weights_are_refused_with_the_file_named():
    sd, cfg = full_size("sd15")
    del sd[D.UNET + "out.2.weight"]
    with pytest.raises(CheckpointError, match=r"sd15.*missing.*out\.2\.weight"):
        build(cfg, sd, "sd15", torch.float32, "meta")


def test_wrong_shapes_are_refused():
    sd, cfg = full_size("sd15")
    sd[D.UNET + "out.2.bias"] = torch.empty(3, device="meta")
    with pytest.raises(CheckpointError, match="unexpected shapes"):
        build(cfg, sd, "x", torch.float32, "meta")


@pytest.mark.parametrize("keys,words", [
    ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320)}, "LoRA"),
    ({"string_to_param.*": (1, 768)}, "embedding"),
    ({"control_model.input_hint_block.0.weight": (16, 3, 3, 3)}, "ControlNet"),
    ({"encoder.conv_in.weight": (128, 3, 3, 3), "decoder.conv_in.weight": (512, 4, 3, 3)}, "VAE"),
    ({"conv_in.weight": (320, 4, 3, 3), "down_blocks.0.resnets.0.conv1.weight": (320, 320, 3, 3)}, "diffusers"),
    ({"model.layers.0.self_attn.q_proj.weight": (4096, 4096)}, "not a Stable Diffusion checkpoint"),
])
def test_other_models_get_a_message_saying_what_they_are(keys, words):
    with pytest.raises(CheckpointError, match=words) as e:
        D.detect(keys, "other.safetensors")
    assert str(e.value).startswith("other.safetensors: ")


def test_small_model_config_is_inferred_from_shapes():
    from opensd.library.synthetic import TINY, random_state_dict
    sd = random_state_dict(TINY)
    cfg = D.detect({k: tuple(v.shape) for k, v in sd.items()}, metadata={D.META_RESOLUTION: "64x64"})
    assert cfg.family == "small"
    assert cfg.unet == TINY.unet and cfg.vae == TINY.vae and cfg.text_encoders == TINY.text_encoders
    assert cfg.resolution == 64
    odd = replace(TINY, unet=replace(TINY.unet, channel_mult=(1, 2, 3), transformer_depth=(0, 1, 2),
                                     num_res_blocks=2, transformer_depth_middle=0))
    sd = random_state_dict(odd)
    assert D.detect({k: tuple(v.shape) for k, v in sd.items()}).unet == odd.unet


# Telltale keys of families (a few keys each, with the prefixes the files carry: none in the original
# releases, model.diffusion_model. in ComfyUI's). SD3 and Flux.1 run through their own families
# (families/); the UNet-only detection names them.
DIT = {
    "Stable Diffusion 3": {"model.diffusion_model.joint_blocks.0.context_block.attn.qkv.weight": (4608, 1536),
                           "model.diffusion_model.x_embedder.proj.weight": (1536, 16, 2, 2),
                           "text_encoders.clip_l.transformer.text_model.final_layer_norm.weight": (768,)},
    "Flux.1": {"double_blocks.0.img_attn.norm.key_norm.scale": (128,), "img_in.weight": (3072, 64),
               "single_blocks.0.linear1.weight": (21504, 3072), "guidance_in.in_layer.weight": (3072, 256)},
    "Flux.2": {"model.diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale": (128,),
               "model.diffusion_model.img_in.weight": (6144, 128),
               "model.diffusion_model.double_stream_modulation_img.lin.weight": (36864, 6144)},
    "Qwen-Image": {"txt_norm.weight": (3584,), "img_in.weight": (3072, 64)},
}
FOREIGN = {
    "Stable Cascade": {"clf.1.weight": (16, 2048, 1, 1), "clip_txt_mapper.weight": (8192, 1280)},
    "AuraFlow": {"model.double_layers.0.attn.w1q.weight": (3072, 3072), "model.cond_seq_linear.weight": (3072, 2048)},
    "PixArt": {"t_block.1.weight": (6912, 1152), "y_embedder.y_embedding": (300, 4096)},
    "Hunyuan-DiT": {"mlp_t5.0.weight": (8192, 2048), "extra_embedder.0.weight": (5632, 3968)},
    "Stable Video Diffusion": {
        "model.diffusion_model.input_blocks.0.0.weight": (320, 8, 3, 3),
        "model.diffusion_model.input_blocks.1.1.time_stack.0.attn1.to_q.weight": (320, 320),
        "model.diffusion_model.input_blocks.1.0.time_mixer.mix_factor": (1,)},
    "Kolors": {"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
               "model.diffusion_model.label_emb.0.0.weight": (1280, 5632)},
    "Wan": {"head.modulation": (1, 2, 5120), "patch_embedding.weight": (5120, 16, 1, 2, 2)},
    "HiDream": {"caption_projection.0.linear.weight": (2560, 4096)},
}


@pytest.mark.parametrize("family", FOREIGN)
def test_unsupported_families_are_named(family):
    shapes = FOREIGN[family]
    with pytest.raises(CheckpointError) as e:
        D.detect(shapes, "big.safetensors")
    msg = str(e.value)
    assert f"this is a {family}" in msg and "not supported" in msg, msg
    assert "no model.diffusion_model" not in msg


@pytest.mark.parametrize("family", DIT)
def test_dit_families_are_named_by_the_unet_only_detection(family):
    with pytest.raises(CheckpointError, match=f"this is a {family} model; this works on Stable Diffusion 1.x"):
        D.detect(DIT[family], "big.safetensors")


def test_an_incomplete_flux_file_says_what_it_lacks(tmp_path):
    from opensd.checkpoints.files import save_safetensors
    from opensd.pipeline.loader import load_model
    path = tmp_path / "flux1-dev.safetensors"
    save_safetensors({k: torch.zeros(v) for k, v in DIT["Flux.1"].items()}, path)
    with pytest.raises(CheckpointError, match=r"flux1-dev.safetensors: an incomplete Flux model: no "):
        load_model(path)


@pytest.mark.parametrize("keys", [
    {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320)},
    {"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": (4, 320)},
    {"lora_unet_double_blocks_0_img_attn_proj.lora_down.weight": (16, 3072)},  # a Flux LoRA
    {"lora_te_text_model_encoder_layers_0_mlp_fc1.hada_w1_a": (3072, 8)},  # LyCORIS LoHa
])
def test_a_lora_given_as_the_model_says_to_use_lora(keys):
    with pytest.raises(CheckpointError, match="this is a LoRA.*--lora"):
        D.detect(keys, "x.safetensors")


def test_unsupported_diffusers_pipeline_folder_is_named(tmp_path):
    from opensd.pipeline.loader import load_model
    (tmp_path / "flux").mkdir()
    (tmp_path / "flux" / "model_index.json").write_text('{"_class_name": "FluxPriorReduxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"]}')
    (tmp_path / "flux" / "transformer").mkdir()
    with pytest.raises(CheckpointError, match="this is a Flux.1 Redux/Control diffusers folder .*not supported"):
        load_model(tmp_path / "flux")
    (tmp_path / "flux" / "model_index.json").write_text('{"_class_name": "SomeFuturePipeline"}')
    with pytest.raises(CheckpointError, match="no unet/ but a transformer/: a DiT-based model family"):
        load_model(tmp_path / "flux")


def test_a_whole_checkpoint_given_as_a_vae_declares_its_familys_scaling(tmp_path):
    """--vae sd_xl_base.safetensors on an SD1 model: shapes match, the family (and so the latent
    scale) does not; a bare VAE file says nothing."""
    from opensd.checkpoints.files import save_safetensors
    from opensd.checkpoints.reader import declared_vae_scaling
    path = tmp_path / "no-metadata.safetensors"
    save_safetensors({"x": torch.zeros(1)}, path)
    assert declared_vae_scaling(path, full_size("sdxl")[0]) == C.SDXL_VAE.scaling_factor
    assert declared_vae_scaling(path, full_size("sd15")[0]) == C.SD_VAE.scaling_factor
    vae_only = {k: v for k, v in full_size("sdxl")[0].items() if k.startswith(D.VAE)}
    assert declared_vae_scaling(path, vae_only) is None
