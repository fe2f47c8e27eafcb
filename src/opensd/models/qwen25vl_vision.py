"""Qwen2.5-VL's vision tower: image patches in, one feature per 2x2 patches out at the language
model's width. Qwen-Image-Edit's text encoder looks at the condition image through it.

Attribute names equal the keys of the released files under `visual.` (ComfyUI's
qwen_2.5_vl_7b*.safetensors, Qwen's own) and under `model.visual.` (transformers >= 4.52):
`patch_embed.proj.weight`, `blocks.N.{norm1,norm2}.weight`, `blocks.N.attn.{qkv,proj}.*`,
`blocks.N.mlp.{gate_proj,up_proj,down_proj}.*`, `merger.ln_q.weight`, `merger.mlp.{0,2}.*`.

The architecture, as transformers' Qwen2_5_VisionTransformerPretrainedModel runs it:

* patch embedding: a bias-free Conv3d over (temporal 2) x 14 x 14 patches, which the image
  processor hands over already flattened in (channel, time, row, column) order, so it is one
  matrix product. A still image is its own frame twice; then the product over both frames equals
  the one of the frame with the kernel summed over time (`PatchEmbed.still`, forward(still=True): the
  exact 2-D form);
* tokens come in the processor's order: 2x2 blocks of patches (the merge unit) row by row, the 4
  patches of a block consecutive;
* 2-D rotary embedding: the head's first half turns with the patch row, the second with its
  column (each over head_dim / 4 frequencies, theta 10000), "rotate half" layout, in fp32;
* pre-norm blocks (RMSNorm eps 1e-6): x + attn(rms(x)), x + mlp(rms(x)); the attention is over
  the whole frame in the blocks listed in `fullatt_block_indexes` and within windows of
  window_size / patch_size patches a side (8x8 for the released model) in the others; the windows
  tile each frame from its top-left corner, the last row and column of windows cut short;
* SwiGLU feed-forward with biases: down(silu(gate(x)) * up(x));
* the merger: RMSNorm, then each merge unit's 4 tokens side by side -> Linear, GELU, Linear to
  the language model's width. Out come the merged tokens row by row (what transformers gives after
  undoing its window order: here the tokens never leave the processor's order, the windows are
  attention masks).
Images are independent: each is run on its own.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import attention
from .norms import RMSNorm


@dataclass(frozen=True)
class QwenVisionConfig:
    """Field names as transformers' Qwen2_5_VLVisionConfig; the defaults are Qwen2.5-VL-7B's."""
    depth: int = 32
    hidden_size: int = 1280
    intermediate_size: int = 3420
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    window_size: int = 112
    out_hidden_size: int = 3584
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_values(self) -> int:
        """Numbers per patch as the processor flattens it (channels x frames x rows x columns)."""
        return self.in_channels * self.temporal_patch_size * self.patch_size ** 2


QWEN25_VL_7B_VISION = QwenVisionConfig()


def patch_positions(t: int, h: int, w: int, merge: int) -> torch.Tensor:
    """(t*h*w, 2) (row, column) of every patch in the processor's order (merge units row by row,
    the units' patches row by row; frames one after another)."""
    rows = torch.arange(h).view(h // merge, merge, 1, 1).expand(h // merge, merge, w // merge, merge)
    cols = torch.arange(w).view(1, 1, w // merge, merge).expand(h // merge, merge, w // merge, merge)
    pos = torch.stack([rows.transpose(1, 2).flatten(), cols.transpose(1, 2).flatten()], dim=-1)
    return pos.repeat(t, 1)


def window_ids(t: int, h: int, w: int, merge: int, window: int) -> torch.Tensor:
    """(t*h*w,) the attention window of every patch in the processor's order; `window` patches a
    side, a multiple of `merge`."""
    pos = patch_positions(1, h, w, merge)
    per_row = -(-w // window)
    one = (pos[:, 0] // window) * per_row + pos[:, 1] // window
    frames = -(-h // window) * per_row
    return torch.cat([one + f * frames for f in range(t)])


def rope_2d(pos: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (N, head_dim) fp32, for patch positions (N, 2)."""
    quarter = head_dim // 2
    inv = 1.0 / theta ** (torch.arange(0, quarter, 2, dtype=torch.float32) / quarter)
    angles = (pos.float()[:, :, None] * inv).flatten(1)  # rows' angles, then columns'
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def _turn(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (1, N, heads, head_dim) turned in fp32, back in its dtype."""
    xf = x.float()
    first, second = xf.chunk(2, dim=-1)
    return (xf * cos[:, None] + torch.cat([-second, first], dim=-1) * sin[:, None]).to(x.dtype)


def _within(group: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The additive attention mask letting each token see only the tokens of its own group."""
    same = group[:, None] == group[None, :]
    return torch.zeros(same.shape, dtype=like.dtype, device=like.device).masked_fill(~same.to(like.device), float("-inf"))


class VisionAttention(nn.Module):
    def __init__(self, cfg: QwenVisionConfig):
        super().__init__()
        self.heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)
        self.proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None):
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, -1).unbind(2)
        q, k = _turn(q, cos, sin).flatten(2), _turn(k, cos, sin).flatten(2)
        return self.proj(attention(q, k, v.flatten(2), self.heads, mask=mask))


class VisionMLP(nn.Module):
    def __init__(self, cfg: QwenVisionConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class VisionBlock(nn.Module):
    def __init__(self, cfg: QwenVisionConfig):
        super().__init__()
        self.norm1 = RMSNorm(cfg.hidden_size, 1e-6)
        self.norm2 = RMSNorm(cfg.hidden_size, 1e-6)
        self.attn = VisionAttention(cfg)
        self.mlp = VisionMLP(cfg)

    def forward(self, x, cos, sin, mask):
        x = x + self.attn(self.norm1(x), cos, sin, mask)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    def __init__(self, cfg: QwenVisionConfig):
        super().__init__()
        self.units = cfg.spatial_merge_size ** 2
        wide = cfg.hidden_size * self.units
        self.ln_q = RMSNorm(cfg.hidden_size, 1e-6)
        self.mlp = nn.Sequential(nn.Linear(wide, wide), nn.GELU(), nn.Linear(wide, cfg.out_hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, hidden), merge units consecutive -> (N / units, out_hidden_size)."""
        return self.mlp(self.ln_q(x).reshape(x.shape[0] // self.units, -1))


class PatchEmbed(nn.Module):
    def __init__(self, cfg: QwenVisionConfig):
        super().__init__()
        kernel = (cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size)
        self.proj = nn.Conv3d(cfg.in_channels, cfg.hidden_size, kernel, stride=kernel, bias=False)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """patches (N, channels * frames * rows * columns) -> (N, hidden)."""
        w = self.proj.weight
        return F.linear(patches.to(w.dtype), w.flatten(1))

    def still(self, patches: torch.Tensor) -> torch.Tensor:
        """patches of a still image (N, channels * rows * columns), one frame: the same as
        forward on the frame repeated over the kernel's frames."""
        w = self.proj.weight
        return F.linear(patches.to(w.dtype), w.sum(2).flatten(1))


class QwenVisionTower(nn.Module):
    """transformers' Qwen2_5_VisionTransformerPretrainedModel (its pooled, merged output)."""

    def __init__(self, cfg: QwenVisionConfig = QWEN25_VL_7B_VISION):
        super().__init__()
        if cfg.window_size % (cfg.patch_size * cfg.spatial_merge_size):
            raise ValueError("window_size must be a multiple of patch_size * spatial_merge_size")
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.blocks = nn.ModuleList(VisionBlock(cfg) for _ in range(cfg.depth))
        self.merger = PatchMerger(cfg)

    def _run(self, x: torch.Tensor, t: int, h: int, w: int) -> torch.Tensor:
        cfg = self.cfg
        m = cfg.spatial_merge_size
        cos, sin = (a.to(x.device) for a in rope_2d(patch_positions(t, h, w, m), cfg.head_dim, cfg.rope_theta))
        local = _within(window_ids(t, h, w, m, cfg.window_size // cfg.patch_size), x)
        whole = None if t == 1 else _within(torch.arange(t).repeat_interleave(h * w), x)
        x = x[None]
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, whole if i in cfg.fullatt_block_indexes else local)
        return self.merger(x[0])

    def forward(self, patches: torch.Tensor, grid_thw: Sequence[Sequence[int]] | torch.Tensor,
                still: bool = False) -> torch.Tensor:
        """patches (sum of t*h*w, patch_values) as Qwen2VLImageProcessor gives `pixel_values`
        (or, `still`, one frame's (channels * rows * columns) each), grid_thw the (t, h, w) in
        patches of each image -> (sum of t*h*w / 4, out_hidden_size), images one after another."""
        grid = [tuple(int(v) for v in g) for g in (grid_thw.tolist() if torch.is_tensor(grid_thw) else grid_thw)]
        m = self.cfg.spatial_merge_size
        if any(h % m or w % m for _, h, w in grid):
            raise ValueError(f"image grids {grid} must be multiples of {m} patches a side")
        if patches.shape[0] != sum(t * h * w for t, h, w in grid):
            raise ValueError(f"{patches.shape[0]} patches for grids {grid}")
        x = self.patch_embed.still(patches) if still else self.patch_embed(patches)
        out, start = [], 0
        for t, h, w in grid:
            out.append(self._run(x[start:start + t * h * w], t, h, w))
            start += t * h * w
        return torch.cat(out)
