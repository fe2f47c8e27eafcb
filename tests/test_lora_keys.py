"""LoRA module names: kohya and PEFT spellings map onto our modules, for every family."""
import pytest
import torch
from diffusers import UNet2DConditionModel
from reference import diffusers_unet_kwargs
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

from opensd.adapters.lora_keys import (
    FusedQKVPart,
    lora_modules,
    lora_targets,
    peft_names,
)
from opensd.library.synthetic import TINY
from opensd.models import config as C
from opensd.models.stable_diffusion import StableDiffusion


def _meta(cfg):
    with torch.device("meta"):
        return StableDiffusion(cfg)


def test_sd1_names_follow_kohya_diffusers_paths():
    model = _meta(C.sd1())
    t = lora_targets(model)
    unet = model.unet
    assert t["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"] is \
        unet.input_blocks[1][1].transformer_blocks[0].attn1.to_q
    assert t["lora_unet_down_blocks_0_attentions_0_proj_in"] is unet.input_blocks[1][1].proj_in
    assert t["lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_out_0"] is \
        unet.output_blocks[11][1].transformer_blocks[0].attn2.to_out[0]
    assert t["lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj"] is \
        unet.middle_block[1].transformer_blocks[0].ff.net[0].proj
    assert t["lora_unet_mid_block_resnets_0_conv1"] is unet.middle_block[0].in_layers[2]
    assert t["lora_unet_down_blocks_0_downsamplers_0_conv"] is unet.input_blocks[3][0].op
    assert t["lora_unet_up_blocks_0_upsamplers_0_conv"] is unet.output_blocks[2][1].conv
    te = model.cond_stage_model.transformer.text_model.encoder.layers
    assert t["lora_te_text_model_encoder_layers_0_self_attn_q_proj"] is te[0].self_attn.q_proj
    assert t["lora_te_text_model_encoder_layers_11_mlp_fc1"] is te[11].mlp.fc1
    names = peft_names(model)
    assert names["lora_te_text_model_encoder_layers_0_self_attn_q_proj"] == \
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"
    assert names["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"] == \
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    assert not any(k.startswith("lora_te") for k in lora_targets(model, text_encoder=False))
    # every Linear/Conv2d of the UNet is a target, each exactly once
    convs = [m for m in unet.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    unet_targets = [m for k, m in t.items() if k.startswith("lora_unet_")]
    assert len(unet_targets) == len(convs) == len({id(m) for m in unet_targets})


def test_sdxl_uses_sgm_paths_and_te1_te2():
    model = _meta(C.sdxl())
    mods = {m.kohya: m for m in lora_modules(model)}
    unet = model.unet
    m = mods["lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"]
    assert m.module is unet.input_blocks[4][1].transformer_blocks[0].attn1.to_q
    assert m.peft == "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    assert "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q" in m.aliases
    assert mods["lora_unet_middle_block_1_proj_out"].module is unet.middle_block[1].proj_out
    te1 = mods["lora_te1_text_model_encoder_layers_3_mlp_fc2"]
    assert te1.peft == "text_encoder.text_model.encoder.layers.3.mlp.fc2"
    assert te1.module is model.conditioner.embedders[0].transformer.text_model.encoder.layers[3].mlp.fc2
    te2 = mods["lora_te2_text_model_encoder_layers_5_self_attn_k_proj"]
    assert te2.peft == "text_encoder_2.text_model.encoder.layers.5.self_attn.k_proj"
    assert isinstance(te2.module, FusedQKVPart) and te2.module.index == 1
    assert mods["lora_te2_text_model_encoder_layers_5_mlp_fc1"].module is \
        model.conditioner.embedders[1].model.transformer.resblocks[5].mlp.c_fc
    assert mods["lora_te2_text_model_encoder_layers_5_self_attn_out_proj"].module is \
        model.conditioner.embedders[1].model.transformer.resblocks[5].attn.out_proj
    assert len(mods) == len(lora_modules(model))


def test_sd2_openclip_parts_are_views_of_the_fused_projection():
    cfg = C.ModelConfig("sd2", TINY.unet, TINY.vae,
                        (C.TextEncoderConfig(naming="openclip", width=64, layers=2, heads=1, act="gelu"),))
    model = StableDiffusion(cfg)
    t = lora_targets(model)
    attn = model.cond_stage_model.model.transformer.resblocks[1].attn
    v = t["lora_te_text_model_encoder_layers_1_self_attn_v_proj"]
    assert isinstance(v, FusedQKVPart)
    assert v.weight.data_ptr() == attn.in_proj_weight[128:].data_ptr()
    assert torch.equal(v.bias, attn.in_proj_bias[128:])
    x = torch.randn(3, 64)
    assert torch.allclose(v(x), (x @ attn.in_proj_weight.T + attn.in_proj_bias)[:, 128:], atol=1e-6)
    assert v not in list(model.modules())


def test_peft_names_exist_in_diffusers_and_transformers_models():
    model = _meta(TINY)
    unet = UNet2DConditionModel(**diffusers_unet_kwargs(TINY.unet))
    te_cfg = TINY.text_encoders[0]
    te = CLIPTextModel(CLIPTextConfig(hidden_size=te_cfg.width, intermediate_size=4 * te_cfg.width,
                                      num_hidden_layers=te_cfg.layers, num_attention_heads=te_cfg.heads))
    diff = {f"unet.{n}": m for n, m in unet.named_modules()}
    tnames = {n.removeprefix("text_model.") for n, _ in te.named_modules()}
    for m in lora_modules(model):
        if m.component == "unet":
            ref = diff[m.peft]
            kind = nn.Conv2d if isinstance(m.module, nn.Conv2d) else type(m.module)  # ours subclasses it
            assert isinstance(ref, kind) and ref.weight.shape == m.module.weight.shape, m.peft
        else:
            assert m.peft.removeprefix("text_encoder.").removeprefix("text_model.") in tnames, m.peft


@pytest.mark.parametrize("cfg", [C.sd2(), C.sdxl_refiner()], ids=["sd2", "refiner"])
def test_every_family_maps_without_error(cfg):
    mods = lora_modules(_meta(cfg))
    kohya = [m.kohya for m in mods]
    assert len(kohya) == len(set(kohya))
    if cfg.family == "sdxl_refiner":
        assert any(k.startswith("lora_te2_") for k in kohya)


def _lora_for(model, pick, rank=2):
    from opensd.adapters.lora_files import LoraWeights
    mods = {}
    for m in lora_modules(model):
        if pick(m):
            shape = m.module.weight.shape
            mods[m.kohya] = LoraWeights(down=torch.empty(rank, *shape[1:], device="meta"),
                                        up=torch.empty(shape[0], rank, *([1] * (len(shape) - 2)), device="meta"))
    return mods


def test_full_size_sdxl_lora_fits_sdxl_and_is_refused_by_sd1():
    from pathlib import Path

    from opensd.adapters.lora import match_lora
    from opensd.adapters.lora_files import LoraFile
    from opensd.errors import CheckpointError

    xl, sd1 = _meta(C.sdxl()), _meta(C.sd1())
    lf = LoraFile(Path("xl.safetensors"), _lora_for(xl, lambda m: ".attentions." in m.peft or m.component == "te"))
    match = match_lora(lf, xl)
    assert len(match.patches) == len(lf.modules) and not match.unmatched
    assert any(isinstance(m.module, FusedQKVPart) for m, _ in match.patches)
    with pytest.raises(CheckpointError, match="LoRA for SDXL"):
        match_lora(lf, sd1)
    sd1_lora = LoraFile(Path("sd1.safetensors"), _lora_for(sd1, lambda m: True))
    with pytest.raises(CheckpointError, match="LoRA for SD1"):
        match_lora(sd1_lora, _meta(C.sd2()))


def test_old_diffusers_and_peft_spellings_normalise():
    from opensd.adapters.lora_files import normalize_name
    assert normalize_name("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora") == \
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0"
    assert normalize_name("down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora") == \
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    assert normalize_name("text_encoder.text_model.encoder.layers.3.self_attn.to_q_lora") == \
        "text_encoder.text_model.encoder.layers.3.self_attn.q_proj"
    assert normalize_name("text_encoder.text_model.encoder.layers.3.mlp.fc1.lora_linear_layer") == \
        "text_encoder.text_model.encoder.layers.3.mlp.fc1"
    assert normalize_name("lora_te_text_model_encoder_layers_0_mlp_fc1") == "lora_te_text_model_encoder_layers_0_mlp_fc1"
