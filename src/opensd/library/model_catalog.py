"""What the web UI's Models tab shows about each model file, read from headers only (no weights
loaded): its family, a one-line description, its size, its safetensors metadata (kohya's ss_*
training tags, modelspec.*) and its hash as AUTOMATIC1111 writes it in infotexts.

Families use the checkpoint families' ids (sd1, sd2, sdxl, sdxl_refiner, small); None when the
file does not say (a bare VAE is the same for SD1 and SDXL; a pickle says nothing until loaded).
Hashes are never computed while listing (a folder of 6 GB checkpoints would take minutes): the
listing shows the cached ones and `file_hash` computes one on request, cached for later.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..checkpoints import detect as D
from ..checkpoints.controlnet_files import PREFIX as CONTROL_PREFIX
from ..checkpoints.controlnet_files import describe_control_lora, detect_controlnet, is_control_lora
from ..checkpoints.z_image_controlnet_files import describe_z_image_controlnet, is_z_image_controlnet
from ..checkpoints.qwen_image_controlnet_files import (describe_qwen_image_blockwise, describe_qwen_image_controlnet,
                                                       is_qwen_image_blockwise, is_qwen_image_controlnet)
from ..checkpoints.flux_controlnet_files import (describe_flux_controlnet, describe_sd3_controlnet, is_flux_controlnet,
                                                 is_sd3_controlnet, other_dit_controlnet)
from ..checkpoints.t2i_adapter_files import detect_t2i_adapter, from_diffusers, is_t2i_adapter
from ..checkpoints.xlabs_controlnet_files import describe_xlabs_controlnet, is_xlabs_controlnet
from ..checkpoints.files import read_safetensors_header, sniff_format
from ..checkpoints.keymap_qwen_vae import is_qwen_vae, qwen_vae_config
from ..adapters.dit_control_mask import file_takes_mask
from ..adapters.lora_family import dit_family
from ..errors import OpenSDError
from ..models import config as C
from ..text.embeddings import load_embedding
from ..training.dit_lora import BASE_VERSION as DIT_BASE_VERSION
from ..training.lora_train import BASE_VERSION
from .hashes import default_cache, embedding_hash, lora_hash, model_hash, shorthash
from .model_info import model_config, schedule_name
from .models_dir import ModelFile

log = logging.getLogger(__name__)

KINDS = ("checkpoints", "vae", "loras", "embeddings", "controlnet")
# the cross-attention width a LoRA's attn2 to_k reads, and a text encoder's token width, per family
_CONTEXT_FAMILY = {C.SD1_UNET.context_dim: "sd1", C.SD2_UNET.context_dim: "sd2",
                   C.SDXL_UNET.context_dim: "sdxl", C.SDXL_REFINER_UNET.context_dim: "sdxl_refiner"}
_TOKEN_FAMILY = {C.CLIP_L.width: "sd1", C.OPENCLIP_H.width: "sd2"}
_KOHYA_FAMILY = {v: k for k, v in (BASE_VERSION | DIT_BASE_VERSION).items()}  # ss_base_model_version -> family


@dataclass
class ModelEntry:
    kind: str
    name: str
    size: int                      # bytes (a diffusers folder: all its files)
    family: str | None = None
    detail: str = ""               # e.g. "512 px, eps" or "rank 8, 64 modules"
    hash: str | None = None        # A1111's short hash, when already computed
    takes_mask: bool = False       # a DiT ControlNet that inpaints from a mask (adapters/dit_control_mask.py)
    metadata: dict[str, str] = field(default_factory=dict)


def size_of(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _header(path: Path) -> tuple[dict, dict[str, str]] | None:
    """(entries, metadata) of a safetensors file, None for other formats."""
    if not path.is_file() or sniff_format(path) != "safetensors":
        return None
    return read_safetensors_header(path)


def _checkpoint(path: Path) -> tuple[str | None, str]:
    cfg = model_config(path)  # any family: a DiT network in the checkpoints folder is one too
    if cfg is None:
        return None, "diffusers folder" if path.is_dir() else ""
    extra = ", inpainting" if cfg.inpainting else ", instruct-pix2pix (edit)" if cfg.edit else ""
    schedule = {"zero_terminal_snr": ", zero terminal SNR", "edm": ", EDM"}.get(schedule_name(cfg), "")
    return cfg.family, f"{cfg.resolution} px, {cfg.prediction}{schedule}{extra}"


def _lora(entries: dict, metadata: dict[str, str]) -> tuple[str | None, str]:
    downs = {k: v["shape"] for k, v in entries.items() if k.endswith((".lora_down.weight", ".lora_A.weight"))}
    ranks = sorted({shape[0] for shape in downs.values()})
    detail = f"rank {'/'.join(map(str, ranks))}, {len(downs)} modules" if downs else "no lora_down/lora_A weights"
    family = _KOHYA_FAMILY.get(metadata.get("ss_base_model_version", ""))
    if family is None:
        widths = [shape[1] for k, shape in downs.items() if "attn2" in k and "to_k" in k]
        family = _CONTEXT_FAMILY.get(widths[0]) if widths else None
    if family is None and any(k.startswith(("lora_te1_", "lora_te2_")) for k in entries):
        family = "sdxl"
    return family or dit_family(entries), detail


def _embedding(path: Path) -> tuple[str | None, str]:
    emb = load_embedding(path)
    if set(emb.vectors) == {"clip_l", "clip_g"}:
        return "sdxl", f"{emb.count} vector(s) for CLIP-L and CLIP-G"
    width = emb.vectors[""].shape[1]
    return _TOKEN_FAMILY.get(width), f"{emb.count} vector(s) of width {width}"


def _controlnet(entries: dict, metadata: dict[str, str], path: Path) -> tuple[str | None, str]:
    shapes = {k.removeprefix(CONTROL_PREFIX): tuple(v["shape"]) for k, v in entries.items()}
    if is_control_lora(shapes):
        return describe_control_lora(shapes)
    if is_qwen_image_controlnet(shapes):  # before Flux's: InstantX's Qwen files share its telltale
        return "qwen_image", describe_qwen_image_controlnet(shapes)
    if is_qwen_image_blockwise(shapes):
        return "qwen_image", describe_qwen_image_blockwise(shapes)
    if is_flux_controlnet(shapes):
        return "flux", describe_flux_controlnet(shapes)
    if is_xlabs_controlnet(shapes):
        return "flux", describe_xlabs_controlnet(shapes)
    if is_sd3_controlnet(shapes):
        return "sd3", describe_sd3_controlnet(shapes)
    if is_z_image_controlnet(shapes):
        return "z_image", describe_z_image_controlnet(shapes)
    if other_dit_controlnet(shapes) is not None:
        family, what = other_dit_controlnet(shapes)
        return family, f"{what[0].upper()}{what[1:]} (not supported)"
    if is_t2i_adapter(shapes):
        if any(k.startswith("adapter.") for k in shapes):
            shapes = from_diffusers(shapes)
        family, ad = detect_t2i_adapter(shapes, str(path), metadata)
        return family, f"T2I-Adapter ({ad.kind}), {ad.in_channels}-channel hint"
    family, cfg = detect_controlnet(shapes, str(path), metadata)
    return family, f"{cfg.hint_channels}-channel hint"


def _vae(entries: dict) -> str:
    shapes = {k.removeprefix(D.VAE): tuple(v["shape"]) for k, v in entries.items()}
    if is_qwen_vae(shapes):
        try:
            return f"Qwen-Image VAE, {qwen_vae_config(shapes).z_dim} latent channels"
        except OpenSDError:
            return ""
    try:
        vae = D.infer_vae(shapes, "")
    except OpenSDError:
        return ""
    return f"{vae.embed_dim} latent channels"  # SD1's and SDXL's VAEs share every shape


def describe(m: ModelFile) -> ModelEntry:
    """A model file's entry; what cannot be read is left empty (and logged), never raised."""
    entry = ModelEntry(kind=m.kind, name=m.name, size=0, hash=cached_hash(m))
    try:
        entry.size = size_of(m.path)
        header = _header(m.path)
        entries, entry.metadata = header if header is not None else ({}, {})
        if m.kind == "checkpoints":
            entry.family, entry.detail = _checkpoint(m.path)
        elif m.kind == "loras" and header is not None:
            entry.family, entry.detail = _lora(entries, entry.metadata)
        elif m.kind == "embeddings":
            entry.family, entry.detail = _embedding(m.path)
        elif m.kind == "controlnet" and header is not None:
            entry.family, entry.detail = _controlnet(entries, entry.metadata, m.path)
            entry.takes_mask = file_takes_mask(m.path) is True
        elif m.kind == "vae" and header is not None:
            entry.detail = _vae(entries)
        elif m.kind == "hypernetworks":
            entry.family, entry.detail = _hypernetwork(m.path)
    except (OpenSDError, OSError, ValueError, LookupError, ArithmeticError, TypeError) as e:
        # a damaged file's shapes (a 1-D weight where a matrix belongs, a zero width) fail the readers
        # with plain errors; the listing must still answer
        log.info("%s: not described: %s", m.path, e)
        entry.detail = entry.detail or f"unreadable: {getattr(e, 'problem', e)}"  # the entry names the file
    return entry


