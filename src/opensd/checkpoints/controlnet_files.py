"""Read ControlNet weights: lllyasviel's original single files (with or without the `control_model.`
prefix, .safetensors or .pth via the safe loader) and diffusers' ControlNetModel (a folder with
config.json, or a single diffusers-keyed file). Everything is mapped onto the original names, and
the architecture is inferred from key names and shapes (the head split, which no shape shows, comes
from config.json, metadata, or the base model it is applied to).
"""
from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Mapping

import torch

from ..errors import CheckpointError
from ..models import config as C
from ..models.controlnet import HINT_CHANNELS, ControlNetConfig
from . import detect as D
from .diffusers_config import unet_config
from .diffusers_folder import model_folder
from .files import read_metadata, read_state_dict, save_safetensors
from .keymap_unet import block_table, rename_keys

PREFIX = "control_model."
META_FAMILY = "opensd.controlnet_family"
META_DOWNSCALE = "opensd.controlnet_hint_downscale"
FAMILY_NAMES = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL", "sdxl_refiner": "SDXL refiner", "small": "small"}
META_UNION_HEADS = "opensd.controlnet_union_heads"
CONTROL_LORA_MARKER = "lora_controlnet"  # Stability AI's Control-LoRA files (adapters/control_lora.py)
UNION_KEYS = ("task_embedding", "transformer_layes.", "spatial_ch_projs.", "control_add_embedding.")


# --- key map -----------------------------------------------------------------------------------

def _extra_rows() -> list[tuple[str, str, str]]:
    rows = [("controlnet_cond_embedding.conv_in", "input_hint_block.0", "plain")]
    n_blocks = 2 * (len(HINT_CHANNELS) - 1)
    rows += [(f"controlnet_cond_embedding.blocks.{i}", f"input_hint_block.{2 + 2 * i}", "plain")
             for i in range(n_blocks)]
    rows.append(("controlnet_cond_embedding.conv_out", f"input_hint_block.{2 + 2 * n_blocks}", "plain"))
    rows.append(("controlnet_mid_block", "middle_block_out.0", "plain"))
    return rows


def _rows(cfg: C.UNetConfig, n_skips: int) -> list[tuple[str, str, str]]:
    encoder = [r for r in block_table(cfg) if not r[0].startswith(("up_blocks.", "conv_norm_out", "conv_out"))]
    zero = [(f"controlnet_down_blocks.{i}", f"zero_convs.{i}.0", "plain") for i in range(n_skips)]
    return _extra_rows() + zero + encoder


def _n_skips(cfg: C.UNetConfig) -> int:
    return 1 + len(cfg.channel_mult) * cfg.num_res_blocks + len(cfg.channel_mult) - 1


def _convert(sd: Mapping[str, torch.Tensor], cfg: C.UNetConfig, to_original: bool) -> dict[str, torch.Tensor]:
    return rename_keys(sd, _rows(cfg, _n_skips(cfg)), to_original, "ControlNet")


def controlnet_from_diffusers(sd: Mapping[str, torch.Tensor], cfg: C.UNetConfig) -> dict[str, torch.Tensor]:
    """diffusers ControlNetModel state dict -> original names (without `control_model.`)."""
    return _convert(sd, cfg, to_original=True)


def controlnet_to_diffusers(sd: Mapping[str, torch.Tensor], cfg: C.UNetConfig) -> dict[str, torch.Tensor]:
    return _convert(sd, cfg, to_original=False)


def split_union(sd: Mapping[str, torch.Tensor]) -> tuple[dict, dict]:
    """(the plain ControlNet's weights, the union modules' weights under torch's attention names)."""
    plain, union = {}, {}
    for k, v in sd.items():
        if k.startswith(UNION_KEYS):
            union[k.replace(".attn.in_proj.", ".attn.in_proj_")] = v
        else:
            plain[k] = v
    return plain, union


# --- detection ---------------------------------------------------------------------------------

def _count(shapes, pattern: str) -> int:
    pat = re.compile(pattern)
    return len({m.group(1) for k in shapes if (m := pat.match(k))})


