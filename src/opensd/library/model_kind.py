"""Which models-folder kind a weight file belongs to (checkpoints, loras, vae, embeddings,
controlnet, upscale_models, hypernetworks, inpaint (LaMa / MAT), or a UNet / text encoder alone),
from its tensor names and shapes (an A1111 hypernetwork pickle, whose tensors sit in per-width
pairs, from its layout).

A safetensors file is judged from its header alone; a pickle is read through the restricted
unpickler (checkpoints.safe_pickle), a TorchScript archive (LaMa's big-lama.pt) through
checkpoints.torchscript_weights, so a file that would run code is refused here, before it is
ever placed in a models folder.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..checkpoints.detect import UNET, detect
from ..checkpoints.families import family_message, part_kind, unsupported_family, what_else
from ..checkpoints.files import read_safetensors_header, read_state_dict, sniff_format
from ..checkpoints.torchscript_weights import is_torchscript, read_torchscript_weights
from ..errors import CheckpointError
from ..inpaint_models import inpaint_architecture

# models-folder kind -> what people call it
LABELS = {"checkpoints": "checkpoint", "loras": "LoRA", "vae": "VAE", "embeddings": "embedding",
          "controlnet": "ControlNet", "upscale_models": "upscaler", "unet": "UNet alone",
          "clip": "text encoder alone", "hypernetworks": "hypernetwork", "inpaint": "inpaint model (LaMa / MAT)"}
_PART_KIND = {"lora": "loras", "embedding": "embeddings", "controlnet": "controlnet", "vae": "vae",
              "diffusers_unet": "unet", "text_encoder": "clip", "t5": "clip"}


_HYPERNET_KEY = re.compile(r"^\d+\.[01]\.linear")


def _hypernetwork(path: Path):
    """The file read as an A1111 hypernetwork, or None when it is not one."""
    from ..adapters.hypernetwork import read_hypernetwork
    try:
        return read_hypernetwork(path)
    except CheckpointError:
        return None


def tensor_shapes(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """({name: shape}, safetensors metadata) of a weight file; pickles go through the safe unpickler
    (a hypernetwork pickle's pairs named as its safetensors layout: "<width>.<0|1>.linear...")."""
    if sniff_format(path) == "safetensors":
        entries, metadata = read_safetensors_header(path)
        return {k: tuple(v["shape"]) for k, v in entries.items()}, metadata
    if is_torchscript(path):
        return {k: tuple(v.shape) for k, v in read_torchscript_weights(path).items()}, {}
    try:
        return {k: tuple(v.shape) for k, v in read_state_dict(path).items()}, {}
    except CheckpointError:
        hn = _hypernetwork(path)
        if hn is None:
            raise
    return {f"{width}.{i}.{k}": tuple(v.shape) for width, pair in hn.layers.items()
            for i, mlp in enumerate(pair) for k, v in mlp.state_dict().items()}, {}


def model_kind(path: Path) -> str:
    """The kind of the weight file at `path`, or a CheckpointError saying what it looks like."""
    path = Path(path)
    shapes, metadata = tensor_shapes(path)
    if shapes and all(_HYPERNET_KEY.match(k) for k in shapes) and _hypernetwork(path) is not None:
        return "hypernetworks"
    if inpaint_architecture(shapes):
        return "inpaint"
    if UNET + "input_blocks.0.0.weight" in shapes:
        detect(shapes, str(path), metadata)  # a whole checkpoint we run; else the error says what it is
        return "checkpoints"
    if "input_blocks.0.0.weight" in shapes and "out.2.weight" in shapes:
        return "unet"  # an original-layout UNet without its prefix (ComfyUI's unet/ folder)
    part = part_kind(shapes, UNET)
    if part == "dit":  # SD3/Flux: whole when it has its VAE, else the network (ComfyUI's diffusion_models/)
        return "checkpoints" if "first_stage_model.encoder.conv_in.weight" in shapes else "unet"
    if part in _PART_KIND:
        return _PART_KIND[part]
    if len(shapes) == 1 and len(next(iter(shapes.values()))) in (1, 2):
        return "embeddings"  # diffusers' {token: vectors}
    if part == "family":
        raise CheckpointError(path, family_message(unsupported_family(shapes)))
    from ..upscale.model_file import load_upscale_model

    try:
        load_upscale_model(path)  # spandrel knows the upscaler architectures by their weights
    except CheckpointError:
        raise CheckpointError(path, what_else(shapes, UNET)) from None
    return "upscale_models"
