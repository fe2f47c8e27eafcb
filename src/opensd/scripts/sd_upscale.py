"""SD upscale (A1111's img2img script): the init image is made `scale` times larger by an upscaler
(opensd.upscale: Lanczos, Nearest or a model; "None" leaves it as it is), cut
into tiles of the request's width x height overlapping by `overlap` pixels (opensd.pipeline.tiles),
each tile repainted by img2img, and the tiles blended back together. Tile t of upscale n (of
n_iter) uses seed + n + t, as A1111 counts them with batches of one. Each upscale is recorded as its
first tile (seed + n, that tile's infotext with "SD upscale overlap" and "SD upscale upscaler").
"""
from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from ..errors import InvalidArgument
from ..pipeline.tiles import Tiles, combine, split
from .infotexts import add_params
from .script_args import number
from .spec import Face, Progress, ScriptResult, Spec, check, fixed_seed, run_specs

TITLE = "SD upscale"
ARG_NAMES = ("info", "overlap", "upscaler_index", "scale_factor")
MAX_SCALE = 8


@dataclass
class UpscaleOptions:
    overlap: int = 64
    upscaler: str = "Lanczos"
    scale: float = 2.0


def from_script_args(args: list, face: Face) -> UpscaleOptions:
    """A1111's [info, overlap, upscaler_index, scale_factor]; the upscaler also by name."""
    if not isinstance(args, list) or len(args) != len(ARG_NAMES):
        raise InvalidArgument(f"script_args: SD upscale takes [{', '.join(ARG_NAMES)}] (info is ignored)")
    _, overlap, index, scale = args
    names = face.upscalers()
    if isinstance(index, int) and not isinstance(index, bool):
        if not 0 <= index < len(names):
            raise InvalidArgument(f"script_args: upscaler_index: {index} is outside 0..{len(names) - 1} "
                                  f"({', '.join(names)})")
        name = names[index]
    elif isinstance(index, str):
        name = face.upscaler(index)
    else:
        raise InvalidArgument(f"script_args: upscaler_index: {index!r} is not an index or name of "
                              f"{', '.join(names)}")
    number(overlap, "overlap", 0, 256, whole=True)
    return UpscaleOptions(overlap, name, float(number(scale, "scale_factor", 1, MAX_SCALE)))


def upscaled_size(image: Image.Image, options: UpscaleOptions) -> tuple[int, int]:
    """A1111's upscaler target: each side times the scale, rounded down to a multiple of 8 (the
    upscaler "None" keeps the image as it is)."""
    if options.upscaler == "None":
        return image.size
    return int(image.width * options.scale // 8 * 8), int(image.height * options.scale // 8 * 8)


def layout(base: Spec, init: Image.Image, options: UpscaleOptions) -> Tiles:
    """The tiles the upscaled image is cut into (blank: only the layout counts before upscaling)."""
    w, h = upscaled_size(init, options)
    tile_w, tile_h = base.kwargs["width"], base.kwargs["height"]
    if options.overlap >= min(tile_w, tile_h):
        raise InvalidArgument(f"script_args: overlap: {options.overlap} must be smaller than the tile "
                              f"(width x height: {tile_w}x{tile_h})")
    return split(Image.new("RGB", (w, h)), tile_w, tile_h, options.overlap)


def cells(base: Spec, tiles: Tiles) -> list[list[Spec]]:
    """Per upscale (n_iter of them), one img2img Spec per tile."""
    seed = fixed_seed(base.seed)
    out = []
    for n in range(base.n_iter):
        specs = []
        for t, tile in enumerate(tiles.images()):
            spec = base.but(seed=seed + n + t, n_iter=1, init=tile)
            spec.kwargs["batch_size"] = 1
            check(spec, f"SD upscale tile {t + 1}")
            specs.append(spec)
        out.append(specs)
    return out


def run(base: Spec, init: Image.Image, options: UpscaleOptions, face: Face,
        progress: Progress | None = None) -> ScriptResult:
    image = init if options.upscaler == "None" else face.upscale(init, options.upscaler, options.scale)
    tiles = split(image.convert("RGB"), base.kwargs["width"], base.kwargs["height"], options.overlap)
    groups = cells(base, tiles)
    flat = [spec for group in groups for spec in group]
    results, interrupted = run_specs(face, flat, progress)
    images, texts, made = [], [], []
    extra = {"SD upscale overlap": options.overlap, "SD upscale upscaler": options.upscaler}
    per = len(tiles.images())
    for n in range(len(groups)):
        group = results[n * per:(n + 1) * per]
        if interrupted and any(g is None or not g.made for g in group):
            break
        painted = [g.made[0].image if g.made else tile for g, tile in zip(group, tiles.images())]
        images.append(combine(tiles.replaced(painted)))
        # Each upscale is recorded as its first tile (seed + n): its seed, prompt and infotext.
        first = next((g.made[0] for g in group if g is not None and g.made), None)
        texts.append(add_params(first.infotext, extra) if first else "")
        if first:
            made.append(first)
    return ScriptResult(images, texts, made, 0, interrupted)
