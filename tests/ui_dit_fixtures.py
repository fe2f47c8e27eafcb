"""A models folder for the web UI's DiT tests: tiny random Qwen-Image-Edit-2509 and Qwen-Image-Edit
networks (ComfyUI's split files, copied into checkpoints/ under the released names, which tell the
variant), tiny Z-Image and FLUX.2 [dev] networks, a tiny Stable Diffusion checkpoint, and in ControlNet/
a Z-Image Fun ControlNet 2.1 and an InstantX Qwen-Image Union ControlNet, and a Qwen-Image LoRA. Z-Image's and Qwen-Image's
tokenizers share ComfyUI's text_encoders/qwen_tokenizer/: the Qwen-Image one is kept (the tests run
only Qwen-Image and Stable Diffusion; Z-Image and FLUX.2 are listed, not run)."""
from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import torch

from opensd.checkpoints.files import save_safetensors
from opensd.library.synthetic import write_random_checkpoint

EDIT_PLUS, EDIT, Z_IMAGE, FLUX2_DEV, SD = (
    "qwen_image_edit_2509_bf16.safetensors", "qwen_image_edit_bf16.safetensors", "z_image_turbo_bf16.safetensors",
    "flux2_dev_fp8mixed.safetensors", "tiny.safetensors")
Z_CN, QWEN_CN = "Z-Image-Turbo-Fun-Controlnet-Union-2.1.safetensors", "Qwen-Image-ControlNet-Union.safetensors"
QWEN_LORA = "qwen-style"  # in Lora/: kohya's (musubi-tuner's) names of one Qwen-Image block's img_mlp


def dit_models(tmp: Path) -> Path:
    from flux2_dev_fixtures import flux2_dev_parts, write_flux2_dev_folder, write_flux2_dev_split_files
    from opensd.pipeline.pipeline import load
    from qwen_image_fixtures import qwen_image_transformer, qwen_image_vae
    from test_qwen_edit_pipeline import vl_parts, write_edit_split_files
    from test_qwen_image_controlnet import _controlnet as qwen_controlnet
    from test_z_image_controlnet_pipeline import _controlnet as z_controlnet
    from z_image_fixtures import z_image_models

    models, _ = z_image_models(tmp, seed=4)  # diffusion_models/, text_encoders/, vae/ (ae.safetensors)
    parts = flux2_dev_parts()
    dev = load(write_flux2_dev_folder(tmp / "flux2_dev", parts), precision="fp32", device="cpu")
    write_flux2_dev_split_files(models, dev.model, parts["tokenizer"])
    _, _, te = vl_parts(tmp / "vl_tokenizer")
    edit = SimpleNamespace(transformer=qwen_image_transformer(5, ctx=128), vae=qwen_image_vae(6, False), text_encoder=te)
    write_edit_split_files(models, edit, net_name=EDIT_PLUS)
    ckpts = models / "checkpoints"
    ckpts.mkdir()
    for name in (EDIT_PLUS, EDIT):
        shutil.copyfile(models / "diffusion_models" / EDIT_PLUS, ckpts / name)
    for name in (Z_IMAGE, FLUX2_DEV):
        shutil.copyfile(models / "diffusion_models" / name, ckpts / name)
    write_random_checkpoint(ckpts / SD)
    (models / "ControlNet").mkdir()
    z_controlnet("2.1", models / "ControlNet" / Z_CN)
    save_safetensors({k: v.contiguous() for k, v in qwen_controlnet(layers=1, ctx=128).state_dict().items()},
                     models / "ControlNet" / QWEN_CN)
    (models / "Lora").mkdir()
    key = "lora_unet_transformer_blocks_0_img_mlp_net_0_proj"
    save_safetensors({f"{key}.lora_down.weight": torch.zeros(4, 64), f"{key}.lora_up.weight": torch.zeros(256, 4)},
                     models / "Lora" / f"{QWEN_LORA}.safetensors")
    return models
