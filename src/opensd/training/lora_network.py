"""The trainable adapters of a LoRA run: a LoraLayer per target layer W (nn.Linear, a float8/GGUF-stored
Linear, or nn.Conv2d) with a trainable `down` (rank x in, same kernel as W) and `up` (out x rank, 1x1,
zero-initialised), so the output becomes W x + (alpha / rank) * up(down(x)); with `up` at zero,
training starts from the base model exactly. The adapters sit on forward hooks (LoraNetwork.attach),
so the model code is untouched and sampling through the ordinary Pipeline sees them."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..models.stored_weights import StoredLinear
from .loha import LohaLayer


class LoraLayer(nn.Module):
    def __init__(self, target: nn.Module, rank: int, alpha: float):
        super().__init__()
        if isinstance(target, (nn.Linear, StoredLinear)):  # float8/GGUF-stored Linears: the base stays stored
            self.lora_down = nn.Linear(target.in_features, rank, bias=False)
            self.lora_up = nn.Linear(rank, target.out_features, bias=False)
        elif isinstance(target, nn.Conv2d):
            self.lora_down = nn.Conv2d(target.in_channels, rank, target.kernel_size, target.stride,
                                       target.padding, bias=False)
            self.lora_up = nn.Conv2d(rank, target.out_channels, 1, bias=False)
        else:
            raise TypeError(f"cannot put a LoRA on {type(target).__name__}")
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up.weight)
        dev = target.weight.device
        self.to(dev)  # float32 whatever the base: the trained weights stay full precision
        self.register_buffer("alpha", torch.tensor(float(alpha), device=dev))
        self.rank = rank

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lora_up(self.lora_down(x.to(self.lora_down.weight.dtype))) * self.scale

    def saved(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        return {"lora_down.weight": self.lora_down.weight.detach().to("cpu", dtype).contiguous(),
                "lora_up.weight": self.lora_up.weight.detach().to("cpu", dtype).contiguous(),
                "alpha": self.alpha.detach().to("cpu", dtype)}


ALGOS = ("lora", "locon", "loha")  # LoCon: LoRA on the ResBlocks' and resamplers' convs too


def _is_spatial_conv(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and tuple(m.kernel_size) != (1, 1)


class LoraNetwork(nn.Module):
    """The trainable adapters, by kohya name; `attach()` hooks them onto their target layers. Convs
    with a kernel wider than 1x1 get `conv_rank`/`conv_alpha` (kohya's conv_dim/conv_alpha);
    `algo` "loha" makes LoHa adapters instead of LoRA ones."""

    def __init__(self, targets: dict[str, nn.Module], rank: int, alpha: float, *, conv_rank: int | None = None,
                 conv_alpha: float | None = None, algo: str = "lora"):
        super().__init__()
        self.targets = targets
        layer = LohaLayer if algo == "loha" else LoraLayer
        self.layers = nn.ModuleDict({
            name: layer(m, conv_rank, conv_alpha) if _is_spatial_conv(m) and conv_rank else layer(m, rank, alpha)
            for name, m in targets.items()})
        self._handles: list = []
        self.enabled = True

    def attach(self) -> LoraNetwork:
        self.detach()
        for name, target in self.targets.items():
            layer = self.layers[name]

            def hook(_m, args, out, _layer=layer):
                return out + _layer(args[0]).to(out.dtype) if self.enabled else out

            self._handles.append(target.register_forward_hook(hook))
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def param_groups(self, unet_lr_scale: float = 1.0, te_lr_scale: float = 1.0) -> list[dict]:
        unet = [p for n, layer in self.layers.items() if n.startswith("lora_unet_") for p in layer.parameters()]
        te = [p for n, layer in self.layers.items() if not n.startswith("lora_unet_") for p in layer.parameters()]
        return [g for g in ({"params": unet, "lr_scale": unet_lr_scale},
                            {"params": te, "lr_scale": te_lr_scale}) if g["params"]]

    def kohya_state_dict(self, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
        """kohya (LoRA, LoCon) or LyCORIS (LoHa) keys: `<name>.<lora_down.weight|hada_w1_a|...|alpha>`."""
        return {f"{name}.{key}": t for name, layer in self.layers.items() for key, t in layer.saved(dtype).items()}
