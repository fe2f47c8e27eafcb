"""LoRAs on SD3 and Flux: a PEFT LoRA that diffusers trains on its transformer (q, k, v apart, the
MLP, the text stream), saved by diffusers' own save_lora_weights, patches our fused original-layout
weights so our network equals diffusers' with the adapter active; kohya's names for the same module
apply the same update; a CLIP LoRA patches the text encoder; a LoRA for another family is refused."""
from __future__ import annotations

import pytest
import torch
from diffusers import FluxPipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from dit_fixtures import flux_parts, load_tiny, sd3_parts
from opensd.adapters.lora import LoraSet, LoraSpec
from opensd.checkpoints.files import save_safetensors
from opensd.errors import CheckpointError
from opensd.pipeline.pipeline import load
from reference import assert_close_scaled

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
           "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "proj_mlp", "proj_out"]


def _lora(transformer, seed):
    torch.manual_seed(seed)
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=TARGETS, init_lora_weights=False))
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(transformer).items()}


def _inputs_flux(cfg):
    g = torch.Generator().manual_seed(11)
    return (torch.randn(1, 16, 8, 6, generator=g), torch.tensor([0.7]), torch.randn(1, 5, cfg.context_in_dim, generator=g),
            torch.randn(1, cfg.vec_in_dim, generator=g), torch.tensor([3.5]))


@torch.no_grad()
def test_a_diffusers_flux_lora_patches_our_fused_weights(tmp_path):
    parts = flux_parts("dev", seed=3)
    ours = load_tiny(tmp_path / "flux", "flux", parts)
    ref = parts["transformer"]
    lora = _lora(ref, seed=4)
    FluxPipeline.save_lora_weights(tmp_path / "lora", transformer_lora_layers=lora, safe_serialization=True)
    ours.set_loras([LoraSpec(tmp_path / "lora" / "pytorch_lora_weights.safetensors")])
    ours.apply_loras("")
    assert ours.lora_reports[0].patched == len(lora) // 2 and ours.lora_reports[0].unmatched == []
    x, t, ctx, y, g = _inputs_flux(ours.config.flux)
    packed = FluxPipeline._pack_latents(x, 1, 16, 8, 6)
    ids = FluxPipeline._prepare_latent_image_ids(1, 4, 3, "cpu", torch.float32)
    want = ref(hidden_states=packed, encoder_hidden_states=ctx, pooled_projections=y, timestep=t, img_ids=ids,
               txt_ids=torch.zeros(5, 3), guidance=g).sample
    got = ours.model.network(x, t, ctx, y, g)
    assert_close_scaled(got, FluxPipeline._unpack_latents(want, 64, 48, 8), 1e-5)
    ref.disable_adapters()
    assert (got - ours.model.network(x, t, ctx, y, g)).abs().max() == 0  # still patched
    ours.set_loras([])
    ours.apply_loras("")
    plain = ref(hidden_states=packed, encoder_hidden_states=ctx, pooled_projections=y, timestep=t, img_ids=ids,
                txt_ids=torch.zeros(5, 3), guidance=g).sample
    plain = FluxPipeline._unpack_latents(plain, 64, 48, 8)
    assert_close_scaled(ours.model.network(x, t, ctx, y, g), plain, 1e-5)
    assert (got - plain).abs().max() > 0.1 * plain.abs().max()  # the LoRA did change the output


