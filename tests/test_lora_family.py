"""Which DiT family a LoRA file is for, from its key names (adapters.lora_family): every Linear of each
family's released network (built on the meta device) named as LoRA files name it, in each of the
naming styles people's files use."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from opensd.adapters.lora_family import dit_family
from opensd.models import config_dit as C


def _linears(build, cfg) -> list[str]:
    with torch.device("meta"):
        net = build(cfg)
    return [name for name, m in net.named_modules() if isinstance(m, nn.Linear)]


def _networks():
    from opensd.models.flux import Flux
    from opensd.models.flux2 import Flux2
    from opensd.models.mmdit import MMDiT
    from opensd.models.qwen_image import QwenImage
    from opensd.models.z_image import ZImage
    return {"flux": (Flux, C.FLUX_DEV), "flux2": (Flux2, C.FLUX2_KLEIN_4B), "flux2_9b": (Flux2, C.FLUX2_KLEIN_9B),
            "sd3": (MMDiT, C.SD35_LARGE), "z_image": (ZImage, C.Z_IMAGE), "qwen_image": (QwenImage, C.QWEN_IMAGE)}


@pytest.mark.parametrize("key", ["flux", "flux2", "flux2_9b", "sd3", "z_image", "qwen_image"])
def test_released_names_in_each_style(key):
    build, cfg = _networks()[key]
    names = _linears(build, cfg)
    family = key.removesuffix("_9b")
    styles = {
        "released": [f"diffusion_model.{n}.lora_A.weight" for n in names],
        "kohya": [f"lora_unet_{n.replace('.', '_')}.lora_down.weight" for n in names],
        "bare": [f"{n}.lora_B.weight" for n in names],
    }
    for style, keys in styles.items():
        assert dit_family(keys) == family, style
    attention_only = [k for k in styles["kohya"] if "attn" in k or "attention" in k]
    assert dit_family(attention_only) == family  # a file that trains only the attention layers


def test_diffusers_names():
    assert dit_family(["transformer.single_transformer_blocks.3.attn.to_qkv_mlp_proj.lora_A.weight",
                       "transformer.transformer_blocks.0.attn.to_q.lora_A.weight"]) == "flux2"
    assert dit_family(["transformer.single_transformer_blocks.3.attn.to_q.lora_A.weight",
                       "transformer.single_transformer_blocks.3.proj_mlp.lora_A.weight"]) == "flux"
    assert dit_family(["transformer.transformer_blocks.0.attn.add_q_proj.lora_A.weight",
                       "transformer.transformer_blocks.0.ff_context.net.0.proj.lora_A.weight"]) == "sd3"
    assert dit_family(["transformer.transformer_blocks.0.img_mlp.net.0.proj.lora_A.weight",
                       "transformer.transformer_blocks.0.attn.add_q_proj.lora_A.weight"]) == "qwen_image"


def test_unet_and_text_encoder_names_are_no_dit_family():
    assert dit_family(["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight",
                       "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_0_proj.lora_down.weight",
                       "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight",
                       "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"]) is None
    assert dit_family([]) is None


def test_the_model_list_and_the_refusal_name_the_family(tmp_path):
    from opensd.adapters.lora_files import guess_family, read_lora
    from opensd.checkpoints.files import save_safetensors
    from opensd.library.model_catalog import _lora
    from opensd.checkpoints.files import read_safetensors_header
    sd = {}
    for i in range(30):
        sd[f"diffusion_model.layers.{i}.attention.to_q.lora_A.weight"] = torch.zeros(4, 64)
        sd[f"diffusion_model.layers.{i}.attention.to_q.lora_B.weight"] = torch.zeros(64, 4)
    path = tmp_path / "z.safetensors"
    save_safetensors(sd, path)
    assert _lora(*read_safetensors_header(path))[0] == "z_image"
    assert guess_family(read_lora(path)) == "Z-Image"
