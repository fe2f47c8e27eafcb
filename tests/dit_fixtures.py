"""Tiny random SD3- and Flux-shaped models, built by diffusers and transformers themselves, and
written in the layouts people have them in: a diffusers folder, an original single file (with or
without its text encoders), and ComfyUI's split files (diffusion_models/, text_encoders/, vae/).

The T5 vocabulary is a SentencePiece model trained here in well under a second (T5's ids: 0 pad,
1 end of text, 2 unknown); CLIP uses the real CLIP vocabulary (test_tokenizer._hf_vocab_files).
"""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import sentencepiece
import torch
import transformers
from diffusers import AutoencoderKL, ChromaTransformer2DModel, FluxTransformer2DModel, SD3Transformer2DModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from opensd.checkpoints import detect_dit as DD
from opensd.checkpoints.files import save_safetensors
from reference import randomize_
from test_tokenizer import _hf_vocab_files

VOCAB = 49408
T5_VOCAB = 96
CORPUS = ["a photo of a cat sitting on a red chair", "the quick brown fox jumps over the lazy dog",
          "A lighthouse at dusk, oil painting, highly detailed", "portrait of an astronaut riding a horse",
          "blurry, lowres, bad anatomy", "numbers 1234567890 and signs"] * 4
SD3_HEAD, FLUX_HEAD, FLUX_AXES = 16, 16, (4, 6, 6)


def spiece_model() -> bytes:
    buf = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=buf, vocab_size=T5_VOCAB, model_type="unigram",
        hard_vocab_limit=False, character_coverage=1.0, minloglevel=2, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        normalization_rule_name="nmt_nfkc")
    return buf.getvalue()


def _clip(width: int, act: str, projection: int | None, seed: int):
    cfg = CLIPTextConfig(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2, num_attention_heads=1,
                         hidden_act=act, max_position_embeddings=77, vocab_size=VOCAB, bos_token_id=49406,
                         eos_token_id=49407, pad_token_id=49407, projection_dim=projection or width)
    model = CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)
    return randomize_(model, seed=seed, std=0.1).eval()


def _t5(seed: int) -> T5EncoderModel:
    torch.manual_seed(seed)
    model = T5EncoderModel(T5Config(vocab_size=T5_VOCAB, d_model=128, d_kv=16, d_ff=96, num_layers=2, num_heads=4,
                                    feed_forward_proj="gated-gelu", dropout_rate=0.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif "relative_attention_bias" in name:
                p.copy_(torch.randn_like(p))
    return model.eval()


def _vae(family: str, seed: int) -> AutoencoderKL:
    scale, shift = (1.5305, 0.0609) if family == "sd3" else (0.3611, 0.1159)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(32, 32, 32, 32), layers_per_block=1,
                        latent_channels=16, norm_num_groups=32, sample_size=32, use_quant_conv=False,
                        use_post_quant_conv=False, scaling_factor=scale, shift_factor=shift)
    return randomize_(vae, seed=seed, std=0.05).eval()


def sd3_parts(variant: str = "sd3", seed: int = 0) -> dict:
    """diffusers/transformers modules of a tiny SD3 (variant "sd35": QK norm and MMDiT-X blocks)."""
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=SD3_HEAD,
        num_attention_heads=2, joint_attention_dim=128, caption_projection_dim=2 * SD3_HEAD,
        pooled_projection_dim=32 + 64, out_channels=16, pos_embed_max_size=16,
        dual_attention_layers=(0,) if variant == "sd35" else (), qk_norm="rms_norm" if variant == "sd35" else None)
    transformer = randomize_(transformer, seed=seed, std=0.1).eval()
    return {"transformer": transformer, "vae": _vae("sd3", seed + 1),
            "text_encoder": _clip(32, "quick_gelu", 32, seed + 2), "text_encoder_2": _clip(64, "gelu", 64, seed + 3),
            "text_encoder_3": _t5(seed + 4)}


def flux_parts(variant: str = "dev", seed: int = 0) -> dict:
    """variant "dev", "schnell" or "fill" (dev with Fill's 384 input features)."""
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=384 if variant == "fill" else 64, out_channels=64, num_layers=2, num_single_layers=2,
        attention_head_dim=FLUX_HEAD,
        num_attention_heads=2, joint_attention_dim=128, pooled_projection_dim=32,
        guidance_embeds=variant != "schnell", axes_dims_rope=FLUX_AXES)
    transformer = randomize_(transformer, seed=seed, std=0.1).eval()
    return {"transformer": transformer, "vae": _vae("flux", seed + 1),
            "text_encoder": _clip(32, "quick_gelu", None, seed + 2), "text_encoder_2": _t5(seed + 4)}


