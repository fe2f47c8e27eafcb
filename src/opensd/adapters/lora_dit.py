"""Names of the modules a LoRA can patch in the DiT families (SD3, Flux), in the namings their LoRA
files use:

* kohya / sd-scripts: the original layout's module path with dots as underscores, under
  ``lora_unet_`` (``lora_unet_double_blocks_0_img_attn_qkv``, ``lora_unet_joint_blocks_0_x_block_attn_qkv``),
  text encoders under ``lora_te1_``/``lora_te2_`` in transformers' CLIP names;
* PEFT / diffusers / ai-toolkit: ``transformer.<diffusers path>`` (``transformer.transformer_blocks.0.attn.to_q``),
  ``text_encoder.``/``text_encoder_2.`` for CLIP; and the original path under ``diffusion_model.``
  as ComfyUI writes LoRAs.

Where the original stores one fused tensor (q, k, v; Flux's single blocks also the MLP's input),
diffusers' q, k and v are parts of it: a LoRA on ``to_k`` patches the second block of rows (a
:class:`RowSlice`). Everything comes from the families' key maps (keymap_mmdit / keymap_flux), so
there is one table.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints.keymap_clip import clip_to_transformers
from ..checkpoints.keymap_dit import Row
from ..models.stored_weights import StoredLinear
from .lora_keys import LoraModule


class RowSlice(nn.Module):
    """Rows `start:stop` of a fused Linear, acting as an nn.Linear of its own (views, no copies)."""

    def __init__(self, linear: nn.Linear, start: int, stop: int):
        super().__init__()
        self.__dict__["linear"] = linear  # not registered: the part must not own the fused parameters
        self.rows = slice(start, stop)
        self.in_features, self.out_features = linear.in_features, stop - start

    @property
    def fused_weight(self) -> torch.Tensor:
        return self.linear.weight

    @property
    def weight(self) -> torch.Tensor:
        return self.linear.weight[self.rows]

    @property
    def bias(self) -> torch.Tensor | None:
        return None if self.linear.bias is None else self.linear.bias[self.rows]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def network_modules(network: nn.Module, rows: list[Row]) -> list[LoraModule]:
    """Every Linear of the network, by its kohya name and, where diffusers has it (in parts for a
    fused tensor), its PEFT name; adaLN outputs diffusers orders otherwise are not mapped."""
    out = []
    for row in rows:
        if not row.original.endswith(".weight") or row.swap_halves:
            continue
        path = row.original[: -len(".weight")]
        module = network.get_submodule(path)
        if not isinstance(module, (nn.Linear, StoredLinear)):  # float8/GGUF-stored Linears too
            continue
        kohya = "lora_unet_" + path.replace(".", "_")
        parts = [d[: -len(".weight")] for d in row.diffusers]
        whole = [f"diffusion_model.{path}"] + ([f"transformer.{parts[0]}"] if len(parts) == 1 else [])
        out.append(LoraModule(kohya, whole[-1], module, "unet", whole[:-1]))
        start = 0
        for part, size in zip(parts if len(parts) > 1 else (), row.sizes):
            out.append(LoraModule(f"transformer.{part}", f"transformer.{part}", RowSlice(module, start, start + size),
                                  "unet"))
            start += size
    return out


def clip_modules(encoders: list[tuple[str, str, nn.Module]]) -> list[LoraModule]:
    """The Linears of CLIP text encoders in transformers' naming; `encoders`: (kohya prefix, PEFT
    prefix, HFEmbedder) each."""
    out = []
    for kprefix, pprefix, enc in encoders:
        root = enc.transformer
        names = [n for n, m in root.named_modules()
                 if isinstance(m, (nn.Linear, StoredLinear)) and n.startswith("text_model.encoder.")]
        for key, n in clip_to_transformers({f"{n}.weight": n for n in names}, enc.cfg).items():
            path = key[: -len(".weight")]
            out.append(LoraModule(kprefix + path.replace(".", "_"), pprefix + path, root.get_submodule(n), "te"))
    return out
