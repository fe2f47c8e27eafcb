"""Tiny random Z-Image parts built by diffusers and transformers themselves: the network
(ZImageTransformer2DModel: 64 wide, two heads of 32 with the released RoPE split 32/48/48 scaled to
8/12/12, two refiner and two main blocks), Qwen3 (transformers' Qwen3ForCausalLM, 3 layers, grouped
key/value heads), Flux's 16-channel VAE layout, and a Qwen-style tokenizer trained here with a chat
template that renders as Qwen3's does for one user turn and the generation prompt; written as a
ZImagePipeline folder or as ComfyUI's split files."""
from __future__ import annotations

import json
from pathlib import Path

from diffusers import ZImageTransformer2DModel

from dit_fixtures import _vae
from opensd.checkpoints import detect_dit as DD
from opensd.checkpoints.files import save_safetensors
from opensd.models.qwen3 import Qwen3Config
from opensd.pipeline.pipeline import load
from qwen_fixtures import build_tokenizer, hf_qwen3, write_folder
from reference import randomize_

Z_DIM, Z_HEADS, Z_CAP, Z_AXES = 64, 2, 24, (8, 12, 12)
QWEN_WIDTH = 32
# Qwen3's template, reduced to what Z-Image renders: each turn, then the assistant's opening (a
# thinking block only when thinking is switched off)
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n"
                 "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
                 "{% endif %}")


def z_image_transformer(seed: int = 0, cap: int = Z_CAP) -> ZImageTransformer2DModel:
    net = ZImageTransformer2DModel(in_channels=16, dim=Z_DIM, n_layers=2, n_refiner_layers=2, n_heads=Z_HEADS,
                                   n_kv_heads=Z_HEADS, cap_feat_dim=cap, axes_dims=list(Z_AXES))
    return randomize_(net, seed=seed, std=0.1).eval()


def z_image_parts(seed: int = 0) -> dict:
    tok = build_tokenizer()
    qwen = Qwen3Config(vocab_size=tok.get_vocab_size(), hidden_size=QWEN_WIDTH, intermediate_size=64,
                       num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    return {"transformer": z_image_transformer(seed, QWEN_WIDTH), "vae": _vae("flux", seed + 1),
            "text_encoder": hf_qwen3(qwen, seed + 2), "tokenizer": tok}


def write_z_image_folder(root: Path, parts: dict) -> Path:
    """A ZImagePipeline folder (model_index.json, transformer/, vae/, text_encoder/, tokenizer/)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": "ZImagePipeline"}), encoding="utf-8")
    for name in ("transformer", "vae", "text_encoder"):
        parts[name].save_pretrained(root / name)
    write_folder(root / "tokenizer", parts["tokenizer"], template=CHAT_TEMPLATE)
    return root


def write_z_image_split_files(models: Path, model, tokenizer) -> dict[str, Path]:
    """ComfyUI's layout of our loaded model: diffusion_models/z_image_turbo_bf16.safetensors (bare
    released keys), text_encoders/qwen_3_4b.safetensors (`model.*`), vae/ae.safetensors, and the
    tokenizer in text_encoders/qwen_tokenizer/."""
    sd = model.state_dict()
    files = {"unet": models / "diffusion_models" / "z_image_turbo_bf16.safetensors",
             "qwen3": models / "text_encoders" / "qwen_3_4b.safetensors", "vae": models / "vae" / "ae.safetensors"}
    for (name, path), prefix in zip(files.items(), (DD.NET, DD.QWEN3, "first_stage_model.")):
        path.parent.mkdir(parents=True, exist_ok=True)
        save_safetensors({k[len(prefix):]: v.contiguous() for k, v in sd.items() if k.startswith(prefix)}, path)
    write_folder(models / "text_encoders" / "qwen_tokenizer", tokenizer, template=CHAT_TEMPLATE)
    return files


def z_image_models(tmp: Path, seed: int):
    """(models folder, pipeline): a tiny Z-Image loaded from its diffusers folder, and ComfyUI's models
    folder of its split files (write_z_image_split_files)."""
    parts = z_image_parts(seed=seed)
    pipe = load(write_z_image_folder(tmp / "folder", parts), precision="fp32", device="cpu")
    models = tmp / "models"
    write_z_image_split_files(models, pipe.model, parts["tokenizer"])
    return models, pipe
