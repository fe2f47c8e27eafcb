"""Flux.1 ControlNets as InstantX and Shakker-Labs publish them (diffusers' FluxControlNetModel):
a few double- and single-stream blocks built like the transformer's, fed the transformer's inputs
plus the control image's VAE latent, packed like the image and embedded by `controlnet_x_embedder`
(zero-initialised) onto the image tokens. After each block a zero-initialised Linear
(`controlnet_blocks.N`, `controlnet_single_blocks.N`) gives one residual for the image tokens;
Flux.forward_tokens adds them to its own blocks' image tokens (each residual serving ceil(blocks /
residuals) blocks in a row). A Union ControlNet (Union-Pro) has `controlnet_mode_embedder`: the
control type's embedding goes before the text tokens, with a text position id of its own.

XLabs-AI's ControlNets (x-flux; ComfyUI's ControlNetFlux) take the control image itself, in [-1, 1]
at the output's pixel size: a stack of 3x3 convolutions (`input_hint_block`, SiLU between, three
of stride 2) brings it to 16 channels at the latent's size, packed like the latents and embedded by
`pos_embed_input`. XLabs' have double blocks only. Both kinds' residuals are tiled over the model's
blocks (block i gets residual i mod n, x-flux's and ComfyUI's rule), not spread in runs (`tiled`, applied
by adapters/flux_controlnet.py).
TheMistoAI's MistoLine Flux is the same with a longer stack (`input_cond_block.encoder`, 1x1
convolutions among the 3x3) and SiLU after each output linear (`controlnet_blocks.N.linear`).

Attribute names: the transformer parts as in models/flux.py (Black Forest Labs' names), the
ControlNet's own parts as in diffusers' files (XLabs' and MistoLine's: as in theirs).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidArgument
from .config_dit import FluxConfig
from .flux import add_inputs_and_blocks, conditioning_vector, image_ids, pack
from .rope import rope_angles


LATENT, XLABS, MISTOLINE = "latent", "xlabs", "mistoline"  # what the control image enters as

# The pixel hint's convolutions, (input channels, kernel, stride) each, 16 output channels, SiLU between
HINT_CONVS = {
    XLABS: ((3, 3, 1), (16, 3, 1), (16, 3, 2), (16, 3, 1), (16, 3, 2), (16, 3, 1), (16, 3, 2), (16, 3, 1)),
    MISTOLINE: ((3, 3, 1), (16, 1, 1), (16, 3, 1), (16, 3, 2), (16, 3, 1), (16, 3, 2), (16, 3, 1), (16, 3, 2),
                (16, 1, 1), (16, 3, 1)),
}
HINT_CHANNELS = 16
HINT_DOWNSCALE = 8  # the strides' product: the hint's pixels per latent pixel


@dataclass(frozen=True)
class FluxControlNetConfig:
    flux: FluxConfig  # its blocks' shapes; depth / depth_single_blocks: its own block counts
    union_modes: int = 0  # control types of a Union ControlNet (0: a single-purpose one)
    hint: str = LATENT  # LATENT: the VAE latent (InstantX, Shakker-Labs); XLABS, MISTOLINE: the pixels
    base_blocks: tuple[int, int] = (19, 38)  # the model's double and single blocks (tiled residuals fill them)

    @property
    def pixel_hint(self) -> bool:
        return self.hint != LATENT


def hint_convs(kind: str) -> nn.Sequential:
    """The pixel hint's convolution stack with SiLU between (Sequential indices 0, 2, 4, ...)."""
    layers: list[nn.Module] = []
    for c_in, kernel, stride in HINT_CONVS[kind]:
        layers += [nn.Conv2d(c_in, HINT_CHANNELS, kernel, stride=stride, padding=kernel // 2), nn.SiLU()]
    return nn.Sequential(*layers[:-1])


class MistoLineOutput(nn.Module):
    """MistoLine's output block: SiLU after the linear."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.linear(x))


def tiled(residuals: list[torch.Tensor], n_blocks: int) -> list[torch.Tensor]:
    """One residual per block, block i getting residual i mod len (XLabs' rule)."""
    return [residuals[i % len(residuals)] for i in range(n_blocks)] if residuals else []


@dataclass
class FluxControl:
    """What Flux ControlNets add to one Flux call: per ControlNet, its (double, single) residuals
    (Flux.forward's `control`). Several ControlNets keep their own lists, as their block counts may
    differ; each is spread over the transformer's blocks by its own interval."""
    parts: list[tuple[list[torch.Tensor], list[torch.Tensor]]]

    def map(self, fn) -> FluxControl:
        return FluxControl([([fn(t) for t in d], [fn(t) for t in s]) for d, s in self.parts])

    def __add__(self, other: FluxControl) -> FluxControl:
        return FluxControl(self.parts + other.parts)


class FluxControlNet(nn.Module):
    def __init__(self, config: FluxControlNetConfig):
        super().__init__()
        self.config = config
        cfg = config.flux
        dim = cfg.hidden_size
        add_inputs_and_blocks(self, cfg)
        out = (lambda: MistoLineOutput(dim)) if config.hint == MISTOLINE else (lambda: nn.Linear(dim, dim))
        self.controlnet_blocks = nn.ModuleList(out() for _ in range(cfg.depth))
        self.controlnet_single_blocks = nn.ModuleList(out() for _ in range(cfg.depth_single_blocks))
        if config.hint == LATENT:
            self.controlnet_x_embedder = nn.Linear(cfg.in_channels, dim)
        else:
            self.pos_embed_input = nn.Linear(4 * HINT_CHANNELS, dim)
            if config.hint == XLABS:
                self.input_hint_block = hint_convs(XLABS)
            else:
                self.input_cond_block = nn.Module()
                self.input_cond_block.encoder = hint_convs(MISTOLINE)
        if config.union_modes:
            self.controlnet_mode_embedder = nn.Embedding(config.union_modes, dim)

    @property
    def n_residuals(self) -> int:
        return len(self.controlnet_blocks) + len(self.controlnet_single_blocks)

    def forward_tokens(self, img, img_ids, txt, txt_ids, timesteps, y, guidance, cond, mode: int | None = None
                       ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The transformer's token inputs (Flux.forward_tokens) and the packed control latent `cond`
        (B, N, in_channels) -> (double-block residuals, single-block residuals), each (B, N, hidden).
        A pixel-hint ControlNet's `cond`: its hint's packed features (hint_tokens)."""
        cfg = self.config.flux
        embed = self.pos_embed_input if self.config.pixel_hint else self.controlnet_x_embedder
        img = self.img_in(img) + embed(cond.to(img.dtype))
        vec = conditioning_vector(self, timesteps, y, guidance, img.dtype)
        txt = self.txt_in(txt)
        if self.config.union_modes:
            if mode is None or not 0 <= mode < self.config.union_modes:
                raise InvalidArgument(f"control type: this Union ControlNet takes a type 0..{self.config.union_modes - 1}, "
                                      f"got {mode!r}")
            modes = torch.full((len(txt), 1), mode, dtype=torch.long, device=txt.device)
            txt = torch.cat((self.controlnet_mode_embedder(modes).to(txt.dtype), txt), dim=1)
            txt_ids = torch.cat((txt_ids[:1], txt_ids))
        pe = rope_angles(torch.cat((txt_ids, img_ids)), cfg.axes_dim, cfg.theta)
        double, single = [], []
        for block, out in zip(self.double_blocks, self.controlnet_blocks):
            img, txt = block(img, txt, vec, pe)
            double.append(out(img))
        x = torch.cat((txt, img), dim=1)
        for block, out in zip(self.single_blocks, self.controlnet_single_blocks):
            x = block(x, vec, pe)
            single.append(out(x[:, txt.shape[1]:]))
        return double, single

    def hint_tokens(self, hint: torch.Tensor) -> torch.Tensor:
        """A pixel-hint ControlNet's control image (B, 3, 8H, 8W) in [-1, 1] -> its features packed as
        the latents' tokens (B, H/2 * W/2, 64)."""
        convs = self.input_hint_block if self.config.hint == XLABS else self.input_cond_block.encoder
        return pack(convs(hint))

    def forward(self, x, timesteps, context, y, guidance, cond, mode: int | None = None):
        """Latents (B, C, H, W) and the control image's latent (B, C, H, W), both model-scaled (a
        pixel-hint ControlNet's: the image (B, 3, 8H, 8W) in [-1, 1]) -> the residuals for
        Flux.forward(control=...)."""
        h, w = x.shape[-2] // 2, x.shape[-1] // 2
        want_h, want_w = x.shape[-2] * HINT_DOWNSCALE, x.shape[-1] * HINT_DOWNSCALE
        if self.config.pixel_hint and tuple(cond.shape[-2:]) != (want_h, want_w):
            raise InvalidArgument(f"control image: this ControlNet takes it at the output size {want_w}x{want_h}, "
                                  f"got {cond.shape[-1]}x{cond.shape[-2]}")
        tokens = self.hint_tokens(cond) if self.config.pixel_hint else pack(cond)
        txt_ids = torch.zeros(context.shape[1], 3, device=x.device)
        return self.forward_tokens(pack(x), image_ids(h, w, x.device), context, txt_ids, timesteps, y, guidance,
                                   tokens, mode)
