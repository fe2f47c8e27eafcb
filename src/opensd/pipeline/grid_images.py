"""Image grids with labelled rows and columns, laid out as AUTOMATIC1111 lays out its X/Y/Z plot and
prompt matrix grids: cells side by side on black, then a white border above (column labels) and to
the left (row labels, 3/4 of a cell wide) with the text centred, wrapped to the space it has, and
shrunk when one word is still too wide. Labels use Pillow's own scalable font, so nothing is read
from the system. An inactive label (the prompt matrix's parts left out) is grey and struck through.
"""
from __future__ import annotations

import math
from typing import NamedTuple

from PIL import Image, ImageDraw, ImageFont

ACTIVE = (0, 0, 0)
INACTIVE = (153, 153, 153)


class Label(NamedTuple):
    text: str
    active: bool = True


def image_grid(images: list[Image.Image], rows: int) -> Image.Image:
    """The images in `rows` rows, left to right then top to bottom, each at the top left of a cell as
    large as the largest (A1111 sizes cells by the first image, which overlaps when sizes differ)."""
    rows = max(1, min(rows, len(images)))
    cols = math.ceil(len(images) / rows)
    w, h = max(im.width for im in images), max(im.height for im in images)
    grid = Image.new("RGB", (cols * w, rows * h), "black")
    for i, image in enumerate(images):
        grid.paste(image, (i % cols * w, i // cols * h))
    return grid


def _font(size: int):
    return ImageFont.load_default(size=max(1, size))


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: float) -> list[str]:
    lines = [""]
    for word in text.split():
        joined = f"{lines[-1]} {word}".strip()
        if draw.textlength(joined, font=font) <= width or not lines[-1]:
            lines[-1] = joined
        else:
            lines.append(word)
    return lines


def annotate(grid: Image.Image, cell_w: int, cell_h: int, columns: list[list[Label]],
             rows: list[list[Label]], margin: int = 0) -> Image.Image:
    """`grid` (cells of cell_w x cell_h) with the labels of each column above it and of each row to
    its left, and `margin` pixels between cells."""
    n_cols, n_rows = grid.width // cell_w, grid.height // cell_h
    if len(columns) != n_cols or len(rows) != n_rows:
        raise ValueError(f"{len(columns)} column and {len(rows)} row labels for a {n_cols}x{n_rows} grid")
    size = (cell_w + cell_h) // 25
    spacing = size // 2
    font = _font(size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    pad_left = cell_w * 3 // 4 if any(label.text for labels in rows for label in labels) else 0

    def lay_out(labels: list[Label], width: int) -> list[tuple[str, bool, tuple[int, int]]]:
        out = []
        for label in labels:
            if not label.text:
                continue
            for line in _wrap(measure, label.text, font, width):
                box = measure.multiline_textbbox((0, 0), line, font=font)
                out.append((line, label.active, (box[2] - box[0], box[3] - box[1])))
        return out

    col_lines = [lay_out(labels, cell_w) for labels in columns]
    row_lines = [lay_out(labels, pad_left) for labels in rows]

    def height(lines) -> int:
        return sum(s[1] + spacing for _, _, s in lines) - spacing if lines else 0

    tallest = max(height(lines) for lines in col_lines)
    pad_top = tallest + spacing * 2 if tallest > 0 else 0
    out = Image.new("RGB", (grid.width + pad_left + margin * (n_cols - 1),
                            grid.height + pad_top + margin * (n_rows - 1)), "white")
    for r in range(n_rows):
        for c in range(n_cols):
            cell = grid.crop((c * cell_w, r * cell_h, (c + 1) * cell_w, (r + 1) * cell_h))
            out.paste(cell, (pad_left + (cell_w + margin) * c, pad_top + (cell_h + margin) * r))
    draw = ImageDraw.Draw(out)

    def write(x: float, y: float, lines, width: int) -> None:
        for text, active, (w, h) in lines:
            f, s = font, size
            while s > 1 and draw.textlength(text, font=f) > width:  # one word too wide: smaller type
                s -= 1
                f = _font(s)
            colour = ACTIVE if active else INACTIVE
            draw.text((x, y + h / 2), text, font=f, fill=colour, anchor="mm")
            if not active:
                draw.line((x - w // 2, y + h // 2, x + w // 2, y + h // 2), fill=INACTIVE, width=max(1, size // 8))
            y += h + spacing

    for c, lines in enumerate(col_lines):
        write(pad_left + (cell_w + margin) * c + cell_w / 2, pad_top / 2 - height(lines) / 2, lines, cell_w)
    for r, lines in enumerate(row_lines):
        write(pad_left / 2, pad_top + (cell_h + margin) * r + cell_h / 2 - height(lines) / 2, lines, pad_left)
    return out


def prompt_matrix_labels(parts: list[str]) -> tuple[list[list[Label]], list[list[Label]]]:
    """Column and row labels of a prompt matrix over `parts` (the optional parts, without the base):
    the first half labels the columns, the rest the rows; each shows every part, active or not."""
    across, down = parts[:math.ceil(len(parts) / 2)], parts[math.ceil(len(parts) / 2):]

    def labels(group: list[str]) -> list[list[Label]]:
        return [[Label(text, bool(pos & (1 << i))) for i, text in enumerate(group)] for pos in range(1 << len(group))]

    return labels(across), labels(down)
