"""alibaba-pai's Z-Image-Turbo-Fun-Controlnet-Union (1.0, 2.0, 2.1): a VACE-style ControlNet for Z-Image.

The control image's latent (16 channels; 2.x: 33, the control latent, a mask channel and an inpaint
latent) is patchified as the image and embedded by `control_all_x_embedder.2-1` into a control
stream (pad tokens: the base network's image pad token). Control blocks are Z-Image blocks (models/
z_image.py) over that stream; the first adds `before_proj` of the stream to the base network's
tokens, each gives `after_proj` of its output as the residual added after one main block (control
block i after main block i * step, step = main blocks / control blocks: 1.0's six after 0, 5, ...,
25; 2.x's fifteen after 0, 2, ..., 28), scaled by the conditioning scale.

Before the main blocks the stream is refined over the image tokens alone:
- 1.0 (`refiner="plain"`): two plain modulated blocks (`control_noise_refiner.N`);
- 2.1 (`refiner="control"`): two control blocks (`control_noise_refiner.N`, with before/after_proj)
  whose residuals go to the ControlNet's own pass of the base network's image refiner;
- 2.0 (`refiner="layers"`: its refiner blocks are zeros, dropped): the control blocks themselves,
  their first two residuals to that own refiner pass.
Then it is joined with the base network's refined caption and runs through the control blocks
against the joint sequence. This is diffusers' ZImageControlNetModel; its residuals are added by
ZImage.forward(control=...). In diffusers' order the base network's own refiner is not touched; in
alibaba-pai's (VideoX-Fun's, ComfyUI's: InModel) the 2.x refiner residuals are added to it.

Attribute names are the released file's after the base network's renames (fused qkv, `out`,
`q_norm`/`k_norm`): checkpoints/z_image_controlnet_files.py.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from .config_dit import ZImageConfig
from .z_image import Block, Embedded, ZImage, patchify

REFINERS = ("plain", "control", "layers")


@dataclass(frozen=True)
class ZImageControlNetConfig:
    """`base`: the blocks' shape (a Z-Image config: width, heads, norms); `n_layers` control blocks;
    `in_channels` of the control latent (16; 2.x: 33); `refiner` (REFINERS); `step`: main blocks per
    control block (None: the base network's blocks / n_layers, rounded)."""
    base: ZImageConfig
    n_layers: int = 6
    in_channels: int = 16
    refiner: str = "plain"
    step: int | None = None

    def places(self, n_main: int) -> list[int]:
        step = self.step or max(1, round(n_main / self.n_layers))
        return [i * step for i in range(self.n_layers)]


class ControlBlock(Block):
    """A modulated Z-Image block on the control stream; the first (`first`) adds before_proj(stream)
    to the base tokens on entry; each returns (after_proj(output), output)."""

    def __init__(self, cfg: ZImageConfig, first: bool):
        super().__init__(cfg, modulated=True)
        self.before_proj = nn.Linear(cfg.dim, cfg.dim) if first else None
        self.after_proj = nn.Linear(cfg.dim, cfg.dim)

    def run(self, c: torch.Tensor, x: torch.Tensor, pe, mask, t_emb) -> tuple[torch.Tensor, torch.Tensor]:
        if self.before_proj is not None:
            c = self.before_proj(c) + x
        c = super().forward(c, pe, mask, t_emb)
        return self.after_proj(c), c


def run_blocks(blocks, c, x, pe, mask, t_emb) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The residuals of control blocks run in turn, and the stream they leave."""
    out = []
    for block in blocks:
        skip, c = block.run(c, x, pe, mask, t_emb)
        out.append(skip)
    return out, c


class ZImageControlNet(nn.Module):
    def __init__(self, config: ZImageControlNetConfig):
        super().__init__()
        if config.refiner not in REFINERS:
            raise ValueError(f"Z-Image ControlNet refiner {config.refiner!r}: one of {REFINERS}")
        self.config = config
        cfg = replace(config.base, in_channels=config.in_channels)
        self.control_layers = nn.ModuleList(ControlBlock(cfg, i == 0) for i in range(config.n_layers))
        self.control_all_x_embedder = nn.ModuleDict(
            {f"{cfg.patch_size}-1": nn.Linear(cfg.patch_size ** 2 * config.in_channels, cfg.dim)})
        n = cfg.n_refiner_layers
        self.control_noise_refiner = None if config.refiner == "layers" else nn.ModuleList(
            Block(cfg, modulated=True) if config.refiner == "plain" else ControlBlock(cfg, i == 0) for i in range(n))

    @property
    def n_residuals(self) -> int:
        return len(self.control_layers)

    def stream(self, base: ZImage, latent: torch.Tensor) -> torch.Tensor:
        """The control latent (B, C, H, W) as padded control tokens."""
        p = self.config.base.patch_size
        embed = self.control_all_x_embedder[f"{p}-1"]
        return base.pad_image(embed(patchify(latent.to(embed.weight.dtype), p)))

    def refine(self, base: ZImage, latent, img, img_pe, t_emb, scale) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        """The control stream refined over the image tokens `img` (as they enter the base network's
        refiner) -> ({refiner block index: residual}, the stream)."""
        c = self.stream(base, latent)
        if self.config.refiner == "plain":
            for block in self.control_noise_refiner:
                c = block(c, img_pe, None, t_emb)
            return {}, c
        blocks = self.control_layers if self.config.refiner == "layers" else self.control_noise_refiner
        skips, c = run_blocks(blocks, c, img, img_pe, None, t_emb)
        return {i: s * scale for i, s in enumerate(skips[:base.cfg.n_refiner_layers])}, c

    def layer_hints(self, base: ZImage, e: Embedded, stream, scale) -> dict[int, torch.Tensor]:
        """{main block index: residual}: the refined stream joined with the caption through the control
        blocks against the joint sequence `e`."""
        joint = torch.cat([stream, e.seq[:, e.n_x:]], dim=1)
        skips, _ = run_blocks(self.control_layers, joint, e.seq, e.pe, e.keys, e.t_emb)
        return {i: s * scale for i, s in zip(self.config.places(len(base.layers)), skips)}

    def hints(self, base: ZImage, x, t, context, mask, latent, scale: float | torch.Tensor = 1.0,
              e: Embedded | None = None) -> dict[int, torch.Tensor]:
        """diffusers' order: {main block index: residual} for the base network's call on (x, t, context,
        mask) with the control latent, scaled by `scale` (a number, or (B, 1, 1) per row), the refiner
        residuals added in this ControlNet's own pass of the base network's refiners (not the model's);
        `e`: the base network's own Embedded of that call (reused where that pass would equal it)."""
        state = {}

        def own(img, img_pe, t_emb):
            extra, state["c"] = self.refine(base, latent, img, img_pe, t_emb, scale)
            return extra

        if self.config.refiner == "plain" and e is not None:
            own(None, e.img_pe, e.t_emb)
        else:
            e = base.embed(x, t, context, mask, own)
        return self.layer_hints(base, e, state["c"], scale)


class InModel:
    """alibaba-pai's (VideoX-Fun's) and ComfyUI's order for one ControlNet: its refiner residuals added
    to the base network's own refiner (ZImage.forward calls `refiner_hints` there), its block
    residuals then computed from that hinted sequence."""

    def __init__(self, net: ZImageControlNet, latent: torch.Tensor, scale):
        self.net, self.latent, self.scale, self.c = net, latent, scale, None

    def refiner_hints(self, base: ZImage, img, img_pe, t_emb) -> dict[int, torch.Tensor]:
        extra, self.c = self.net.refine(base, self.latent, img, img_pe, t_emb, self.scale)
        return extra

    def __call__(self, base: ZImage, e: Embedded) -> dict[int, torch.Tensor]:
        return self.net.layer_hints(base, e, self.c, self.scale)


@dataclass
class ZImageControl:
    """Z-Image ControlNets for one base network call: per ControlNet (network, control latent (1, C,
    H, W), gate, in_model): the gate (B,) scales each row's residuals (its conditioning scale; 0: a row
    without this ControlNet); `in_model`: the refiner residuals go to the model's refiner (InModel),
    else diffusers' order. `map` applies to the gates, as the ControlNet plumbing maps residuals
    (scaled, scattered to rows). The residuals are computed inside ZImage.forward(control=fns(...))."""
    parts: list[tuple[ZImageControlNet, torch.Tensor, torch.Tensor, bool]]

    def fns(self, x, t, context, mask) -> list:
        def one(net, latent, gate, in_model):
            scale = gate.to(x.device, x.dtype)[:, None, None]
            latent = latent.expand(len(x), -1, -1, -1)
            if in_model:
                return InModel(net, latent, scale)
            return lambda base, e: net.hints(base, x, t, context, mask, latent, scale, e)
        return [one(*p) for p in self.parts]

    def map(self, fn) -> ZImageControl:
        return ZImageControl([(n, lat, fn(g), m) for n, lat, g, m in self.parts])

    def __add__(self, other: ZImageControl) -> ZImageControl:
        return ZImageControl(self.parts + other.parts)
