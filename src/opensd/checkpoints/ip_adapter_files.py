"""Read IP-Adapter files (h94/IP-Adapter's safetensors releases): the base variant only.

The layout is ``image_proj.proj.*`` + ``image_proj.norm.*`` (the image projection) and
``ip_adapter.N.to_k_ip.weight`` / ``to_v_ip.weight`` per cross-attention layer (N = 1, 3, 5, ...).
The Plus, Full Face and FaceID variants project the image differently (a Resampler, an MLP, face
embeddings) and are refused by name. The .bin releases are pickles: refused, the .safetensors of
the same name is to be used.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..models.ip_adapter import IPAdapter
from .files import read_state_dict

BASE_KEYS = {"image_proj.proj.weight", "image_proj.proj.bias", "image_proj.norm.weight", "image_proj.norm.bias"}
_LAYER = re.compile(r"ip_adapter\.(\d+)\.(to_k_ip|to_v_ip)\.weight")


def variant(keys) -> str | None:
    """The unsupported IP-Adapter variant these keys are, or None for the base one."""
    keys = set(keys)
    has = lambda part: any(part in k for k in keys)  # noqa: E731
    if has("perceiver_resampler") or has("to_q_lora") or has("lora"):
        return "IP-Adapter FaceID"
    if has("image_proj.latents") or has("image_proj.proj_in") or has("image_proj.layers."):
        return "IP-Adapter Plus (its Resampler image projection)"
    if has("image_proj.proj.0.") or has("image_proj.proj.3."):
        return "IP-Adapter Full Face / FaceID (an MLP image projection)"
    return None


def load_ip_adapter(path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> IPAdapter:
    """A base IP-Adapter file as an eval :class:`IPAdapter`; CheckpointError (one line) otherwise."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise CheckpointError(path, "IP-Adapter files are read as .safetensors only (the .bin/.pt releases are "
                                    "pickles); use the .safetensors file of the same name")
    sd = read_state_dict(path)
    other = variant(sd)
    if other is not None:
        raise CheckpointError(path, f"{other} is not supported; only the base IP-Adapter (ip-adapter_sd15, "
                                    "ip-adapter_sdxl, ip-adapter_sdxl_vit-h) is")
    missing = sorted(BASE_KEYS - set(sd))
    if missing:
        raise CheckpointError(path, f"not an IP-Adapter: it lacks {missing[0]!r}")
    proj, norm = sd["image_proj.proj.weight"], sd["image_proj.norm.weight"]
    if proj.ndim != 2 or norm.ndim != 1 or not len(norm) or proj.shape[0] % len(norm):
        raise CheckpointError(path, f"image_proj.proj.weight {tuple(proj.shape)} does not fit a norm of "
                                    f"{tuple(norm.shape)}")
    width, tokens = len(norm), proj.shape[0] // len(norm)
    numbers = sorted({int(m.group(1)) for k in sd if (m := _LAYER.fullmatch(k))})
    if not numbers or numbers != list(range(1, 2 * len(numbers), 2)):
        raise CheckpointError(path, "its ip_adapter layers are not numbered 1, 3, 5, ... (an IP-Adapter file "
                                    "holds one per cross-attention layer)")
    inners = []
    for n in numbers:
        k, v = sd.get(f"ip_adapter.{n}.to_k_ip.weight"), sd.get(f"ip_adapter.{n}.to_v_ip.weight")
        if k is None or v is None or k.shape != v.shape or k.ndim != 2 or k.shape[1] != width:
            raise CheckpointError(path, f"ip_adapter.{n}: to_k_ip/to_v_ip must both be (inner, {width})")
        inners.append(k.shape[0])
    with torch.device("meta"):
        adapter = IPAdapter(proj.shape[1], width, inners, tokens)
    wanted = adapter.state_dict().keys()
    adapter.load_state_dict({k: sd[k].to(device=device, dtype=dtype) for k in wanted}, assign=True)
    return adapter.eval()
