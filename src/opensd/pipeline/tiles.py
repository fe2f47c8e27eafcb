"""An image cut into overlapping tiles and put back together, as A1111's SD upscale does it.

Tiles are `tile_w x tile_h`; columns and rows are as few as cover the image with at least `overlap`
pixels shared between neighbours, spread evenly (the last one flush with the edge). Putting back,
each tile is pasted over the one before it with a linear ramp across the overlap, first along each
row, then row over row, so the seams fade instead of showing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image


@dataclass
class Tiles:
    width: int
    height: int
    tile_w: int
    tile_h: int
    overlap: int
    rows: list[tuple[int, list[tuple[int, Image.Image]]]] = field(default_factory=list)  # (y, [(x, tile)])

    def images(self) -> list[Image.Image]:
        return [tile for _, row in self.rows for _, tile in row]

    def replaced(self, images: list[Image.Image]) -> "Tiles":
        """The same layout holding `images` (in images() order)."""
        it = iter(images)
        rows = [(y, [(x, next(it)) for x, _ in row]) for y, row in self.rows]
        return Tiles(self.width, self.height, self.tile_w, self.tile_h, self.overlap, rows)


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    count = max(1, math.ceil((size - overlap) / (tile - overlap)))
    step = (size - tile) / (count - 1) if count > 1 else 0
    return [min(int(i * step), max(0, size - tile)) for i in range(count)]


def split(image: Image.Image, tile_w: int, tile_h: int, overlap: int) -> Tiles:
    if not 0 <= overlap < min(tile_w, tile_h):
        raise ValueError(f"overlap {overlap} must be smaller than the tile ({tile_w}x{tile_h})")
    out = Tiles(image.width, image.height, tile_w, tile_h, overlap)
    for y in _starts(image.height, tile_h, overlap):
        out.rows.append((y, [(x, image.crop((x, y, x + tile_w, y + tile_h)))
                             for x in _starts(image.width, tile_w, overlap)]))
    return out


def _ramp(length: int, across: int, vertical: bool) -> Image.Image:
    values = (np.arange(length, dtype=np.float32) * 255 / max(length, 1)).astype(np.uint8)
    grid = np.repeat(values[:, None], across, axis=1) if vertical else np.repeat(values[None, :], across, axis=0)
    return Image.fromarray(grid, "L")


def combine(tiles: Tiles) -> Image.Image:
    o, th = tiles.overlap, tiles.tile_h
    out = Image.new("RGB", (tiles.width, tiles.height))
    for y, row in tiles.rows:
        strip = Image.new("RGB", (tiles.width, th))
        for x, tile in row:
            if x == 0 or o == 0:
                strip.paste(tile, (x, 0))
                continue
            strip.paste(tile.crop((0, 0, o, th)), (x, 0), mask=_ramp(o, th, vertical=False))
            strip.paste(tile.crop((o, 0, tile.width, th)), (x + o, 0))
        if y == 0 or o == 0:
            out.paste(strip, (0, y))
            continue
        out.paste(strip.crop((0, 0, tiles.width, o)), (0, y), mask=_ramp(o, tiles.width, vertical=True))
        out.paste(strip.crop((0, o, tiles.width, th)), (0, y + o))
    return out
