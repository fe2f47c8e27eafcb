"""Find the parts a model file comes without (SD3's, Flux's and Z-Image's text encoders and VAE) in the
models folder it sits in, the way ComfyUI and Forge users keep them: text_encoders/ (or clip/,
text_encoder/) holding clip_l, clip_g, t5xxl and qwen_3_4b files, vae/ (or VAE/) holding the VAE.

Files are told apart by their safetensors headers (no weights read): a T5 encoder by its blocks, a
CLIP by its width (768: CLIP-L, 1280: CLIP-G), a 16-channel VAE by its latent convolution (FLUX.2's
32-channel VAE, with its latent statistics, is a part of its own: "flux2_vae"). Where a
folder holds several candidates, the usual file names win (clip_l, clip_g, t5xxl_fp16 before
t5xxl_fp8, ae for Flux's VAE), then the first by name.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError
from ..stamp_cache import by_stamp
from .files import read_safetensors_header
from .keymap_mistral import is_mistral
from .keymap_qwen25vl import is_qwen25vl
from .keymap_qwen3 import is_qwen3, qwen3_config
from .keymap_qwen_vae import is_qwen_vae

ENCODER_FOLDERS = ("text_encoders", "clip", "text_encoder")
VAE_FOLDERS = ("vae", "VAE")
VAE_PARTS = ("vae", "flux2_vae", "qwen_vae")  # the part kinds that are a model's VAE
_PREFERRED = {"clip_l": ("clip_l",), "clip_g": ("clip_g",), "t5xxl": ("t5xxl_fp16", "t5xxl"),
              "qwen3": ("qwen_3_4b", "qwen3_4b", "qwen"), "qwen25vl": ("qwen_2.5_vl_7b", "qwen_2.5_vl", "qwen"),
              "mistral": ("mistral_3_small_flux2", "mistral"),
              "vae": ("ae", "sd3", "flux"), "flux2_vae": ("flux2", "ae"),
              "qwen_vae": ("qwen_image_vae", "qwen")}


_LABELS = {"clip_l": "CLIP-L text encoder", "clip_g": "CLIP-G text encoder", "t5xxl": "T5-XXL text encoder",
           "qwen3": "Qwen3 text encoder", "qwen25vl": "Qwen2.5-VL-7B text encoder",
           "mistral": "Mistral Small 3.1 text encoder", "vae": "VAE", "flux2_vae": "FLUX.2 VAE",
           "qwen_vae": "Qwen-Image VAE"}
_QWEN3_SIZES = {2560: "Qwen3-4B", 4096: "Qwen3-8B"}


def label(part: str) -> str:
    """A part kind in words: "qwen3:2560" -> "Qwen3-4B text encoder", "flux2_vae" -> "FLUX.2 VAE"."""
    kind, _, width = part.partition(":")
    if kind == "qwen3" and width:
        return f"{_QWEN3_SIZES.get(int(width), f'Qwen3 ({width} wide)')} text encoder"
    return _LABELS.get(kind, part)


def _folders(model: Path, names: tuple[str, ...]) -> list[Path]:
    """Part folders beside the model's folder (models/checkpoints/x -> models/text_encoders/, ...)."""
    out = []
    for base in (model.parent.parent, model.parent.parent.parent):
        out += [base / n for n in names if (base / n).is_dir()]
    return list(dict.fromkeys(out))


def _read_kind(path: Path) -> tuple[str, int] | None:
    """("t5xxl", 0), ("clip", width), ("qwen3", 0) (a Qwen3 decoder: q/k norms, Z-Image's encoder) or
    ("vae", 0) (16 latent channels) or ("flux2_vae", 0) (FLUX.2's: 32 channels and latent statistics) or
    ("qwen_vae", 0) (Qwen-Image's, the Wan 2.1 VAE, either layout) or ("qwen25vl", 0) (Qwen2.5-VL's language
    model, Qwen-Image's text encoder)
    from a safetensors header."""
    try:
        entries, _ = read_safetensors_header(path)
    except (CheckpointError, OSError):
        return None
    shapes = {k: v["shape"] for k, v in entries.items()}
    if any(k.startswith(("encoder.block.", "shared.")) for k in shapes):
        return "t5xxl", 0
    if is_qwen25vl(shapes):  # Qwen-Image's: q/k/v biases, no q/k norms
        return "qwen25vl", 0
    if is_mistral(shapes):  # FLUX.2 [dev]'s: Llama-style, neither biases nor q/k norms
        return "mistral", 0
    if is_qwen3(shapes):
        try:
            return "qwen3", qwen3_config(shapes).hidden_size
        except CheckpointError:
            return "qwen3", 0
    emb = shapes.get("text_model.embeddings.token_embedding.weight")
    if emb is not None:
        return "clip", emb[1]
    if is_qwen_vae(shapes):  # before the conv_out test: its diffusers layout has one of 32 channels too
        return "qwen_vae", 0
    conv = shapes.get("encoder.conv_out.weight") or shapes.get("first_stage_model.encoder.conv_out.weight")
    if conv is not None and conv[0] == 64 and any(k.endswith("bn.running_mean") for k in shapes):
        return "flux2_vae", 0
    return ("vae", 0) if conv is not None and conv[0] == 32 else None


def find_parts(model: Path, wanted: list[str]) -> dict[str, Path]:
    """{part: file} for each of `wanted` ("clip_l", "clip_g", "t5xxl", "vae") found beside `model`.
    A CLIP is CLIP-L at 768 wide, CLIP-G at 1280, else by its file name."""
    found: dict[str, list[Path]] = {}
    for folder in _folders(model, ENCODER_FOLDERS) + _folders(model, VAE_FOLDERS):
        for path in sorted(folder.glob("*.safetensors")):
            kind = _kind(path)
            if kind is None:
                continue
            name, width = kind
            if name == "clip":
                name = _CLIP_WIDTHS.get(width) or next((n for n in ("clip_l", "clip_g")
                                                        if path.stem.lower().startswith(n)), None)
            if name == "qwen3" and f"qwen3:{width}" in wanted:  # a Qwen3 of the width asked for (FLUX.2)
                name = f"qwen3:{width}"
            if name in wanted:
                found.setdefault(name, []).append(path)
    return {name: _best(name, paths) for name, paths in found.items()}


_kind = by_stamp(_read_kind)  # model listings ask again for every network they list
_CLIP_WIDTHS = {768: "clip_l", 1280: "clip_g"}


def _best(kind: str, paths: list[Path]) -> Path:
    for name in _PREFERRED.get(kind, ()):
        match = [p for p in paths if p.stem.lower().startswith(name)]
        if match:
            return match[0]
    return paths[0]