@torch.no_grad()
def test_kohya_names_patch_the_same_modules_as_peft_names(tmp_path):
    parts = flux_parts("schnell", seed=5)
    ours = load_tiny(tmp_path / "flux", "flux", parts)
    width = ours.config.flux.hidden_size
    g = torch.Generator().manual_seed(1)
    down, up = torch.randn(4, width, generator=g), torch.randn(3 * width, 4, generator=g)
    kohya = {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": down,
             "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": up,
             "lora_unet_double_blocks_0_img_attn_qkv.alpha": torch.tensor(2.0)}
    peft = {}
    for i, name in enumerate(("to_q", "to_k", "to_v")):  # the same update as three diffusers modules
        peft[f"transformer.transformer_blocks.0.attn.{name}.lora_A.weight"] = down * 0.5
        peft[f"transformer.transformer_blocks.0.attn.{name}.lora_B.weight"] = up[i * width:(i + 1) * width]
    save_safetensors(kohya, tmp_path / "kohya.safetensors")
    save_safetensors(peft, tmp_path / "peft.safetensors")
    qkv = ours.model.network.double_blocks[0].img_attn.qkv.weight
    base = qkv.clone()
    lora_set = LoraSet(ours.model)
    lora_set.apply([LoraSpec(tmp_path / "kohya.safetensors")])
    via_kohya = qkv.clone()
    torch.testing.assert_close(via_kohya - base, up @ down * 0.5)
    lora_set.apply([LoraSpec(tmp_path / "peft.safetensors")])
    torch.testing.assert_close(qkv, via_kohya)
    lora_set.restore()
    assert torch.equal(qkv, base)


@torch.no_grad()
def test_an_sd3_lora_with_its_clip_part(tmp_path):
    parts = sd3_parts("sd35", seed=6)
    ours = load_tiny(tmp_path / "sd3", "sd3", parts)
    lora = {f"transformer.{k}": v for k, v in _lora(parts["transformer"], seed=7).items()}
    clip_l = ours.model.encoder("clip_l").transformer
    q = clip_l.text_model.encoder.layers[0].self_attn.q_proj.weight
    base_q = q.clone()
    lora["lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] = torch.ones(2, q.shape[1])
    lora["lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight"] = torch.ones(q.shape[0], 2)
    save_safetensors(lora, tmp_path / "sd3_lora.safetensors")
    ours.set_loras([LoraSpec(tmp_path / "sd3_lora.safetensors", 1.0, 0.5)])
    ours.apply_loras("")
    assert ours.lora_reports[0].unmatched == []
    torch.testing.assert_close(q - base_q, torch.full_like(q, 2 * 0.5))  # up @ down, te strength 0.5
    g = torch.Generator().manual_seed(2)
    x, t = torch.randn(1, 16, 8, 8, generator=g), torch.tensor([600.0])
    ctx, y = torch.randn(1, 7, 128, generator=g), torch.randn(1, 96, generator=g)
    want = parts["transformer"](hidden_states=x, timestep=t, encoder_hidden_states=ctx, pooled_projections=y).sample
    got = ours.model.network(x, t, ctx, y)
    assert_close_scaled(got, want, 1e-5)
    parts["transformer"].disable_adapters()
    plain = parts["transformer"](hidden_states=x, timestep=t, encoder_hidden_states=ctx, pooled_projections=y).sample
    assert (got - plain).abs().max() > 0.1 * plain.abs().max()


def test_a_lora_for_another_family_is_refused(tmp_path):
    ours = load_tiny(tmp_path / "flux", "flux", flux_parts("dev"))
    save_safetensors({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 320),
                      "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(320, 4)},
                     tmp_path / "sd15.safetensors")
    ours.set_loras([LoraSpec(tmp_path / "sd15.safetensors")])
    with pytest.raises(CheckpointError, match="LoRA does not fit this Flux.1 model"):
        ours.apply_loras("")


def test_a_flux_lora_on_an_sd1_model_is_named_as_a_flux_lora(tmp_path):
    from opensd.library.synthetic import write_random_checkpoint
    ckpt = tmp_path / "tiny.safetensors"
    write_random_checkpoint(ckpt)
    save_safetensors({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(4, 32),
                      "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.zeros(96, 4)},
                     tmp_path / "flux_style.safetensors")
    pipe = load(ckpt, precision="fp32", device="cpu")
    pipe.set_loras([LoraSpec(tmp_path / "flux_style.safetensors")])
    with pytest.raises(CheckpointError, match="it looks like a LoRA for Flux.1"):
        pipe.apply_loras("")
