"""Turn a checkpoint path (single file or diffusers folder) into a ready model of its family.

checkpoints/ gives state dicts; the families (families/) say whose they are and build the modules.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
import yaml

from torch import nn

from .. import families
from ..checkpoints import detect as D
from ..checkpoints import markers
from ..checkpoints.diffusers_folder import is_diffusers_folder, read_index
from ..checkpoints.files import read_metadata, read_state_dict
from ..checkpoints.keymap_qwen_vae import is_qwen_vae, qwen_vae_state_dict
from ..checkpoints.keymap_vae import vae_from_diffusers
from ..checkpoints.part_files import VAE_PARTS, find_parts
from ..checkpoints.reader import declared_vae_scaling, fix_vae
from ..errors import CheckpointError
from ..families.base import Family
from ..models import config as C
from .ram_fit import check_fits
from .weights import assign

log = logging.getLogger(__name__)

# Keys real checkpoints carry that no module consumes: the training-time diffusion buffers
# (alphas_cumprod is read separately as the noise schedule), EMA copies, the VAE's training loss,
# the text encoder's position-id buffer that older transformers versions saved, and the marker
# tensors that say what the model predicts (checkpoints/markers.py).
_IGNORED = re.compile(
    r"^(betas|alphas_cumprod|alphas_cumprod_prev|sqrt_\w+|log_one_minus_alphas_cumprod|posterior_\w+"
    r"|logvar|lvlb_weights|model_ema\..*|first_stage_model\.loss\..*|.*\.position_ids"
    + "".join("|" + re.escape(k) for k in markers.KEYS) + ")$")


@dataclass
class LoadedModel:
    path: Path
    config: C.ModelConfig           # or another family's config (models/config_dit.py)
    model: nn.Module                # the whole model; its family (families/) knows its parts
    alphas_cumprod: torch.Tensor | None = None
    unknown_keys: list[str] = field(default_factory=list)  # in the file, used by nothing, not known extras
    tokenizers: dict = field(default_factory=dict)  # the model's own tokenizers beyond CLIP's ("t5")
    part_paths: list[Path] = field(default_factory=list)  # separate files it was assembled from


def load_model(path, *, vae=None, prediction: C.Prediction | None = None,
               dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
               vae_dtype: torch.dtype | None = None,
               dtypes: Callable[[C.ModelConfig], tuple[torch.dtype, torch.dtype]] | None = None,
               text_encoders=(), runs_on: str | torch.device | None = None) -> LoadedModel:
    """Load a checkpoint file or diffusers folder; `vae` optionally replaces its VAE and
    `text_encoders` (files) add or replace text encoders, for families whose models come in parts
    (SD3, Flux: a network file, text_encoders/clip_l, clip_g, t5xxl, a VAE).

    `prediction` overrides eps/v where the file cannot tell (SD2 768-v vs 512-base).
    The VAE is cast to `vae_dtype` (default: `dtype`); `dtypes`, if given, picks (dtype, vae_dtype)
    from the file's config before any tensor is cast (--precision auto depends on the model's size).
    `runs_on`: the device the model will run on, where it is not `device` (CUDA, the weights staged in
    RAM first): a model to run on the CPU must fit its RAM (ram_fit.py).
    """
    path = Path(path)
    prediction = prediction or _sidecar_prediction(path)
    family, sd, metadata, cfg = read_model(path, prediction)
    declared = prediction or D.declared_prediction(sd, metadata)  # before building takes tensors out of sd
    text_encoders, vae = _with_found_parts(family, sd, path, list(text_encoders), vae)
    parts = [Path(p) for p in text_encoders]
    if parts:
        sd.update(family.encoder_tensors(parts))
        family, cfg = families.detect({k: tuple(v.shape) for k, v in sd.items()}, metadata, str(path), prediction)
    if vae is not None:
        parts.append(Path(vae))
        vae_sd, declared = read_vae(vae)
        own = any(k.startswith(D.VAE) for k in sd)
        sd = {k: v for k, v in sd.items() if not k.startswith(D.VAE)}
        sd.update({D.VAE + k: v for k, v in vae_sd.items()})
        if own:
            cfg = _with_vae_of(cfg, sd, vae, declared)
        else:  # a network alone (SD3, Flux): the VAE given is the model's VAE
            family, cfg = families.detect({k: tuple(v.shape) for k, v in sd.items()}, metadata, str(path), prediction)
    family.check_complete(cfg, {k: tuple(v.shape) for k, v in sd.items()}, path)
    if dtypes is not None:
        dtype, vae_dtype = dtypes(cfg)
    model, unknown = build(cfg, sd, path, dtype, device, vae_dtype, runs_on)
    alphas = sd.get("alphas_cumprod")
    if alphas is not None and alphas.ndim != 1:
        alphas = None
    loaded = LoadedModel(path, cfg, model, alphas.float() if alphas is not None else None, unknown, part_paths=parts)
    family.finish(loaded, declared)
    return loaded


def _with_found_parts(family: Family, sd, path: Path, text_encoders: list, vae):
    """A model without parts it needs (SD3's and Flux's text encoders and VAE kept apart) takes them
    from the models folder it sits in, unless the caller gave them."""
    wanted = [p for p in family.missing_parts({k: tuple(v.shape) for k, v in sd.items()})
              if (p in VAE_PARTS and vae is None) or (p not in VAE_PARTS and not text_encoders)]
    found = find_parts(path, wanted) if wanted and path.is_file() else {}
    for part, file in found.items():
        log.info("%s: using %s as its %s", path.name, file, part)
    encoders = [file for part, file in found.items() if part not in VAE_PARTS]
    return text_encoders + encoders, next((file for part, file in found.items() if part in VAE_PARTS), vae)


def read_model(path: Path, prediction: C.Prediction | None = None
               ) -> tuple[Family, dict[str, torch.Tensor], dict[str, str], object]:
    """(family, original-layout state dict, metadata, config) of a single file or diffusers folder."""
    if is_diffusers_folder(path):
        try:
            family, sd, metadata = families.read_folder(path, read_index(path))
        except ValueError as e:
            raise CheckpointError(path, str(e)) from None
    else:
        sd, metadata = read_state_dict(path, keep_quantized=True), read_metadata(path)
    metadata = {**metadata, **markers.marker_metadata(sd)}  # the EDM bounds its marker tensors hold
    sd = fix_vae(sd)
    found, cfg = families.detect({k: tuple(v.shape) for k, v in sd.items()}, metadata, str(path), prediction)
    return found, found.canonical(sd, cfg), metadata, cfg


def build(cfg, sd: dict[str, torch.Tensor], path, dtype, device, vae_dtype: torch.dtype | None = None,
          runs_on=None) -> tuple[nn.Module, list[str]]:
    """Instantiate on the meta device and move the file's tensors in one at a time (weights.assign,
    which takes them out of `sd`): no random init, no double copy."""
    family = families.family_of(cfg)
    with torch.device("meta"):
        model = family.build(cfg)
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    if missing:
        raise CheckpointError(path, f"{len(missing)} weights missing for a {cfg.family} model, "
                                    f"e.g. {', '.join(missing[:3])} (truncated or incompatible file?)")
    wrong = [f"{k} {tuple(sd[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
             if tuple(sd[k].shape) != tuple(v.shape)]
    if wrong:
        raise CheckpointError(path, f"{len(wrong)} weights have unexpected shapes, e.g. {wrong[0]}")
    unused = [k for k in sd if k not in expected]
    unknown = [k for k in unused if not _IGNORED.match(k)]
    if unknown:
        log.warning("%s: %d keys not used by a %s model, e.g. %s", path, len(unknown), cfg.family,
                    ", ".join(unknown[:3]))
    vae_dtype = vae_dtype or dtype
    check_fits((sd[k] for k in expected), path, device if runs_on is None else runs_on, family.smaller_files)
    assign(model, sd, list(expected), lambda k: family.weight_dtype(k, dtype, vae_dtype), device, family.keeps_stored)
    leftover = [n for n, b in model.named_buffers() if b.is_meta]
    if leftover:  # a model registered a buffer that is not in the file: a bug in models/, not the file
        raise RuntimeError(f"buffers left uninitialised after loading: {leftover[:3]}")
    return model.eval().requires_grad_(False), unknown


def read_vae(path) -> tuple[dict[str, torch.Tensor], float | None]:
    """A standalone VAE file (original layout, with or without prefix, or diffusers naming) in
    original names without the `first_stage_model.` prefix, and the scaling factor it declares."""
    path = Path(path)
    sd = read_state_dict(path)
    declared = declared_vae_scaling(path, sd)
    if any(k.startswith(D.VAE) for k in sd):
        sd = {k[len(D.VAE):]: v for k, v in sd.items() if k.startswith(D.VAE)}
    sd = {k: v for k, v in sd.items() if not k.startswith(("loss.", "model_ema."))}
    if is_qwen_vae(sd):  # Qwen-Image's (Wan 2.1's) VAE, either layout: our names and 2-D shapes
        return qwen_vae_state_dict(sd), declared
    if "encoder.down_blocks.0.resnets.0.conv1.weight" in sd:  # diffusers naming
        try:
            sd = vae_from_diffusers(sd, _diffusers_vae_config(sd))
        except KeyError as e:
            raise CheckpointError(path, f"not a VAE we can read: {e.args[0]}") from None
    if "encoder.conv_in.weight" not in sd or "decoder.conv_in.weight" not in sd:
        raise CheckpointError(path, "not a VAE: no encoder.conv_in / decoder.conv_in weights")
    return fix_vae({D.VAE + k: v for k, v in sd.items()}, strip=True), declared


def _diffusers_vae_config(sd: dict[str, torch.Tensor]) -> C.VAEConfig:
    """Shapes of a diffusers-named VAE -> its config (a bare file has no config.json beside it)."""
    ch = sd["encoder.conv_in.weight"].shape[0]
    levels = sorted({int(k.split(".")[2]) for k in sd if k.startswith("encoder.down_blocks.")})
    res = {k.split(".")[4] for k in sd if k.startswith("encoder.down_blocks.0.resnets.")}
    return C.VAEConfig(
        ch=ch, ch_mult=tuple(sd[f"encoder.down_blocks.{i}.resnets.0.conv2.weight"].shape[0] // ch for i in levels),
        num_res_blocks=len(res), z_channels=sd["encoder.conv_out.weight"].shape[0] // 2,
        embed_dim=sd["encoder.conv_out.weight"].shape[0] // 2, use_quant_conv="quant_conv.weight" in sd,
        latent_batch_norm="bn.running_mean" in sd)


# Latent scaling factors of the released VAE families, to name them in a warning.
_SCALING_NAMES = {0.18215: "SD1.x/SD2.x's", 0.13025: "SDXL's"}


def _named_scaling(x: float) -> str:
    return next((f"{x:g} ({n})" for k, n in _SCALING_NAMES.items() if math.isclose(x, k, rel_tol=1e-3)), f"{x:g}")


def _with_vae_of(cfg: C.ModelConfig, sd, vae_path, declared: float | None) -> C.ModelConfig:
    """The model's config with the VAE of `vae_path`: refused when its shapes cannot work with the
    UNet's latents, a warning when it declares another latent scale (another family's latent space)."""
    shapes = {k: tuple(v.shape) for k, v in sd.items() if k.startswith(D.VAE)}
    new, old = D.infer_vae(shapes, D.VAE, str(vae_path)), cfg.vae
    if new.embed_dim != old.embed_dim:
        raise CheckpointError(vae_path, f"VAE has {new.embed_dim} latent channels, the model expects "
                                        f"{old.embed_dim} (a VAE for another model family?)")
    if new.downscale != old.downscale:
        raise CheckpointError(vae_path, f"VAE downscales images {new.downscale}x, the model's latents are "
                                        f"{old.downscale}x smaller than the image (a VAE for another model family?)")
    if (new.in_channels, new.out_ch) != (old.in_channels, old.out_ch):
        raise CheckpointError(vae_path, f"VAE reads {new.in_channels} and writes {new.out_ch} image channels, "
                                        f"the model's VAE {old.in_channels} and {old.out_ch}")
    if declared is not None and not math.isclose(declared, old.scaling_factor, rel_tol=1e-3):
        log.warning("%s: this VAE was made for a latent scaling factor of %s but the model uses %s: its latents "
                    "are another space, so images will likely come out wrong; use a VAE made for this model",
                    vae_path, _named_scaling(declared), _named_scaling(old.scaling_factor))
    return replace(cfg, vae=replace(new, scaling_factor=old.scaling_factor, shift_factor=old.shift_factor,
                                    latents_mean=old.latents_mean, latents_std=old.latents_std))


def _sidecar_prediction(path: Path) -> C.Prediction | None:
    """A1111's convention: `model.yaml` beside `model.safetensors` carries the LDM config, whose
    `parameterization: "v"` marks v-prediction. Parsed with safe_load only."""
    yaml_path = path.with_suffix(".yaml")
    if path.is_dir() or not yaml_path.is_file():
        return None
    try:
        doc = yaml.safe_load(yaml_path.read_text(encoding="utf-8")) or {}
        params = doc.get("model", {}).get("params", {})
    except (yaml.YAMLError, AttributeError, UnicodeDecodeError):
        log.warning("%s: unreadable sidecar config, ignored", yaml_path)
        return None
    return "v" if params.get("parameterization") == "v" else "eps"
