"""Tiny random Qwen-Image parts built by diffusers itself: the network (QwenImageTransformer2DModel:
64 wide, two heads of 32 with the released RoPE split scaled to 4/14/14, two blocks, 16 latent
channels packed 2x2 as released, a 24-wide text input)."""
from __future__ import annotations

import torch
from diffusers import QwenImageTransformer2DModel

from reference import randomize_

QI_DIM, QI_HEADS, QI_CTX, QI_AXES, QI_LATENT = 64, 2, 24, (4, 14, 14), 16


def qwen_image_transformer(seed: int = 0, ctx: int = QI_CTX, layers: int = 2) -> QwenImageTransformer2DModel:
    net = QwenImageTransformer2DModel(in_channels=4 * QI_LATENT, out_channels=QI_LATENT, num_layers=layers,
                                      attention_head_dim=QI_DIM // QI_HEADS, num_attention_heads=QI_HEADS,
                                      joint_attention_dim=ctx, axes_dims_rope=QI_AXES)
    return randomize_(net, seed=seed, std=0.1).eval()


def qwen_image_vae(seed: int = 0, own_statistics: bool = True):
    """diffusers' AutoencoderKLQwenImage, tiny (8 base channels, 1/8 latents of the released 16
    channels, one residual block per level), its norms and biases randomised; `own_statistics`:
    random latent statistics, else the released ones (which ComfyUI's VAE files, holding none, get)."""
    from diffusers import AutoencoderKLQwenImage
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    stats = dict(latents_mean=(torch.randn(QI_LATENT, generator=g) * 0.3).tolist(),
                 latents_std=(torch.rand(QI_LATENT, generator=g) + 0.5).tolist()) if own_statistics else {}
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=QI_LATENT, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                                 temperal_downsample=[False, True, True], **stats)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1 + 0.2 * noise if name.endswith("gamma") else p + 0.05 * noise if name.endswith("bias") else p)
    return vae.eval()


def wan_layout(vae) -> dict:
    """A diffusers AutoencoderKLQwenImage's weights under the Wan / ComfyUI names (5-D kernels kept),
    as split_files/vae/qwen_image_vae.safetensors holds them."""
    from opensd.checkpoints.keymap_qwen_vae import wan_key
    per_level = vae.config.num_res_blocks + 2
    return {wan_key(k, per_level): v.contiguous() for k, v in vae.state_dict().items()}


def write_qwen_image_split_files(models, net, vae, net_name: str = "qwen_image_bf16.safetensors",
                                 prefix: str = "") -> dict:
    """ComfyUI's layout: diffusion_models/<net_name> (diffusers' names, under `prefix`) and
    vae/qwen_image_vae.safetensors (Wan names)."""
    from opensd.checkpoints.files import save_safetensors
    files = {"unet": models / "diffusion_models" / net_name, "vae": models / "vae" / "qwen_image_vae.safetensors"}
    for path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors({prefix + k: v.contiguous() for k, v in net.state_dict().items()}, files["unet"])
    save_safetensors(wan_layout(vae), files["vae"])
    return files


# --- a whole tiny Qwen-Image: network, VAE, Qwen2.5-VL (64 wide), tokenizer ----------------------

def qwen_image_parts(seed: int = 0) -> dict:
    """The encoder has one head of the released width 128 (ComfyUI's files hold no head width; every
    Qwen2.5 has 128), so its split files load as the released ones do."""
    from dataclasses import replace
    from functools import partial
    from unittest import mock

    import test_qwen25vl as Q
    from qwen_fixtures import build_tokenizer
    tok = build_tokenizer()
    encoder = replace(Q.TINY, vocab_size=tok.get_vocab_size(), hidden_size=128, num_attention_heads=1,
                      num_key_value_heads=1, head_dim=128, num_hidden_layers=2)
    with mock.patch.object(Q, "hf_config", partial(Q.hf_config, mrope=(16, 24, 24))):  # the released split
        text_encoder = Q.hf_qwen25vl(encoder, seed + 2)
    return {"transformer": qwen_image_transformer(seed, ctx=encoder.hidden_size), "vae": qwen_image_vae(seed + 1, False),
            "text_encoder": text_encoder, "tokenizer": tok}


SCHEDULER = dict(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=8192, max_shift=0.9,
                 num_train_timesteps=1000, shift=1.0, shift_terminal=0.02, time_shift_type="exponential",
                 use_dynamic_shifting=True)  # Qwen/Qwen-Image's scheduler/scheduler_config.json


def write_qwen_image_folder(root, parts: dict):
    """A QwenImagePipeline folder (model_index.json, scheduler/, transformer/, vae/, text_encoder/,
    tokenizer/)."""
    import json

    from diffusers import FlowMatchEulerDiscreteScheduler

    from qwen_fixtures import write_folder
    root.mkdir(parents=True, exist_ok=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": "QwenImagePipeline"}), encoding="utf-8")
    FlowMatchEulerDiscreteScheduler(**SCHEDULER).save_pretrained(root / "scheduler")
    for name in ("transformer", "vae", "text_encoder"):
        parts[name].save_pretrained(root / name)
    write_folder(root / "tokenizer", parts["tokenizer"])
    return root


def write_qwen_image_split_files_of(models, parts: dict) -> dict:
    """ComfyUI's split files of a whole tiny Qwen-Image (qwen_image_parts): diffusion_models/
    qwen_image_bf16.safetensors, text_encoders/qwen_2.5_vl_7b.safetensors (ComfyUI's/Qwen's older
    `model.` / `visual.` names, vision tower included) with the tokenizer in text_encoders/qwen_tokenizer/,
    vae/qwen_image_vae.safetensors."""
    from opensd.checkpoints.files import save_safetensors
    from qwen_fixtures import write_folder
    files = write_qwen_image_split_files(models, parts["transformer"], parts["vae"])
    files["te"] = models / "text_encoders" / "qwen_2.5_vl_7b.safetensors"
    files["te"].parent.mkdir(parents=True, exist_ok=True)
    te = {k.replace("model.language_model.", "model.").replace("model.visual.", "visual."): v.contiguous()
          for k, v in parts["text_encoder"].state_dict().items()}
    save_safetensors(te, files["te"])
    write_folder(models / "text_encoders" / "qwen_tokenizer", parts["tokenizer"])
    return files
