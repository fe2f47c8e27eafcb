"""Depth Anything V2 (Yang et al., 2024) in torch: the depth preprocessor for ControlNet depth models.

A DINOv2 ViT with 14-pixel patches reads the image; four of its blocks' normalised patch tokens are
turned back into feature maps at 4x, 2x, 1x and 1/2x the patch grid (DPT "reassemble"), fused
coarse-to-fine by residual conv units, and a small conv head upsamples to the input size and
predicts relative inverse depth (large = near). The released weights come in three sizes, ViT-S/B/L.

Attribute names equal the authors' checkpoint keys (``pretrained.blocks.0.attn.qkv.weight``,
``depth_head.scratch.refinenet1.out_conv.weight``, ...), so their .pth files load with no renaming;
transformers' layout is mapped onto them by adapters/depth_anything_files.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidArgument
from ..models.attention import attention

PATCH = 14
INPUT_SIZE = 518                 # the short side the models were trained at (37 patches)
MEAN = (0.485, 0.456, 0.406)     # ImageNet normalisation, on 0..1 RGB
STD = (0.229, 0.224, 0.225)
POS_OFFSET = 0.1                 # DINOv2's offset in the position-embedding interpolation
MAX_TOKENS = 37 * 37 * 12        # the most patches one image may make (518 x 6216 at the default size)


@dataclass(frozen=True)
class DepthConfig:
    dim: int                     # ViT width
    depth: int                   # ViT blocks
    heads: int
    features: int                # DPT fusion width
    out_channels: tuple[int, int, int, int]   # reassembled maps' widths
    taps: tuple[int, int, int, int]           # blocks whose outputs feed the head (0-based)
    grid: int = 37               # side of the stored position-embedding grid (518 / 14)
    mlp_ratio: int = 4


VARIANTS = {
    "vits": DepthConfig(384, 12, 6, 64, (48, 96, 192, 384), (2, 5, 8, 11)),
    "vitb": DepthConfig(768, 12, 12, 128, (96, 192, 384, 768), (2, 5, 8, 11)),
    "vitl": DepthConfig(1024, 24, 16, 256, (256, 512, 1024, 1024), (4, 11, 17, 23)),
}


# --- the DINOv2 backbone ---------------------------------------------------------------------------

class LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.proj(attention(q, k, v, self.heads))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, cfg: DepthConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.attn = Attention(cfg.dim, cfg.heads)
        self.ls1 = LayerScale(cfg.dim)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.mlp = Mlp(cfg.dim, cfg.dim * cfg.mlp_ratio)
        self.ls2 = LayerScale(cfg.dim)

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, PATCH, PATCH)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class DINOv2(nn.Module):
    def __init__(self, cfg: DepthConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.grid * cfg.grid + 1, cfg.dim))
        self.mask_token = nn.Parameter(torch.zeros(1, cfg.dim))  # training only; kept so the files load strictly
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-6)

    def position_embedding(self, rows: int, cols: int) -> torch.Tensor:
        """The stored grid's embeddings resized to rows x cols patches as DINOv2 does it: bicubic by
        the scale factor (rows + 0.1) / grid (the offset keeps the floor of the output size exact)."""
        g = self.cfg.grid
        if rows == cols == g:
            return self.pos_embed
        grid = self.pos_embed[:, 1:].float().reshape(1, g, g, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, scale_factor=((rows + POS_OFFSET) / g, (cols + POS_OFFSET) / g),
                             mode="bicubic", align_corners=False)
        grid = grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1).to(self.pos_embed.dtype)
        return torch.cat([self.pos_embed[:, :1], grid], dim=1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Normalised patch tokens (B, rows*cols, dim) after each tapped block."""
        rows, cols = x.shape[-2] // PATCH, x.shape[-1] // PATCH
        h = self.patch_embed(x)
        h = torch.cat([self.cls_token.expand(h.shape[0], -1, -1), h], dim=1)
        h = h + self.position_embedding(rows, cols)
        taps = []
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i in self.cfg.taps:
                taps.append(self.norm(h)[:, 1:])
        return taps


# --- the DPT head ------------------------------------------------------------------------------------

