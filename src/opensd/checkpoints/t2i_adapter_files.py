"""Read T2I-Adapter weights: TencentARC's original files (t2iadapter_*_sd14v1.pth, *_sd15v2.pth; "full"
and "light" layouts) and diffusers' T2IAdapter (a folder with config.json, as the SDXL
t2i-adapter-*-sdxl-1.0 ones come, or a single diffusers-keyed file), mapped onto the original names.
The layout is inferred from key names and shapes; what no shape shows (the pixel unshuffle, which
levels pool) follows the files' conventions: an input of 256 or 768 channels is SDXL's unshuffle 16
(1 or 3 image channels), 64 or 192 the SD one of 8; a diffusers config.json says it outright.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Mapping

import torch

from ..errors import CheckpointError
from ..models import config as C
from ..models.t2i_adapter import T2IAdapterConfig, feature_layout, slot_layout, slots
from .diffusers_folder import model_folder
from .files import read_metadata, read_state_dict, save_safetensors

META_UNSHUFFLE = "opensd.t2i_adapter_unshuffle"
META_LEVELS = "opensd.t2i_adapter_levels"
STYLE_KEYS = ("style_embedding", "ln_post.weight")
_DIFFUSERS_KINDS = {"full_adapter": "full", "full_adapter_xl": "full", "light_adapter": "light"}


def is_t2i_adapter(keys) -> bool:
    """Key names of a T2I-Adapter (either layout, the style adapter included)."""
    keys = set(keys)
    return bool(keys & {"conv_in.weight", "body.0.in_conv.weight", "adapter.conv_in.weight",
                        "adapter.body.0.in_conv.weight", *STYLE_KEYS}) \
        and any(k.startswith(("body.", "adapter.body.", "style_embedding", "ln_post")) for k in keys)


def from_diffusers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers T2IAdapter keys (`adapter.body.I.resnets.J.*`) -> original ones (values kept: tensors
    or shapes)."""
    light = "adapter.conv_in.weight" not in sd
    per_level = 1 + max((int(m.group(1)) for k in sd if (m := re.match(r"adapter\.body\.0\.resnets\.(\d+)\.", k))),
                        default=0)
    out = {}
    for k, v in sd.items():
        m = re.match(r"adapter\.body\.(\d+)\.(?:resnets\.(\d+)\.)?(.*)", k)
        if k.startswith("adapter.conv_in."):
            out[k[len("adapter."):]] = v
        elif m is None:
            raise CheckpointError("<T2I-Adapter>", f"unexpected diffusers T2I-Adapter key {k}")
        elif light:
            i, j, rest = m.groups()
            out[f"body.{i}." + (f"body.{j}." if j is not None else "") + rest] = v
        else:
            i, j, rest = m.groups()
            out[f"body.{int(i) * per_level + int(j or 0)}.{rest}"] = v
    return out


def _count(shapes, pattern: str) -> int:
    pat = re.compile(pattern)
    return len({m.group(1) for k in shapes if (m := pat.match(k))})


