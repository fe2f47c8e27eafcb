"""Control-LoRA (Stability AI's control-lora-*-rank128/256.safetensors, marked by a `lora_controlnet`
key): a ControlNet stored against the base model it is used with. Its encoder starts as a copy of the
base UNet's weights (as they stand, LoRAs in); a layer with `NAME.up` / `NAME.down` gets
up @ down (both flattened to matrices, the product reshaped to the weight) added to its weight; every
other tensor of the file (`NAME.weight`, `NAME.bias`: the hint encoder, zero convs, norms...) replaces
the copied one. The ControlNet's layout is the base UNet's, its hint channels the file's. This is how
ComfyUI's ControlLora builds it; A1111's extension does the same through ComfyUI's code.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Mapping

import torch

from ..checkpoints.controlnet_files import CONTROL_LORA_MARKER as MARKER
from ..errors import CheckpointError
from ..models.config import ModelConfig
from ..models.controlnet import ControlNetConfig

_PAIR = (".up", ".down")


def control_lora_config(sd: Mapping[str, torch.Tensor], base: ModelConfig, path="<control-lora>") -> ControlNetConfig:
    hint = sd.get("input_hint_block.0.weight")
    if hint is None or hint.ndim != 4:
        raise CheckpointError(path, "a Control-LoRA without its input_hint_block.0.weight")
    u = base.unet
    return ControlNetConfig(replace(u, in_channels=4 if u.in_channels in (8, 9) else u.in_channels),
                            hint_channels=hint.shape[1], hint_downscale=base.vae.downscale)


def control_lora_weights(sd: Mapping[str, torch.Tensor], base_sd: Mapping[str, torch.Tensor],
                         wanted: Mapping[str, tuple[int, ...]], path="<control-lora>") -> dict[str, torch.Tensor]:
    """The ControlNet's state dict (`wanted`: its names and shapes) from the file and the base UNet's."""
    out = {k: base_sd[k].float() for k, shape in wanted.items() if k in base_sd and tuple(base_sd[k].shape) == shape}
    out.update({k: v for k, v in sd.items() if k != MARKER and not k.endswith(_PAIR)})
    for key, up in sd.items():
        if not key.endswith(".up"):
            continue
        layer = key[:-len(".up")]
        down, weight = sd.get(layer + ".down"), out.get(layer + ".weight")
        if down is None or weight is None:
            what = "its .down" if down is None else "a weight in the model or the file"
            raise CheckpointError(path, f"Control-LoRA layer {layer} has no {what}")
        try:
            delta = up.float().flatten(1) @ down.float().flatten(1)
            out[layer + ".weight"] = weight.float() + delta.reshape(weight.shape)
        except RuntimeError:
            raise CheckpointError(path, f"Control-LoRA layer {layer}: up {tuple(up.shape)} @ down {tuple(down.shape)} "
                                        f"does not fit the model's weight {tuple(weight.shape)}; is it made for "
                                        "another model family?") from None
    return out


def control_lora_state_dict(path: Path, sd: dict, pipe, wanted: Mapping[str, tuple[int, ...]]) -> dict:
    """control_lora_weights against `pipe`'s network as it stands now."""
    if pipe is None:
        raise CheckpointError(path, "is a Control-LoRA (its weights are changes to a model's) and no model was "
                                    "given to build it from")
    base_sd = {k: v.to("cpu") for k, v in pipe.family.network(pipe.model).state_dict().items()}
    return control_lora_weights(sd, base_sd, wanted, path)
