"""Tiny random FLUX.2 parts built by diffusers itself: the network (Flux2Transformer2DModel: 64 wide,
two heads of 32 with the released 4-axis RoPE split scaled to 8/8/8/8, two double and two single
blocks, 128 input channels as released), for klein (no guidance input) or [dev] (guidance input);
and a whole tiny klein written as a Flux2KleinPipeline folder or as ComfyUI's split files."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import Flux2Transformer2DModel

from reference import randomize_

F2_DIM, F2_HEADS, F2_CTX, F2_AXES, F2_IN = 64, 2, 24, (8, 8, 8, 8), 128


def flux2_transformer(seed: int = 0, guidance: bool = False, ctx: int = F2_CTX) -> Flux2Transformer2DModel:
    net = Flux2Transformer2DModel(in_channels=F2_IN, num_layers=2, num_single_layers=2, attention_head_dim=32,
                                  num_attention_heads=F2_HEADS, joint_attention_dim=ctx,
                                  axes_dims_rope=F2_AXES, guidance_embeds=guidance)
    return randomize_(net, seed=seed, std=0.1).eval()


# --- a whole tiny klein: network, FLUX.2 VAE, Qwen3 (28 layers: hidden states 9/18/27), tokenizer ----

QWEN_WIDTH = 32


def flux2_parts(seed: int = 0, levels: int = 2) -> dict:
    """`levels`: the VAE's resolutions (2: images halved; 4: the released 1/8, so ComfyUI's 1/16
    latent nodes fit)."""
    from diffusers import AutoencoderKLFlux2

    from opensd.models.qwen3 import Qwen3Config
    from qwen_fixtures import build_tokenizer, hf_qwen3
    tok = build_tokenizer()
    qwen = Qwen3Config(vocab_size=tok.get_vocab_size(), hidden_size=QWEN_WIDTH, intermediate_size=48,
                       num_hidden_layers=28, num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    vae = AutoencoderKLFlux2(down_block_types=("DownEncoderBlock2D",) * levels,
                             up_block_types=("UpDecoderBlock2D",) * levels,
                             block_out_channels=(32, 64, 32, 32)[:levels], layers_per_block=1, latent_channels=32)
    randomize_(vae, seed=seed + 1)
    g = torch.Generator().manual_seed(seed + 2)
    vae.bn.running_mean.copy_(torch.randn(vae.bn.running_mean.shape, generator=g) * 0.3)
    vae.bn.running_var.copy_(torch.rand(vae.bn.running_var.shape, generator=g) + 0.5)
    return {"transformer": flux2_transformer(seed, ctx=3 * QWEN_WIDTH), "vae": vae.eval(),
            "text_encoder": hf_qwen3(qwen, seed + 3), "tokenizer": tok}


def write_flux2_folder(root: Path, parts: dict, distilled: bool = True) -> Path:
    """A Flux2KleinPipeline folder (model_index.json with is_distilled, transformer/, vae/,
    text_encoder/, tokenizer/)."""
    from qwen_fixtures import QWEN3_TEMPLATE_PARTS, write_folder
    root.mkdir(parents=True, exist_ok=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": "Flux2KleinPipeline",
                                                       "is_distilled": distilled}), encoding="utf-8")
    for name in ("transformer", "vae", "text_encoder"):
        parts[name].save_pretrained(root / name)
    write_folder(root / "tokenizer", parts["tokenizer"], template=QWEN3_TEMPLATE_PARTS)
    return root


def write_split(model, files: dict, prefixes: tuple[str, ...], edit=None) -> dict[str, Path]:
    """Our loaded model's parts under `prefixes` as the single files `files` (name -> path), each
    without its prefix; `edit(name, tensors)` may change a part before it is written."""
    from opensd.checkpoints.files import save_safetensors
    sd = model.state_dict()
    for (name, path), prefix in zip(files.items(), prefixes):
        path.parent.mkdir(parents=True, exist_ok=True)
        part = {k[len(prefix):]: v.contiguous() for k, v in sd.items() if k.startswith(prefix)}
        save_safetensors(edit(name, part) if edit else part, path)
    return files


def write_flux2_split_files(models: Path, model, tokenizer) -> dict[str, Path]:
    """ComfyUI's layout of our loaded model: diffusion_models/flux-2-klein-4b.safetensors (BFL's keys),
    text_encoders/qwen_3_4b.safetensors (`model.*`), vae/flux2-vae.safetensors, and the tokenizer
    in text_encoders/qwen_tokenizer/."""
    from opensd.checkpoints import detect_dit as DD
    from qwen_fixtures import QWEN3_TEMPLATE_PARTS, write_folder
    files = {"unet": models / "diffusion_models" / "flux-2-klein-4b.safetensors",
             "qwen3": models / "text_encoders" / "qwen_3_4b.safetensors",
             "vae": models / "vae" / "flux2-vae.safetensors"}
    write_split(model, files, (DD.NET, DD.QWEN3, "first_stage_model."))
    write_folder(models / "text_encoders" / "qwen_tokenizer", tokenizer, template=QWEN3_TEMPLATE_PARTS)
    return files


def klein_models(tmp: Path, seed: int = 0, sd: str | None = None):
    """(models folder, pipeline): a tiny klein loaded from its Flux2KleinPipeline folder, and ComfyUI's
    models folder of its split files (write_flux2_split_files), as a server finds it; with `sd`, a
    tiny random Stable Diffusion checkpoint of that name in checkpoints/ beside it."""
    from opensd.library.synthetic import write_random_checkpoint
    from opensd.pipeline.pipeline import load
    parts = flux2_parts(seed=seed)
    pipe = load(write_flux2_folder(tmp / "folder", parts), precision="fp32", device="cpu")
    models = tmp / "models"
    write_flux2_split_files(models, pipe.model, parts["tokenizer"])
    if sd is not None:
        (models / "checkpoints").mkdir()
        write_random_checkpoint(models / "checkpoints" / sd)
    return models, pipe


def compare_to_pipeline(seen: dict, ours_image, ref, noise, **kwargs) -> None:
    """Our run (`seen`: dit_fixtures.spy_euler's record, `ours_image` its picture) against the diffusers
    pipeline `ref` called with `kwargs` from the same `noise`: the sigmas, every step's latents and
    the pixels (within one 8-bit level)."""
    import numpy as np

    from reference import assert_close_scaled
    steps = []

    def on_step_end(p, i, t, kw):
        steps.append(kw["latents"].clone())
        return {}

    with torch.no_grad():
        want = ref(latents=noise, output_type="np", callback_on_step_end=on_step_end, **kwargs).images[0]
    torch.testing.assert_close(seen["sigmas"], ref.scheduler.sigmas.float(), rtol=2e-6, atol=1e-6)
    assert len(seen["steps"]) == len(steps) == kwargs["num_inference_steps"]
    for got, expected in zip(seen["steps"], steps):
        assert_close_scaled(got.flatten(2).transpose(1, 2), expected, rel=1e-4)
    ours_8bit, ref_8bit = np.asarray(ours_image).astype(int), np.round(want * 255).astype(int)
    assert np.abs(ours_8bit - ref_8bit).max() <= 1 and ref_8bit.std() > 1
