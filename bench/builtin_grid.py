"""The built-in model's sample grid: 16 varied prompts, one image each, labelled.

    python bench/builtin_grid.py [--model PATH] [--out docs/builtin-samples.png]

Every image: txt2img at 64x64, 20 steps, CFG 7, seed 1, the pipeline's default sampler; shown 2x
with nearest-neighbour so the pixels stay visible.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw

import opensd
from opensd.training.builtin import DEFAULT_OUT

PROMPTS = (
    "a red apple", "grinning face, noto emoji style", "grinning face, twemoji style", "dog face",
    "cat face, twemoji style", "rocket, noto emoji style", "thumbs up, dark skin tone", "thumbs up, light skin tone",
    "red heart", "blue heart", "japan flag", "sun with face",
    "pizza, noto emoji style", "birthday cake", "smiling face with sunglasses", "woman scientist, medium skin tone",
)
SCALE, LABEL_H, COLS = 2, 14, 4


def grid(model: Path, prompts=PROMPTS) -> Image.Image:
    pipe = opensd.load(model)
    cell = 64 * SCALE
    rows = -(-len(prompts) // COLS)
    sheet = Image.new("RGB", (COLS * cell, rows * (cell + LABEL_H)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, prompt in enumerate(prompts):
        image = pipe.txt2img(prompt, steps=20, cfg=7, seed=1)
        image = (image[0] if isinstance(image, list) else image).resize((cell, cell), Image.NEAREST)
        x, y = (i % COLS) * cell, (i // COLS) * (cell + LABEL_H)
        sheet.paste(image, (x, y))
        draw.text((x + 2, y + cell + 1), prompt[:24], fill="black")
    return sheet


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--out", type=Path, default=Path("docs/builtin-samples.png"))
    a = ap.parse_args(argv)
    grid(a.model).save(a.out, optimize=True)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
