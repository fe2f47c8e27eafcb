"""Names of the modules a LoRA can patch, in the namings LoRA files use.

Three namings reach us:

* kohya / A1111 ("lora_unet_…", "lora_te_…", "lora_te1_…", "lora_te2_…"): a module path with dots
  replaced by underscores. sd-scripts trains SD1/SD2 on the diffusers UNet, so those files use
  diffusers module paths (``lora_unet_down_blocks_0_attentions_0_…``); it trains SDXL on an
  original-layout UNet, so SDXL files use LDM paths (``lora_unet_input_blocks_4_1_…``). Text
  encoders are always named as transformers' CLIP (``text_model_encoder_layers_0_self_attn_q_proj``).
* PEFT / diffusers: ``unet.<diffusers path>``, ``text_encoder.<transformers path>``,
  ``text_encoder_2.<…>`` (SDXL's second encoder).

Everything is derived from the existing checkpoint key maps (``keymap_unet`` / ``keymap_clip``) by
renaming our own module paths, so there is one table, not two.

Our OpenCLIP encoders keep q/k/v fused in ``attn.in_proj_weight``; a LoRA on ``q_proj`` patches the
first third of those rows, ``k_proj`` the second, ``v_proj`` the third. Such a target is a
:class:`FusedQKVPart`, a small module whose ``weight``/``bias`` are views of the fused parameter.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints.keymap_clip import clip_to_transformers
from ..checkpoints.keymap_unet import unet_to_diffusers
from ..models.stable_diffusion import SGM_FAMILIES, StableDiffusion

_QKV = ("q", "k", "v")


class FusedQKVPart(nn.Module):
    """One of q/k/v inside an OpenCLIP attention's fused ``in_proj``; acts like an nn.Linear whose
    weight and bias are views (rows ``index*width:(index+1)*width``) of the fused parameters."""

    def __init__(self, attn: nn.Module, index: int):
        super().__init__()
        self.__dict__["attn"] = attn  # not registered: the part must not own the attention's parameters
        self.index = index
        self.width = attn.in_proj_weight.shape[1]
        self.in_features = self.out_features = self.width

    @property
    def rows(self) -> slice:
        return slice(self.index * self.width, (self.index + 1) * self.width)

    @property
    def weight(self) -> torch.Tensor:
        return self.attn.in_proj_weight[self.rows]

    @property
    def bias(self) -> torch.Tensor:
        return self.attn.in_proj_bias[self.rows]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


@dataclass
class LoraModule:
    kohya: str  # canonical kohya name, the one sd-scripts writes for this family
    peft: str  # PEFT / diffusers name ("unet.…", "text_encoder.…", "text_encoder_2.…")
    module: nn.Module  # nn.Linear, nn.Conv2d or FusedQKVPart
    component: str  # "unet" or "te" (for separate strengths)
    aliases: list[str] = field(default_factory=list)  # other kohya spellings seen in the wild


def _kohya(prefix: str, path: str) -> str:
    return prefix + path.replace(".", "_")


def _unet_modules(model: StableDiffusion) -> list[LoraModule]:
    unet = model.unet
    names = [n for n, m in unet.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    to_diff = unet_to_diffusers({f"{n}.weight": n for n in names}, model.config.unet)
    original_of = {orig: diff[: -len(".weight")] for diff, orig in to_diff.items()}
    sgm = model.config.family in SGM_FAMILIES
    out = []
    for n in names:
        diff = original_of[n]
        by_diff, by_orig = _kohya("lora_unet_", diff), _kohya("lora_unet_", n)
        canonical, alias = (by_orig, by_diff) if sgm else (by_diff, by_orig)
        aliases = [alias] if alias != canonical else []
        out.append(LoraModule(canonical, f"unet.{diff}", unet.get_submodule(n), "unet", aliases))
    return out


def _te_prefixes(model: StableDiffusion) -> list[tuple[str, str]]:
    """(kohya prefix, PEFT prefix) per text encoder, in model order."""
    n = len(model.text_encoders)
    if n == 1:
        # The SDXL refiner's only encoder is bigG, trained as SDXL's second one.
        if model.config.family == "sdxl_refiner":
            return [("lora_te2_", "text_encoder_2.")]
        return [("lora_te_", "text_encoder.")]
    return [("lora_te1_", "text_encoder."), ("lora_te2_", "text_encoder_2.")][:n] + \
        [(f"lora_te{i + 1}_", f"text_encoder_{i + 1}.") for i in range(2, n)]


def _te_aliases(kprefix: str, path: str) -> list[str]:
    # some SDXL files name the first encoder "lora_te_" as SD1 files do
    return [_kohya("lora_te_", path)] if kprefix == "lora_te1_" else []


def _te_modules(model: StableDiffusion) -> list[LoraModule]:
    out = []
    for (kprefix, pprefix), enc in zip(_te_prefixes(model), model.text_encoders):
        cfg = enc.cfg
        if cfg.naming == "hf":
            root = enc.transformer
            names = [n for n, m in root.named_modules()
                     if isinstance(m, nn.Linear) and n.startswith("text_model.encoder.")]
            mapped = clip_to_transformers({f"{n}.weight": n for n in names}, cfg)
            for key, n in mapped.items():
                path = key[: -len(".weight")]
                out.append(LoraModule(_kohya(kprefix, path), pprefix + path, root.get_submodule(n), "te",
                                      _te_aliases(kprefix, path)))
            continue
        root = enc.model
        names = [n for n, m in root.named_modules()
                 if isinstance(m, nn.Linear) and n.startswith("transformer.resblocks.")]
        mapped = clip_to_transformers({f"{n}.weight": n for n in names}, cfg)
        for key, n in mapped.items():
            path = key[: -len(".weight")]
            out.append(LoraModule(_kohya(kprefix, path), pprefix + path, root.get_submodule(n), "te",
                                  _te_aliases(kprefix, path)))
        for i, block in enumerate(root.transformer.resblocks):
            for j, p in enumerate(_QKV):
                path = f"text_model.encoder.layers.{i}.self_attn.{p}_proj"
                out.append(LoraModule(_kohya(kprefix, path), pprefix + path, FusedQKVPart(block.attn, j), "te",
                                      _te_aliases(kprefix, path)))
    return out


def lora_modules(model: StableDiffusion, text_encoder: bool = True) -> list[LoraModule]:
    """Every Linear/Conv2d of the UNet (what LoRA and LoCon/LyCORIS target; a superset of kohya's
    default attention-only set) and every Linear inside the text encoders' transformer layers."""
    mods = _unet_modules(model)
    if text_encoder:
        mods += _te_modules(model)
    return mods


def lora_targets(model: StableDiffusion, text_encoder: bool = True) -> dict[str, nn.Module]:
    """kohya LoRA module name (no ``.lora_down.weight`` suffix) -> the module it patches."""
    return {m.kohya: m.module for m in lora_modules(model, text_encoder)}


def peft_names(model: StableDiffusion, text_encoder: bool = True) -> dict[str, str]:
    """kohya LoRA module name -> PEFT / diffusers module name of the same module."""
    return {m.kohya: m.peft for m in lora_modules(model, text_encoder)}
