"""Which DiT family a LoRA file was made for, from its key names alone (a file's header is enough).

Names come in kohya's underscored form (`lora_unet_double_blocks_0_img_attn_qkv`), Black Forest Labs'
and the released networks' dotted form (`diffusion_model.double_blocks.0.img_attn.qkv`) and diffusers'
(`transformer.single_transformer_blocks.0.attn.to_q`); each is compared with dots read as underscores.
Telling Flux.1 from FLUX.2 in Black Forest Labs' names: only Flux.1 has per-block modulation
(`img_mod`, `modulation`) and more than 8 double blocks (klein 4B has 5, 9B and [dev] 8), so a file
without modulation whose double blocks end at 4 to 7 is FLUX.2's, any other Flux.1's (the common
one, also for a file too small to tell); in diffusers' names only FLUX.2's single
blocks have the fused `to_qkv_mlp_proj`; Qwen-Image's attention names are SD3's diffusers names, but
it has 60 blocks where SD3.5 Large has 38. SD 1.x/2.x/XL files are told by their cross-attention
width elsewhere (lora_files.guess_family, library.model_catalog); UNet names match nothing here.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

LABELS = {"flux": "Flux.1", "flux2": "FLUX.2", "sd3": "SD3", "z_image": "Z-Image", "qwen_image": "Qwen-Image"}

_DOUBLE = re.compile(r"double_blocks_(\d+)_")
_BLOCK = re.compile(r"(?:^|_)transformer_blocks_(\d+)_")
_Z_IMAGE = re.compile(r"(^|_)(layers_\d+_(attention|feed_forward)|noise_refiner|context_refiner)_")
_QWEN_PARTS = ("_img_mlp_", "_txt_mlp_", "_img_mod_", "_txt_mod_")
_SD3_PARTS = ("joint_blocks_", "_attn_add_q_proj", "_attn_add_k_proj", "_ff_context_")


def dit_family(names: Iterable[str]) -> str | None:
    """"flux", "flux2", "sd3", "z_image" or "qwen_image" for a LoRA's key names; None if none fits."""
    flat = [name.replace(".", "_") for name in names if "lora_te" not in name and "text_model" not in name]
    if any("double_blocks_" in n or "single_blocks_" in n for n in flat):
        per_block_modulation = any("_img_mod_" in n or re.search(r"single_blocks_\d+_modulation", n) for n in flat)
        blocks = [int(m.group(1)) for n in flat if (m := _DOUBLE.search(n))]
        return "flux2" if not per_block_modulation and 4 <= max(blocks, default=0) <= 7 else "flux"
    if any("single_transformer_blocks_" in n for n in flat):
        return "flux2" if any("to_qkv_mlp_proj" in n for n in flat) else "flux"
    if any("transformer_blocks_" in n and any(p in n for p in _QWEN_PARTS) for n in flat):
        return "qwen_image"
    if any(p in n for n in flat for p in _SD3_PARTS):  # diffusers' SD3 names, or Qwen-Image's attention alone
        blocks = [int(m.group(1)) for n in flat if (m := _BLOCK.search(n))]
        return "qwen_image" if max(blocks, default=0) >= 38 else "sd3"
    if any(_Z_IMAGE.search(n) for n in flat):
        return "z_image"
    return None
