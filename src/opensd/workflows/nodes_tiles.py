"""comfyui-tooling-nodes' tile nodes, which Krita AI Diffusion's tiled upscale ("Upscale" with refine)
emits: ETN_TileLayout splits an image into a grid of overlapping tiles, ETN_ExtractImageTile /
ETN_ExtractMaskTile cut tile `index` out, ETN_GenerateTileMask gives the area a tile owns (its
padding toward neighbours excluded; with `blend`, the edge softened by a box blur of `blending`
pixels) and ETN_MergeImageTile lays a tile back through its blended mask.

The grid, as the client computes it too: per axis (height first), count = max(1, size // (min_tile_size
- 2 padding)); every tile is ceil((size + (count - 1) 2 padding) / count) rounded up to `multiple`;
tile k starts at k (tile - 2 padding) and ends at its start + tile, clipped to the image. Tile
`index` is row index % rows, column index // rows."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import InvalidArgument
from .types import NodeDef, register

_MODULE = "custom_nodes.comfyui-tooling-nodes"
_CATEGORY = "external_tooling/tiles"


@dataclass(frozen=True)
class TileLayout:
    size: tuple[int, int]  # image (H, W)
    tile: tuple[int, int]
    count: tuple[int, int]
    padding: int
    blending: int

    @staticmethod
    def of(h: int, w: int, min_tile_size: int, padding: int, blending: int, multiple: int) -> TileLayout:
        if h % multiple or w % multiple or min_tile_size % multiple:
            raise InvalidArgument(f"image: {w}x{h} and min_tile_size {min_tile_size} must be multiples of {multiple}")
        if blending > padding:
            raise InvalidArgument(f"blending: {blending} must not exceed padding {padding}")
        if min_tile_size <= 2 * padding:
            raise InvalidArgument(f"min_tile_size: {min_tile_size} must exceed twice the padding ({padding})")
        count = tuple(max(1, n // (min_tile_size - 2 * padding)) for n in (h, w))
        tile = tuple(_ceil_div(_ceil_div(n + (c - 1) * 2 * padding, c), multiple) * multiple
                     for n, c in zip((h, w), count))
        return TileLayout((h, w), tile, count, padding, blending)

    @property
    def total(self) -> int:
        return self.count[0] * self.count[1]

    def coord(self, index: int) -> tuple[int, int]:
        if not 0 <= index < self.total:
            raise InvalidArgument(f"index: {index} is not a tile of this layout (0 to {self.total - 1})")
        return index % self.count[0], index // self.count[0]

    def span(self, axis: int, k: int, pad: int = 0) -> tuple[int, int]:
        """Start and end of tile k along `axis`, moved inward by `pad` where a neighbour lies."""
        start = k * (self.tile[axis] - 2 * self.padding)
        end = start + self.tile[axis] - (pad if k < self.count[axis] - 1 else 0)
        return start + (pad if k > 0 else 0), max(0, min(end, self.size[axis]))

    def rect(self, index: int) -> tuple[slice, slice]:
        c = self.coord(index)
        return tuple(slice(*self.span(axis, c[axis])) for axis in (0, 1))

    def mask(self, index: int, blend: bool) -> torch.Tensor:
        """(1, h, w): 1 on what the tile owns."""
        c = self.coord(index)
        pad = self.padding if blend else self.padding - self.blending
        (y0, y1), (x0, x1) = (self.span(axis, c[axis]) for axis in (0, 1))
        (iy0, iy1), (ix0, ix1) = (self.span(axis, c[axis], pad) for axis in (0, 1))
        mask = torch.zeros(1, 1, y1 - y0, x1 - x0)
        mask[..., iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] = 1.0
        if blend and self.blending > 0:
            mask = _box_blur(mask, self.blending)
        return mask[0]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _box_blur(x: torch.Tensor, n: int) -> torch.Tensor:
    """Mean over n x n windows, borders mirrored; an even window reaches one pixel further after
    the centre than before it (kornia's box_blur). One axis at a time."""
    before, after = (n - 1) // 2, n - 1 - (n - 1) // 2
    for pads, kernel in (((before, after, 0, 0), (1, n)), ((0, 0, before, after), (n, 1))):
        mode = "reflect" if max(before, after) < min(x.shape[-2:]) else "replicate"
        x = F.avg_pool2d(F.pad(x, pads, mode=mode), kernel, stride=1)
    return x


def _layout(value) -> TileLayout:
    if not isinstance(value, TileLayout):
        raise InvalidArgument("layout: expected an ETN_TileLayout")
    return value


def create_layout(call, image, min_tile_size, padding, blending, multiple):
    return (TileLayout.of(image.shape[1], image.shape[2], min_tile_size, padding, blending, multiple),)


def extract_image_tile(call, image, layout, index):
    ys, xs = _layout(layout).rect(index)
    return (image[:, ys, xs, :],)


def extract_mask_tile(call, mask, layout, index):
    ys, xs = _layout(layout).rect(index)
    return (mask.reshape(-1, *mask.shape[-2:])[:, ys, xs],)


def generate_tile_mask(call, layout, index, blend=False):
    return (_layout(layout).mask(index, blend),)


def merge_image_tile(call, image, layout, index, tile):
    layout = _layout(layout)
    ys, xs = layout.rect(index)
    if tuple(image.shape[1:3]) != layout.size:
        raise InvalidArgument(f"image: {image.shape[2]}x{image.shape[1]} is not the layout's "
                              f"{layout.size[1]}x{layout.size[0]}")
    region = image[:, ys, xs, :]
    if tile.shape[1:] != region.shape[1:]:
        raise InvalidArgument(f"tile: {tile.shape[2]}x{tile.shape[1]} is not tile {index}'s "
                              f"{region.shape[2]}x{region.shape[1]}")
    mask = layout.mask(index, blend=True)[..., None].to(image)
    out = image.clone()  # the input may be another node's cached output
    out[:, ys, xs, :] = (1 - mask) * region + mask * tile.to(image)
    return (out,)


_INDEX = ("INT", {"default": 0, "min": 0})
register(NodeDef("ETN_TileLayout", create_layout,
                 {"image": ("IMAGE", {}), "min_tile_size": ("INT", {"default": 512, "min": 64, "max": 8192, "step": 8}),
                  "padding": ("INT", {"default": 32, "min": 0, "max": 8192, "step": 8}),
                  "blending": ("INT", {"default": 8, "min": 0, "max": 256, "step": 8}),
                  "multiple": ("INT", {"default": 8, "min": 1, "max": 1024, "step": 1})},
                 ("TileLayout",), output_names=("layout",), category=_CATEGORY, display_name="Create Tile Layout",
                 module=_MODULE))
register(NodeDef("ETN_ExtractImageTile", extract_image_tile,
                 {"image": ("IMAGE", {}), "layout": ("TileLayout", {}), "index": _INDEX}, ("IMAGE",),
                 output_names=("tile",), category=_CATEGORY, display_name="Extract Image Tile", module=_MODULE))
register(NodeDef("ETN_ExtractMaskTile", extract_mask_tile,
                 {"mask": ("MASK", {}), "layout": ("TileLayout", {}), "index": _INDEX}, ("MASK",),
                 output_names=("tile",), category=_CATEGORY, display_name="Extract Mask Tile", module=_MODULE))
register(NodeDef("ETN_GenerateTileMask", generate_tile_mask, {"layout": ("TileLayout", {}), "index": _INDEX},
                 ("MASK",), output_names=("mask",), optional={"blend": ("BOOLEAN", {"default": False})},
                 category=_CATEGORY, display_name="Generate Tile Mask", module=_MODULE))
register(NodeDef("ETN_MergeImageTile", merge_image_tile,
                 {"image": ("IMAGE", {}), "layout": ("TileLayout", {}), "index": _INDEX, "tile": ("IMAGE", {})},
                 ("IMAGE",), output_names=("image",), category=_CATEGORY, display_name="Merge Image Tile",
                 module=_MODULE))
