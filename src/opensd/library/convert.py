"""Checkpoint format conversion: .ckpt -> .safetensors, diffusers folder <-> single file, pruning
(fp16, EMA-only, dropping training leftovers).

Every conversion reads through ``checkpoints.files`` (no unpickling of code) and the existing key
maps, and writes atomically: a single file with ``save_safetensors``, a folder by building it
beside the target and renaming it into place. Outputs never replace an input, and an existing
output is refused unless ``overwrite=True``.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from ..checkpoints import detect as D
from ..checkpoints import markers, reader
from ..checkpoints.diffusers_folder import is_diffusers_folder
from ..checkpoints.files import save_safetensors
from ..checkpoints.keymap_clip import clip_to_transformers
from ..checkpoints.keymap_unet import unet_to_diffusers
from ..checkpoints.keymap_vae import vae_to_diffusers
from ..errors import InvalidArgument
from ..models import config as C
from ..models.stable_diffusion import SGM_FAMILIES

EMA = "model_ema."
Progress = Callable[[int, int], None]  # (done, total); may raise to stop (nothing is written then)
# Keys that are not part of the model proper: kept in fp32 when halving (the noise schedule).
_SCHEDULE_KEYS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_", "log_one_minus", "posterior_",
                  *markers.KEYS)  # the markers' EDM sigma bounds stay exact too


# --- reading ---------------------------------------------------------------------------------


def read_checkpoint(path) -> tuple[dict[str, torch.Tensor], dict[str, str], C.ModelConfig]:
    """Any checkpoint (single file or diffusers folder) as an original-layout state dict, its
    metadata and detected config."""
    if not Path(path).exists():
        raise InvalidArgument(f"model: {path} does not exist")
    return reader.read_checkpoint(path)


# --- pruning ---------------------------------------------------------------------------------


def _ema_key(key: str) -> str:
    # LDM's LitEma stores "model.diffusion_model.a.b" as buffer "model_ema.diffusion_modelab".
    return EMA + key[len("model."):].replace(".", "")


def prune(sd: dict[str, torch.Tensor], *, half: bool = False, ema_only: bool = False) -> dict[str, torch.Tensor]:
    """Drop the EMA copy (or, with ``ema_only``, use it in place of the trained weights, as A1111's
    EMA-only files do), the VAE's training loss, and optionally halve floats to fp16 (the noise
    schedule stays fp32)."""
    if ema_only and not any(k.startswith(EMA) for k in sd):
        raise InvalidArgument("ema-only: this checkpoint has no EMA weights (no model_ema.* keys)")
    out = {}
    for key, value in sd.items():
        if key.startswith((EMA, D.VAE + "loss.")):
            continue
        if ema_only and key.startswith("model.") and _ema_key(key) in sd:
            value = sd[_ema_key(key)]
        if half and value.is_floating_point() and not key.startswith(_SCHEDULE_KEYS):
            value = value.to(torch.float16)
        out[key] = value
    return out


# --- safe outputs ----------------------------------------------------------------------------


def check_output(output, inputs, overwrite: bool) -> Path:
    """Refuse an output that is (or is inside) an input, or that exists without ``overwrite``."""
    out = Path(output).resolve()
    for src in inputs:
        src = Path(src).resolve()
        if out == src or src in out.parents or out in src.parents:
            raise InvalidArgument(f"output: {output} would overwrite the input {src}")
    if out.exists() and not overwrite:
        raise InvalidArgument(f"output: {output} exists (--overwrite, or overwrite=True, replaces it)")
    if not out.parent.is_dir():
        raise InvalidArgument(f"output: folder {out.parent} does not exist")
    return out


def save_checkpoint(sd: dict[str, torch.Tensor], cfg: C.ModelConfig, output: Path,
                    metadata: dict[str, str] | None = None) -> Path:
    meta = D.metadata_for(cfg) | (metadata or {})
    save_safetensors(sd, output, metadata=meta)
    return output


# --- conversions -----------------------------------------------------------------------------


def convert_to_safetensors(src, output, *, half: bool = False, ema_only: bool = False,
                           overwrite: bool = False, progress: Progress | None = None) -> Path:
    """Any checkpoint (.ckpt/.pt/.safetensors or diffusers folder) -> one original-layout .safetensors.
    `progress` hears the three phases (read, prune, write) start."""
    report = progress or (lambda done, total: None)
    out = check_output(output, [src], overwrite)
    report(0, 3)
    sd, meta, cfg = read_checkpoint(src)
    keep = {k: v for k, v in meta.items() if k.startswith(("modelspec.", "opensd.", "ss_"))}
    report(1, 3)
    sd = prune(sd, half=half, ema_only=ema_only)
    report(2, 3)
    return save_checkpoint(sd, cfg, out, keep)


def convert_to_diffusers(src, output, *, half: bool = False, ema_only: bool = False,
                         overwrite: bool = False, progress: Progress | None = None) -> Path:
    """A checkpoint -> a diffusers folder (unet/, vae/, text_encoder[_2]/, scheduler/, model_index.json)
    whose configs diffusers and transformers load with ``from_pretrained``. `progress` as above."""
    report = progress or (lambda done, total: None)
    out = check_output(output, [src], overwrite)
    report(0, 3)
    sd, _, cfg = read_checkpoint(src)
    if getattr(cfg, "edm", None) is not None:  # diffusers' EDM schedulers are not a folder form we read back
        raise InvalidArgument(f"model: {Path(src).name} is a continuous-time EDM model (CosXL); convert it to "
                              ".safetensors, which keeps its sigma bounds")
    report(1, 3)
    sd = prune(sd, half=half, ema_only=ema_only)
    report(2, 3)
    if out.exists() and not (out.is_dir() and (is_diffusers_folder(out) or not any(out.iterdir()))):
        raise InvalidArgument(f"output: {output} exists and is not a diffusers folder; not replacing it")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _write_diffusers(sd, cfg, tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def _part(sd, prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_diffusers(sd, cfg: C.ModelConfig, root: Path) -> None:
    sdxl = cfg.family in SGM_FAMILIES
    unet = unet_to_diffusers(_part(sd, D.UNET), cfg.unet)
    _write_json(root / "unet" / "config.json", unet_json(cfg))
    save_safetensors(unet, root / "unet" / "diffusion_pytorch_model.safetensors")
    vae = vae_to_diffusers(_part(sd, D.VAE), cfg.vae)
    _write_json(root / "vae" / "config.json", vae_json(cfg))
    save_safetensors(vae, root / "vae" / "diffusion_pytorch_model.safetensors")
    if sdxl:
        prefixes = [f"{D.SGM}{i}.{'transformer.' if e.naming == 'hf' else 'model.'}"
                    for i, e in enumerate(cfg.text_encoders)]
        folders = ["text_encoder", "text_encoder_2"] if len(cfg.text_encoders) == 2 else ["text_encoder_2"]
    else:
        prefixes = [D.LDM_HF if cfg.text_encoders[0].naming == "hf" else D.LDM_OPENCLIP]
        folders = ["text_encoder"]
    for enc, prefix, folder in zip(cfg.text_encoders, prefixes, folders):
        tensors = clip_to_transformers(_part(sd, prefix), enc)
        enc_out = enc
        if cfg.family == "sd2" and enc.naming == "openclip":
            # diffusers' SD2 text encoder stops at the layer SD2 conditions on and has no projection
            keep = enc.layers - enc.skip + 1
            tensors = {k: v for k, v in tensors.items() if k != "text_projection.weight"
                       and not (k.startswith("text_model.encoder.layers.") and int(k.split(".")[3]) >= keep)}
            enc_out = C.TextEncoderConfig(naming="openclip", width=enc.width, layers=keep, heads=enc.heads,
                                          act=enc.act, vocab_size=enc.vocab_size, max_length=enc.max_length)
        _write_json(root / folder / "config.json", text_encoder_json(enc_out, folder == "text_encoder_2"))
        save_safetensors(tensors, root / folder / "model.safetensors")
    _write_json(root / "scheduler" / "scheduler_config.json", {
        "_class_name": "EulerDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "steps_offset": 1,
        "prediction_type": "v_prediction" if cfg.prediction == "v" else "epsilon",
        "rescale_betas_zero_snr": cfg.zsnr, "timestep_spacing": "leading"})
    te_classes = {"text_encoder": ["transformers", "CLIPTextModel"],
                  "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]}
    index = {"unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "scheduler": ["diffusers", "EulerDiscreteScheduler"]}
    for enc, folder in zip(cfg.text_encoders, folders):
        tok = "tokenizer" + folder[len("text_encoder"):]
        _write_tokenizer(root / tok, enc)
        index[folder] = te_classes[folder]
        index[tok] = ["transformers", "CLIPTokenizer"]
    if cfg.family == "sdxl_refiner":
        index.update(_class_name="StableDiffusionXLImg2ImgPipeline", text_encoder=[None, None],
                     tokenizer=[None, None], requires_aesthetics_score=True, force_zeros_for_empty_prompt=False)
    elif sdxl:
        index.update(_class_name="StableDiffusionXLPipeline", force_zeros_for_empty_prompt=True)
    else:
        index.update(_class_name="StableDiffusionPipeline", safety_checker=[None, None],
                     feature_extractor=[None, None], requires_safety_checker=False)
    _write_json(root / "model_index.json", index)


def _write_tokenizer(folder: Path, enc: C.TextEncoderConfig) -> None:
    """transformers' CLIPTokenizer files, built from our own copy of CLIP's BPE merges."""
    from ..text.tokenizer import _read_merges, default_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(default_tokenizer().encoder, ensure_ascii=False),
                                       encoding="utf-8")
    merges = _read_merges(None)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    specials = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
                "pad_token": "!" if enc.pad_token == 0 else "<|endoftext|>"}
    _write_json(folder / "special_tokens_map.json", specials)
    _write_json(folder / "tokenizer_config.json", specials | {
        "tokenizer_class": "CLIPTokenizer", "model_max_length": enc.max_length, "do_lower_case": True,
        "errors": "replace", "add_prefix_space": False})


def unet_json(cfg: C.ModelConfig) -> dict:
    u = cfg.unet
    channels = [u.model_channels * m for m in u.channel_mult]
    layers = [max(d, 1) for d in u.transformer_depth]
    if u.transformer_depth[-1] == 0:  # diffusers reads the middle block's depth from the last level
        layers[-1] = u.transformer_depth_middle
    j = {
        "_class_name": "UNet2DConditionModel", "sample_size": cfg.resolution // cfg.vae.downscale,
        "in_channels": u.in_channels, "out_channels": u.out_channels, "block_out_channels": channels,
        "layers_per_block": u.num_res_blocks, "cross_attention_dim": u.context_dim,
        "down_block_types": ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in u.transformer_depth],
        "up_block_types": ["CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(u.transformer_depth)],
        "attention_head_dim": [u.heads_for(c) for c in channels],  # diffusers' name for a head count
        "use_linear_projection": u.use_linear_in_transformer, "transformer_layers_per_block": layers,
        "norm_num_groups": 32,
    }
    if u.adm_in_channels:
        j.update(addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=u.adm_in_channels)
    return j


def vae_json(cfg: C.ModelConfig) -> dict:
    v = cfg.vae
    n = len(v.ch_mult)
    return {"_class_name": "AutoencoderKL", "in_channels": v.in_channels, "out_channels": v.out_ch,
            "block_out_channels": [v.ch * m for m in v.ch_mult], "layers_per_block": v.num_res_blocks,
            "latent_channels": v.embed_dim, "down_block_types": ["DownEncoderBlock2D"] * n,
            "up_block_types": ["UpDecoderBlock2D"] * n, "norm_num_groups": 32, "sample_size": cfg.resolution,
            "scaling_factor": v.scaling_factor}


def text_encoder_json(enc: C.TextEncoderConfig, with_projection: bool) -> dict:
    j = {"architectures": ["CLIPTextModelWithProjection" if with_projection else "CLIPTextModel"],
         "model_type": "clip_text_model", "hidden_size": enc.width, "intermediate_size": enc.mlp_width,
         "num_hidden_layers": enc.layers, "num_attention_heads": enc.heads,
         "max_position_embeddings": enc.max_length, "vocab_size": enc.vocab_size, "hidden_act": enc.act,
         "layer_norm_eps": 1e-5, "bos_token_id": 49406, "eos_token_id": 49407,
         "pad_token_id": 1 if enc.naming == "openclip" else 49407}
    if with_projection:
        j["projection_dim"] = enc.projection_dim
    return j