def chroma_transformer(seed: int = 0) -> ChromaTransformer2DModel:
    """A tiny random ChromaTransformer2DModel (2 double, 3 single blocks, a 2-layer approximator)."""
    net = ChromaTransformer2DModel(patch_size=1, in_channels=64, num_layers=2, num_single_layers=3,
                                   attention_head_dim=FLUX_HEAD, num_attention_heads=2, joint_attention_dim=128,
                                   axes_dims_rope=FLUX_AXES, approximator_num_channels=16,
                                   approximator_hidden_dim=48, approximator_layers=2)
    return randomize_(net, seed=seed, std=0.1).eval()


def chroma_parts(seed: int = 0) -> dict:
    return {"transformer": chroma_transformer(seed), "vae": _vae("flux", seed + 1), "text_encoder": _t5(seed + 4)}


def write_diffusers_folder(root: Path, family: str, parts: dict, pipeline: str | None = None) -> Path:
    """The folder as diffusers lays it out (model_index.json naming `pipeline`, by default the
    family's text-to-image one; one folder per component; the tokenizers)."""
    root.mkdir(parents=True, exist_ok=True)
    name = pipeline or {"sd3": "StableDiffusion3Pipeline", "chroma": "ChromaPipeline"}.get(family, "FluxPipeline")
    (root / "model_index.json").write_text(json.dumps({"_class_name": name}), encoding="utf-8")
    for component, module in parts.items():
        module.save_pretrained(root / component)
    vocab = root / {"sd3": "tokenizer_3", "chroma": "tokenizer"}.get(family, "tokenizer_2")
    vocab.mkdir(exist_ok=True)
    (vocab / "spiece.model").write_bytes(spiece_model())
    return root


def flux_pair(root: Path, variant: str, pipeline_class, scheduler):
    """Our fp32 CPU pipeline of tiny random Flux `variant` parts, loaded from a diffusers folder that
    names `pipeline_class`, and that diffusers pipeline on the same parts: (ours, reference)."""
    from opensd.pipeline.pipeline import load
    parts = flux_parts(variant)
    ours = load(write_diffusers_folder(root / "model", "flux", parts, pipeline_class.__name__), precision="fp32",
                device="cpu")
    tok = hf_tokenizers(root)
    ref = pipeline_class(scheduler=scheduler, vae=parts["vae"], text_encoder=parts["text_encoder"],
                         tokenizer=tok["clip"], text_encoder_2=parts["text_encoder_2"], tokenizer_2=tok["t5"],
                         transformer=parts["transformer"])
    ref.set_progress_bar_config(disable=True)
    return ours, ref


def load_tiny(folder: Path, family: str, parts: dict):
    """Our fp32 CPU pipeline of `parts` written as a diffusers folder at `folder`."""
    from opensd.pipeline.pipeline import load
    return load(write_diffusers_folder(folder, family, parts), precision="fp32", device="cpu")


def hf_tokenizers(root: Path) -> dict:
    """The tokenizers diffusers' pipelines take: CLIP (EOS padding), CLIP-G (pads with "!", id 0) and T5."""
    clip_dir = root / "clip_vocab"
    clip_dir.mkdir(parents=True, exist_ok=True)
    _hf_vocab_files(clip_dir)
    t5_dir = root / "t5_vocab"
    t5_dir.mkdir(exist_ok=True)
    (t5_dir / "spiece.model").write_bytes(spiece_model())
    clip = transformers.CLIPTokenizer.from_pretrained(str(clip_dir), model_max_length=77)
    clip_g = transformers.CLIPTokenizer.from_pretrained(str(clip_dir), model_max_length=77, pad_token="!")
    return {"clip": clip, "clip_g": clip_g, "t5": transformers.T5Tokenizer.from_pretrained(str(t5_dir))}