def detect_t2i_adapter(shapes: Mapping[str, tuple[int, ...]], path="<state dict>",
                       metadata: Mapping[str, str] | None = None, levels: int = 4,
                       unshuffle: int | None = None) -> tuple[C.Family, T2IAdapterConfig]:
    """Family and config of an original-layout T2I-Adapter state dict."""
    if any(k in shapes for k in STYLE_KEYS):
        raise CheckpointError(path, "is a T2I style adapter (it adds CLIP-vision tokens to the prompt), which is "
                                    "not supported; use an IP-Adapter for image prompts")
    if any(k.endswith("down_opt.op.weight") for k in shapes):
        raise CheckpointError(path, "a T2I-Adapter with convolution downsampling is not supported")
    light = "conv_in.weight" not in shapes
    try:
        if light:
            levels = _count(shapes, r"body\.(\d+)\.out_conv\.")
            cin = shapes["body.0.in_conv.weight"][1]
            channels = tuple(shapes[f"body.{i}.out_conv.weight"][0] for i in range(levels))
            n = _count(shapes, r"body\.0\.body\.(\d+)\.")
            kernel = 3
        else:
            cin = shapes["conv_in.weight"][1]
            n = _count(shapes, r"body\.(\d+)\.block1\.") // levels
            channels = tuple(shapes[f"body.{i * n}.block1.weight"][0] for i in range(levels))
            kernel = shapes["body.0.block2.weight"][2]
    except (KeyError, IndexError, ZeroDivisionError):
        raise CheckpointError(path, "not a T2I-Adapter of a known layout (full or light)") from None
    unshuffle = unshuffle or int((metadata or {}).get(META_UNSHUFFLE, 0)) \
        or (16 if cin in (256, 768) else 8 if cin in (64, 192) else 0)
    if not unshuffle or cin % unshuffle ** 2:
        raise CheckpointError(path, f"T2I-Adapter input of {cin} channels: not an image pixel-unshuffled by 8 or 16")
    xl = unshuffle == 16 and not light
    downs = tuple(i == 2 for i in range(levels)) if xl else (False,) + (True,) * (levels - 1)
    cfg = T2IAdapterConfig(kind="light" if light else "full", channels=channels, num_res_blocks=n,
                           in_channels=cin // unshuffle ** 2, unshuffle=unshuffle, downsamples=downs, kernel=kernel)
    family = ("sdxl" if unshuffle == 16 else "sd1") if channels[0] == 320 else "small"
    return family, cfg


def is_t2i_adapter_folder(path: Path) -> bool:
    """A diffusers folder whose config.json names a T2IAdapter."""
    try:
        j = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(j, dict) and (j.get("_class_name") == "T2IAdapter" or "adapter_type" in j)


def read_t2i_adapter(path, sd: dict[str, torch.Tensor] | None = None
                     ) -> tuple[dict[str, torch.Tensor], C.Family, T2IAdapterConfig]:
    """Original-layout state dict, family and config of a T2I-Adapter file or diffusers folder (`sd`:
    the file's tensors when already read)."""
    path = Path(path)
    metadata: dict[str, str] = {}
    levels, unshuffle = 4, None
    if path.is_dir():
        j, weights = model_folder(path, "T2I-Adapter")
        try:
            if j.get("adapter_type", "full_adapter") not in _DIFFUSERS_KINDS:
                raise ValueError(f"adapter_type {j['adapter_type']!r}")
            levels = len(j.get("channels", (0,) * 4)) + (j.get("adapter_type") == "light_adapter")
            unshuffle = int(j.get("downscale_factor", 16 if j.get("adapter_type") == "full_adapter_xl" else 8))
        except (ValueError, TypeError, KeyError) as e:
            raise CheckpointError(path / "config.json", f"unsupported T2I-Adapter config: {e}") from None
        sd = read_state_dict(weights)
    else:
        sd = read_state_dict(path) if sd is None else sd
        metadata = read_metadata(path)
        levels = int(metadata.get(META_LEVELS, levels))
    if any(k.startswith("adapter.") for k in sd):
        sd = from_diffusers(sd)
    family, cfg = detect_t2i_adapter({k: tuple(v.shape) for k, v in sd.items()}, path, metadata, levels, unshuffle)
    return sd, family, cfg


def compatible_slots(cfg: T2IAdapterConfig, base: C.ModelConfig, path="<t2i-adapter>") -> tuple[int, ...]:
    """Where the adapter's features go in `base`'s UNet, or CheckpointError when they do not fit it."""
    where = slots(base.unet, len(cfg.channels))
    theirs = slot_layout(base.unet, where)
    mine = [(c, scale // base.vae.downscale if scale % base.vae.downscale == 0 else 0)
            for c, scale in feature_layout(cfg)]
    if mine != theirs:
        kind = "SDXL" if cfg.unshuffle == 16 else "SD1.x/SD2.x" if cfg.channels[0] == 320 else "another"
        raise CheckpointError(path, f"this T2I-Adapter is for {kind} models; its features (channels, downscale) "
                                    f"{mine} do not fit the loaded model's {theirs}; use an adapter made for it")
    return tuple(where)


def save_t2i_adapter(net, path, dtype: torch.dtype = torch.float16) -> None:
    """Write a T2I-Adapter as an original-layout safetensors file (its unshuffle and level count in the
    metadata, for sizes the conventions above do not cover)."""
    cfg: T2IAdapterConfig = net.config
    sd = {k: v.detach().to(dtype).contiguous() for k, v in net.state_dict().items()}
    save_safetensors(sd, path, metadata={META_UNSHUFFLE: str(cfg.unshuffle), META_LEVELS: str(len(cfg.channels))})
