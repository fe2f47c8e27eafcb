"""A whole tiny FLUX.2 [dev] for tests: diffusers' Flux2Transformer2DModel with a guidance input,
FLUX.2's VAE, transformers' Mistral3ForConditionalGeneration (32 layers, so that hidden states
10/20/30 exist and none is the normed last one; heads of 128 as released) and a tekken-like
tokenizer, written as a Flux2Pipeline folder or as ComfyUI's split files."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from transformers import PixtralImageProcessor, PixtralProcessor, PreTrainedTokenizerFast

from flux2_fixtures import flux2_parts, flux2_transformer, write_split
from mistral_fixtures import build_tokenizer, hf_mistral3, write_folder
from opensd.models.qwen3 import MISTRAL_SMALL_31

MISTRAL_WIDTH = 32
TINY_MISTRAL = replace(MISTRAL_SMALL_31, vocab_size=500, hidden_size=MISTRAL_WIDTH, intermediate_size=48,
                       num_hidden_layers=32, num_attention_heads=2, num_key_value_heads=1)


def flux2_dev_parts(seed: int = 0, levels: int = 2) -> dict:
    parts = flux2_parts(seed, levels)
    return {"transformer": flux2_transformer(seed, guidance=True, ctx=3 * MISTRAL_WIDTH), "vae": parts["vae"],
            "text_encoder": hf_mistral3(TINY_MISTRAL, seed + 3), "tokenizer": build_tokenizer()}


def processor(folder: Path) -> PixtralProcessor:
    tok = PreTrainedTokenizerFast.from_pretrained(str(folder))
    return PixtralProcessor(image_processor=PixtralImageProcessor(), tokenizer=tok, chat_template=tok.chat_template)


def write_flux2_dev_folder(root: Path, parts: dict) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": "Flux2Pipeline"}), encoding="utf-8")
    for name in ("transformer", "vae", "text_encoder"):
        parts[name].save_pretrained(root / name)
    write_folder(root / "tokenizer", parts["tokenizer"])
    return root


def write_flux2_dev_split_files(models: Path, model, tokenizer, layers: int | None = 31) -> dict[str, Path]:
    """ComfyUI's layout of our loaded model: diffusion_models/flux2_dev_fp8mixed.safetensors (BFL's
    keys), text_encoders/mistral_3_small_flux2_bf16.safetensors (`model.*`, cut to `layers` layers,
    with a vision-tower tensor beside), vae/flux2-vae.safetensors, the tokenizer in
    text_encoders/mistral_tokenizer/."""
    import torch

    from opensd.checkpoints import detect_dit as DD
    files = {"unet": models / "diffusion_models" / "flux2_dev_fp8mixed.safetensors",
             "mistral": models / "text_encoders" / "mistral_3_small_flux2_bf16.safetensors",
             "vae": models / "vae" / "flux2-vae.safetensors"}

    def cut(name, part):
        if name != "mistral":
            return part
        part = {k: v for k, v in part.items() if not k.startswith("model.layers.") or int(k.split(".")[2]) < layers}
        return {**part, "vision_tower.ln_pre.weight": torch.ones(4)}

    write_split(model, files, (DD.NET, DD.MISTRAL, "first_stage_model."), cut)
    write_folder(models / "text_encoders" / "mistral_tokenizer", tokenizer)
    return files