class ResidualConvUnit(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """Adds the skip map (through a residual unit) to the coarser path, refines, upsamples to `size`
    (twice the size when None) and mixes channels."""

    def __init__(self, features: int):
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x, skip=None, size=None):
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        resize = {"size": tuple(size)} if size is not None else {"scale_factor": 2}
        x = F.interpolate(x, **resize, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class Scratch(nn.Module):
    def __init__(self, cfg: DepthConfig):
        super().__init__()
        f = cfg.features
        for i, c in enumerate(cfg.out_channels, start=1):
            setattr(self, f"layer{i}_rn", nn.Conv2d(c, f, 3, padding=1, bias=False))
        for i in range(1, 5):
            setattr(self, f"refinenet{i}", FusionBlock(f))
        self.output_conv1 = nn.Conv2d(f, f // 2, 3, padding=1)
        self.output_conv2 = nn.Sequential(nn.Conv2d(f // 2, 32, 3, padding=1), nn.ReLU(),
                                          nn.Conv2d(32, 1, 1), nn.ReLU())


class DPTHead(nn.Module):
    def __init__(self, cfg: DepthConfig):
        super().__init__()
        c = cfg.out_channels
        self.projects = nn.ModuleList(nn.Conv2d(cfg.dim, ch, 1) for ch in c)
        # the four maps at 4x, 2x, 1x and 1/2x the patch grid
        self.resize_layers = nn.ModuleList([nn.ConvTranspose2d(c[0], c[0], 4, 4), nn.ConvTranspose2d(c[1], c[1], 2, 2),
                                            nn.Identity(), nn.Conv2d(c[3], c[3], 3, 2, 1)])
        self.scratch = Scratch(cfg)

    def forward(self, taps: list[torch.Tensor], rows: int, cols: int) -> torch.Tensor:
        maps = []
        for tokens, project, resize in zip(taps, self.projects, self.resize_layers):
            grid = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, rows, cols)
            maps.append(resize(project(grid)))
        s = self.scratch
        l1, l2, l3, l4 = (getattr(s, f"layer{i}_rn")(m) for i, m in enumerate(maps, start=1))
        path = s.refinenet4(l4, size=l3.shape[2:])
        path = s.refinenet3(path, l3, size=l2.shape[2:])
        path = s.refinenet2(path, l2, size=l1.shape[2:])
        path = s.refinenet1(path, l1)
        out = F.interpolate(s.output_conv1(path), (rows * PATCH, cols * PATCH), mode="bilinear", align_corners=True)
        return s.output_conv2(out)


class DepthAnythingV2(nn.Module):
    def __init__(self, cfg: DepthConfig):
        super().__init__()
        self.cfg = cfg
        self.pretrained = DINOv2(cfg)
        self.depth_head = DPTHead(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) ImageNet-normalised RGB, H and W multiples of 14 -> relative inverse depth
        (B, H, W), 0 or more (large = near)."""
        rows, cols = x.shape[-2] // PATCH, x.shape[-1] // PATCH
        return F.relu(self.depth_head(self.pretrained(x), rows, cols)).squeeze(1)


# --- image in, depth map out ---------------------------------------------------------------------------

def _multiple_of_patch(x: float, at_least: int) -> int:
    """Round to a multiple of 14, rounding up instead where that falls below `at_least`."""
    y = int(np.round(x / PATCH) * PATCH)
    return y if y >= at_least else int(np.ceil(x / PATCH) * PATCH)


def input_size(height: int, width: int, size: int = INPUT_SIZE) -> tuple[int, int]:
    """The (height, width) the image is resized to: the short side to `size` (aspect kept), each side
    a multiple of 14 and at least `size` (the authors' "lower bound" resize)."""
    k = max(size / height, size / width)
    return _multiple_of_patch(k * height, size), _multiple_of_patch(k * width, size)


@torch.no_grad()
def estimate_depth(net: DepthAnythingV2, rgb: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """Depth of an (H, W, 3) uint8 RGB image as float32 (H, W) in 0..1, near = 1 (min-max normalised)."""
    import cv2

    h, w = rgb.shape[:2]
    th, tw = input_size(h, w, size)
    if (th // PATCH) * (tw // PATCH) > MAX_TOKENS:
        raise InvalidArgument(f"image: {w}x{h} is too long and thin for depth estimation (the long side may be "
                              f"at most {MAX_TOKENS // 37 ** 2} times the short side)")
    x = cv2.resize(rgb.astype(np.float32) / 255.0, (tw, th), interpolation=cv2.INTER_CUBIC)
    x = (x - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    param = next(net.parameters())
    x = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None].to(param.device, param.dtype)
    depth = net(x)[:, None].float()
    depth = F.interpolate(depth, (h, w), mode="bilinear", align_corners=True)[0, 0]
    low, high = depth.min(), depth.max()
    return ((depth - low) / (high - low).clamp_min(1e-8)).cpu().numpy()