def write_single_file(path: Path, model, metadata: dict, encoders: bool = True) -> Path:
    """Our loaded model's state dict as the original single file (without text encoders if asked),
    with the T5 vocabulary beside it."""
    sd = {k: v.contiguous() for k, v in model.state_dict().items() if encoders or not k.startswith(DD.TEXT)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(sd, path, metadata)
    (path.parent / "spiece.model").write_bytes(spiece_model())
    return path


def write_split_files(models: Path, model, name: str, metadata: dict, file_prefix: str = "") -> dict[str, Path]:
    """ComfyUI's layout: diffusion_models/<name>.safetensors (the network, bare original keys),
    text_encoders/clip_l.safetensors, clip_g.safetensors, t5xxl_fp16.safetensors (transformers'
    names, as ComfyUI's files are; `file_prefix` before their names) with spiece.model beside them,
    vae/<name>_vae.safetensors."""
    sd = model.state_dict()
    out = {}
    for folder in ("diffusion_models", "text_encoders", "vae"):
        (models / folder).mkdir(parents=True, exist_ok=True)
    out["unet"] = models / "diffusion_models" / f"{name}.safetensors"
    save_safetensors({k[len(DD.NET):]: v.contiguous() for k, v in sd.items() if k.startswith(DD.NET)}, out["unet"],
                     metadata)
    for enc, prefix in (("clip_l", DD.CLIP_L), ("clip_g", DD.CLIP_G), ("t5xxl_fp16", DD.T5)):
        part = {k[len(prefix):]: v.contiguous() for k, v in sd.items() if k.startswith(prefix)}
        if part:
            out[enc] = models / "text_encoders" / f"{file_prefix}{enc}.safetensors"
            save_safetensors(part, out[enc])
    (models / "text_encoders" / "spiece.model").write_bytes(spiece_model())
    out["vae"] = models / "vae" / f"{name}_vae.safetensors"
    save_safetensors({k[len("first_stage_model."):]: v.contiguous() for k, v in sd.items()
                      if k.startswith("first_stage_model.")}, out["vae"])
    return out


def write_forge_folder(models: Path, staging: Path, model, name: str, metadata: dict) -> dict[str, Path]:
    """The network alone in A1111/Forge's Stable-diffusion/, its VAE in VAE/ and its text encoders with
    the T5 vocabulary in text_encoder/ (written as ComfyUI's split files under `staging` first)."""
    split = write_split_files(staging, model, name, metadata)
    folders = {"unet": "Stable-diffusion", "vae": "VAE", "clip_l": "text_encoder", "t5xxl_fp16": "text_encoder"}
    for part, path in split.items():
        (models / folders[part]).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, models / folders[part] / path.name)
    shutil.copy(staging / "text_encoders" / "spiece.model", models / "text_encoder" / "spiece.model")
    return split


META_SD3 = {DD.META_HEAD_DIM: str(SD3_HEAD), "modelspec.resolution": "32x32"}
META_FLUX = {DD.META_HEAD_DIM: str(FLUX_HEAD), DD.META_AXES: ",".join(map(str, FLUX_AXES)),
             "modelspec.resolution": "32x32"}


def assert_same_pixels(got, want) -> None:
    """The same weights loaded from another file make the same image; CPUs without AVX-512 may round
    a handful of values differently (seen: 3 of 12288 by one level), so allow that and no more."""
    import numpy as np
    got, want = np.asarray(got).astype(int), np.asarray(want).astype(int)
    assert got.shape == want.shape and want.std() > 1
    diff = np.abs(got - want)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.005, f"max {diff.max()}, {(diff > 0).mean():.2%} of values differ"


def spy_euler(monkeypatch) -> dict:
    """Our Euler sampler, watched: the returned dict gets its "sigmas" and each step's latent ("steps")."""
    from opensd.sampling import samplers as S
    seen, euler = {}, S.SAMPLERS["euler"]

    def spy(denoise, x, sigmas, callback=None, **kwargs):
        seen["sigmas"] = sigmas.clone()

        def step(i, xi, denoised):
            seen.setdefault("steps", []).append(xi.clone())
            callback(i, xi, denoised)
        return euler(denoise, x, sigmas, step, **kwargs)

    monkeypatch.setitem(S.SAMPLERS, "euler", spy)
    return seen


def packed_reference_run(ref, pipe, size: int, seed: int, **call) -> tuple:
    """diffusers' Flux-style pipeline `ref` from our seed's noise (packed as it packs latents): its
    image and each step's latent, unpacked."""
    noise = pipe.noise([seed], size // 8, size // 8)
    packed = type(ref)._pack_latents(noise, 1, 16, size // 8, size // 8)
    steps = []

    def on_step_end(p, i, t, kwargs):
        steps.append(type(ref)._unpack_latents(kwargs["latents"].clone(), size, size, ref.vae_scale_factor))
        return {}

    with torch.no_grad():
        out = ref(height=size, width=size, latents=packed, output_type="np", callback_on_step_end=on_step_end, **call)
    return out.images[0], steps


def a1111_txt2img_from_checkpoints(models: Path, network_file: str, request: dict, outputs: Path):
    """The A1111 API's txt2img with `request` on the network `models`/diffusion_models/`network_file`
    copied into checkpoints/ (sd_model_checkpoint naming it): (the image, its infotext)."""
    import base64

    from fastapi.testclient import TestClient
    from PIL import Image
    from server_live import BASE

    from opensd.server.app import create_app
    from opensd.server.settings import Settings
    (models / "checkpoints").mkdir(exist_ok=True)
    shutil.copyfile(models / "diffusion_models" / network_file, models / "checkpoints" / network_file)
    request = {**request, "override_settings": {"sd_model_checkpoint": network_file}}
    with TestClient(create_app(Settings(models_dir=models, outputs_dir=outputs)), base_url=BASE) as client:
        r = client.post("/sdapi/v1/txt2img", json=request)
    assert r.status_code == 200, r.text
    image = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))
    return image, json.loads(r.json()["info"])["infotexts"][0]