def unet_config_from_diffusers_keys(shapes: Mapping[str, tuple[int, ...]]) -> C.UNetConfig:
    """The encoder's UNetConfig from diffusers key shapes alone (head split: SD defaults)."""
    mc, in_ch = shapes["conv_in.weight"][:2]
    levels = _count(shapes, r"down_blocks\.(\d+)\.")
    mult, depth = [], []
    for lvl in range(levels):
        mult.append(shapes[f"down_blocks.{lvl}.resnets.0.conv2.weight"][0] // mc)
        depth.append(_count(shapes, rf"down_blocks\.{lvl}\.attentions\.0\.transformer_blocks\.(\d+)\."))
    proj = shapes.get("down_blocks.1.attentions.0.proj_in.weight") or shapes.get("mid_block.attentions.0.proj_in.weight")
    ctx = [v for k, v in shapes.items() if k.endswith("attn2.to_k.weight")]
    adm = shapes.get("add_embedding.linear_1.weight")
    return C.UNetConfig(in_channels=in_ch, model_channels=mc, channel_mult=tuple(mult),
                        num_res_blocks=_count(shapes, r"down_blocks\.0\.resnets\.(\d+)\."),
                        transformer_depth=tuple(depth),
                        transformer_depth_middle=_count(shapes, r"mid_block\.attentions\.0\.transformer_blocks\.(\d+)\."),
                        context_dim=ctx[0][1] if ctx else 768,
                        use_linear_in_transformer=bool(proj) and len(proj) == 2,
                        adm_in_channels=adm[1] if adm else 0)


def is_control_lora(keys) -> bool:
    return CONTROL_LORA_MARKER in keys


def describe_control_lora(shapes: Mapping[str, tuple[int, ...]]) -> tuple[C.Family | None, str]:
    """(family from the text context width, or None; a line for listings) of a Control-LoRA's shapes."""
    widths = [s[1] for k, s in shapes.items() if k.endswith("attn2.to_k.down") and len(s) == 2]
    family = {768: "sd1", 1024: "sd2", 2048: "sdxl"}.get(widths[0]) if widths else None
    ranks = [s[0] for k, s in shapes.items() if k.endswith(".down")]
    hint = shapes.get("input_hint_block.0.weight", (0, 0))[1]
    return family, f"Control-LoRA (rank {max(ranks, default=0)}), {hint}-channel hint"


def family_of(u: C.UNetConfig) -> C.Family:
    if u.adm_in_channels == 2816 and u.model_channels == 320:
        return "sdxl"
    if u.model_channels == 320 and len(u.channel_mult) == 4:
        return "sd2" if u.context_dim == 1024 else "sd1" if u.context_dim == 768 else "small"
    return "small"


def _with_family_heads(u: C.UNetConfig, family: C.Family) -> C.UNetConfig:
    if family == "sd1":
        return replace(u, num_heads=8, num_head_channels=-1)
    return replace(u, num_heads=-1, num_head_channels=64)


def _union_fields(shapes: Mapping[str, tuple[int, ...]], path) -> dict:
    """ControlNetConfig's union_* fields from key shapes ({} for a plain ControlNet)."""
    if not any(k.startswith(UNION_KEYS) for k in shapes):
        return {}
    try:
        types, width = shapes["task_embedding"]
        type_dim = shapes["control_add_embedding.linear_1.weight"][1] // types
    except (KeyError, ValueError):
        raise CheckpointError(path, "a Union ControlNet without its task_embedding / control_add_embedding "
                                    "weights") from None
    return dict(union_types=types, union_width=width, union_type_dim=type_dim,
                union_layers=_count(shapes, r"transformer_layes\.(\d+)\."))


def detect_controlnet(shapes: Mapping[str, tuple[int, ...]], path="<state dict>",
                      metadata: Mapping[str, str] | None = None) -> tuple[C.Family, ControlNetConfig]:
    """Family and config of an original-layout ControlNet state dict (no `control_model.` prefix)."""
    metadata = metadata or {}
    if "input_hint_block.0.weight" not in shapes or "input_blocks.0.0.weight" not in shapes:
        raise CheckpointError(path, "not a ControlNet: no input_hint_block / input_blocks keys"
                              + (" (nor a T2I-Adapter or a Control-LoRA)" if shapes else ""))
    fake = {**shapes, "out.2.weight": (4, shapes["input_blocks.0.0.weight"][0], 3, 3)}
    u = D.infer_unet(fake, "")
    family = metadata.get(META_FAMILY) or family_of(u)
    u = _with_family_heads(u, family)
    if D.META_HEADS in metadata or D.META_HEAD_CHANNELS in metadata:
        u = replace(u, num_heads=int(metadata.get(D.META_HEADS, -1)),
                    num_head_channels=int(metadata.get(D.META_HEAD_CHANNELS, -1)))
    downscale = int(metadata.get(META_DOWNSCALE, 8))
    union = _union_fields(shapes, path)
    if union and META_UNION_HEADS in metadata:
        union["union_heads"] = int(metadata[META_UNION_HEADS])
    cfg = ControlNetConfig(u, hint_channels=shapes["input_hint_block.0.weight"][1], hint_downscale=downscale,
                           **union)
    return family, cfg


# --- loading -----------------------------------------------------------------------------------

def read_controlnet(path, sd: dict[str, torch.Tensor] | None = None
                    ) -> tuple[dict[str, torch.Tensor], C.Family, ControlNetConfig]:
    """Original-layout state dict, family and config of a ControlNet file or diffusers folder (`sd`:
    the file's tensors when already read)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(path, "does not exist")
    metadata: dict[str, str] = {}
    heads = None
    union_heads = None
    global_pool = False
    if path.is_dir():
        j, weights = model_folder(path, "ControlNet")
        cfg_file = path / "config.json"
        try:
            j.setdefault("out_channels", 4)
            if not j.get("addition_embed_type"):  # then unused by the UNet part (a union net's type width)
                j.pop("addition_time_embed_dim", None)
            heads = unet_config(j)
            global_pool = bool(j.get("global_pool_conditions", False))
            union_heads = int(j["num_trans_head"]) if "num_trans_head" in j else None
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(cfg_file, f"unsupported ControlNet config: {e}") from None
        sd = read_state_dict(weights)
    else:
        sd = read_state_dict(path) if sd is None else sd
        metadata = read_metadata(path)
    difference = "difference" in sd  # a diff ControlNet: the UNet's weights are added when it is loaded
    if difference:
        sd = {k: v for k, v in sd.items() if k != "difference"}
    if any(k.startswith(PREFIX) for k in sd):  # lllyasviel files, some with the whole SD model too
        sd = {k[len(PREFIX):]: v for k, v in sd.items() if k.startswith(PREFIX)}
    sd, union = split_union(sd)
    if "controlnet_cond_embedding.conv_in.weight" in sd:
        u = unet_config_from_diffusers_keys({k: tuple(v.shape) for k, v in sd.items()})
        try:
            sd = controlnet_from_diffusers(sd, u)
        except KeyError as e:
            raise CheckpointError(path, f"unexpected diffusers ControlNet keys: {e}") from None
    sd.update(union)
    family, cfg = detect_controlnet({k: tuple(v.shape) for k, v in sd.items()}, path, metadata)
    if heads is not None:
        cfg = replace(cfg, unet=replace(cfg.unet, num_heads=heads.num_heads,
                                        num_head_channels=heads.num_head_channels))
    # lllyasviel's shuffle model pools its residuals (its yaml says so; the weights cannot).
    if global_pool or "shuffle" in path.name.lower():
        cfg = replace(cfg, global_average_pooling=True)
    if difference:
        cfg = replace(cfg, difference=True)
    if union_heads and cfg.union_types:
        if union_heads < 1 or cfg.union_width % union_heads:
            raise CheckpointError(path, f"num_trans_head {union_heads} does not divide the type transformer's "
                                        f"width {cfg.union_width}")
        cfg = replace(cfg, union_heads=union_heads)
    return sd, family, cfg


def compatible_config(cfg: ControlNetConfig, family: C.Family, base: C.ModelConfig, path="<controlnet>") -> ControlNetConfig:
    """The ControlNet's config adapted to `base` (head split, hint downscale), or CheckpointError
    when it was made for another family."""
    u, b = cfg.unet, base.unet
    # The residuals must fit the base UNet's skips, and the ControlNet must read the same text and "y"
    # conditioning; its transformer depths may differ (e.g. diffusers' "small"/"mid" SDXL ControlNets).
    # A guidance-distilled base takes ControlNets with or without its guidance embedding.
    adm_fits = u.adm_in_channels == b.adm_in_channels or (b.guidance_embed and not u.adm_in_channels)
    fields = [("model channels", "are", u.model_channels, b.model_channels),
              ("channel multipliers", "are", u.channel_mult, b.channel_mult),
              ("res blocks per level", "are", u.num_res_blocks, b.num_res_blocks),
              ("text context width", "is", u.context_dim, b.context_dim)]
    if not adm_fits:
        fields.append(("'y' vector width", "is", u.adm_in_channels, b.adm_in_channels))
    differences = [f"{what} {mine} (the model's {verb} {theirs})" for what, verb, mine, theirs in fields if mine != theirs]
    if differences:
        ours, base_family = FAMILY_NAMES.get(family, family), FAMILY_NAMES.get(base.family, base.family)
        made_for = (f"but the loaded model is {base_family}" if ours != base_family
                    else "of another shape than the loaded model")
        raise CheckpointError(path, f"this ControlNet is for {ours} models {made_for}: its {'; its '.join(differences)}; "
                                    "use a ControlNet made for this model")
    return replace(cfg, unet=replace(u, num_heads=b.num_heads, num_head_channels=b.num_head_channels,
                                     guidance_embed=b.guidance_embed and bool(u.adm_in_channels)),
                   hint_downscale=base.vae.downscale)


def save_controlnet(net, path, family: C.Family, dtype: torch.dtype = torch.float16, prefix: bool = True) -> None:
    """Write a ControlNet as an original-layout safetensors file (with `control_model.` by default)."""
    cfg: ControlNetConfig = net.config
    sd = {(PREFIX if prefix else "") + k: v.detach().to(dtype).contiguous() for k, v in net.state_dict().items()}
    meta = {META_FAMILY: family, META_DOWNSCALE: str(cfg.hint_downscale),
            D.META_HEADS: str(cfg.unet.num_heads), D.META_HEAD_CHANNELS: str(cfg.unet.num_head_channels)}
    if cfg.union_types:
        meta[META_UNION_HEADS] = str(cfg.union_heads)
    save_safetensors(sd, path, metadata=meta)