def _hypernetwork(path) -> tuple[str | None, str]:
    """The family its context width says (1280 is also SD1's self-attention width, so not the
    refiner), and its widths and layers."""
    from ..adapters.hypernetwork import read_hypernetwork
    hn = read_hypernetwork(path)
    s = hn.settings
    family = next((f for w, f in _CONTEXT_FAMILY.items() if w in hn.layers and f != "sdxl_refiner"), None)
    return family, (f"widths {', '.join(map(str, sorted(hn.layers)))}; layers {s.get('layer_structure', [1, 2, 1])}, "
                    f"{s.get('activation_func') or 'linear'}{', layer norm' if s.get('is_layer_norm') else ''}")


def file_hash(m: ModelFile) -> str:
    """A1111's short hash of this kind of file (computed once, then cached): 10 hex digits of the
    SHA-256 for checkpoints, VAEs and ControlNets, 12 of the addnet hash for LoRAs, 12 of the
    SHA-256 for embeddings."""
    if m.kind == "loras":
        return lora_hash(m.path)
    if m.kind == "embeddings":
        return embedding_hash(m.path)
    return model_hash(m.path)


def cached_hash(m: ModelFile) -> str | None:
    """The short hash if the cache already holds it for the file as it is now; None otherwise."""
    if not m.path.is_file():
        return None
    cache = default_cache()
    try:
        if m.kind == "loras" and m.path.suffix.lower() == ".safetensors":
            stored = cache.cached(m.path, "addnet")
            return lora_hash(m.path) if stored is not None else None
        full = cache.cached(m.path)
    except OSError:
        return None
    return None if full is None else shorthash(full, 12 if m.kind in ("loras", "embeddings") else 10)
