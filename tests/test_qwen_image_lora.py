"""Qwen-Image LoRAs in the formats people use: a PEFT LoRA on diffusers' QwenImageTransformer2DModel
(attention, MLPs, modulations, embedders, output) saved by QwenImagePipeline (`transformer.`), the
same under `diffusion_model.` (ComfyUI, ai-toolkit), bare (Qwen-Image-Lightning's), and renamed to
kohya's `lora_unet_transformer_blocks_N_attn_to_q.lora_down/up` (musubi-tuner): each patches every
module it names, and our network then equals diffusers' with the LoRA active."""
from __future__ import annotations

import pytest
import torch
from diffusers import QwenImagePipeline

from opensd.pipeline.pipeline import load
from qwen_image_fixtures import qwen_image_parts, write_qwen_image_folder
from reference import assert_close_scaled

TARGETS = (r".*(attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)|(img|txt)_mlp\.net\.(0\.proj|2)"
           r"|(img|txt)_mod\.1|img_in|txt_in|proj_out|norm_out\.linear|timestep_embedder\.linear_1)$")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    tmp = tmp_path_factory.mktemp("qwen_lora")
    parts = qwen_image_parts(seed=6)
    ours = load(write_qwen_image_folder(tmp / "model", parts), precision="fp32", device="cpu")
    ref = parts["transformer"]
    torch.manual_seed(7)
    ref.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=TARGETS))
    lora = {k: v.detach().clone() for k, v in get_peft_model_state_dict(ref).items()}
    QwenImagePipeline.save_lora_weights(tmp / "lora", transformer_lora_layers=lora, safe_serialization=True)
    return ours, ref, tmp / "lora" / "pytorch_lora_weights.safetensors", len(lora) // 2


def _kohya(key: str) -> str:
    path, _, kind = key[len("transformer."):].rpartition(".lora_")
    return "lora_unet_" + path.replace(".", "_") + (".lora_down.weight" if kind.startswith("A") else ".lora_up.weight")


@torch.no_grad()
@pytest.mark.parametrize("style", ["transformer.", "diffusion_model.", "", "kohya"])
def test_a_qwen_image_lora_patches_our_network(model, tmp_path, style):
    from safetensors.torch import load_file, save_file

    from opensd.adapters.lora import LoraSpec
    ours, ref, path, count = model
    saved = load_file(path)
    assert count == 2 * 14 + 5 and all(k.startswith("transformer.") for k in saved)  # every Linear named
    if style == "kohya":
        renamed = {_kohya(k): v for k, v in saved.items()}
    else:
        renamed = {style + k[len("transformer."):]: v for k, v in saved.items()}
    save_file(renamed, tmp_path / "lora.safetensors")
    ours.set_loras([LoraSpec(tmp_path / "lora.safetensors")])
    ours.apply_loras("")
    report = ours.lora_reports[0]
    assert report.patched == count and report.unmatched == []
    g = torch.Generator().manual_seed(8)
    x, ctx, t = torch.randn(1, 16, 6, 4, generator=g), torch.randn(1, 7, 128, generator=g), torch.tensor([0.6])
    packed = QwenImagePipeline._pack_latents(x, 1, 16, 6, 4)
    want = ref(packed, ctx, None, t, [[(1, 3, 2)]], return_dict=False)[0]
    got = QwenImagePipeline._pack_latents(ours.model.network(x, t, ctx), 1, 16, 6, 4)
    assert_close_scaled(got, want, 1e-5)
    ours.set_loras([])
    ours.apply_loras("")
    assert (ours.model.network(x, t, ctx) - ours.model.network(x, t, ctx)).abs().max() == 0
