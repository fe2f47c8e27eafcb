"""The X/Y/Z plot: one generation per combination of up to three axes' values, laid out as a labelled
grid per Z value and those side by side, as AUTOMATIC1111's script does.

- Seeds: unless "Keep -1 for seeds", a random seed (-1, in the request or on a Seed axis) is fixed
  once, so every cell starts from the same noise; "Vary seeds for X/Y/Z" adds the cell's index.
- Every cell is built and checked before the first image (a bad value is refused naming its axis);
  cells run with the costliest axis outermost (checkpoints, then VAEs), one progress count over all.
- Results, as A1111 returns them: the grid, then with "Include Sub Grids" one grid per Z value, then
  with "Include Sub Images" every cell's images. Cells keep their own infotexts; a grid's infotext
  is its first cell's with "Script", "X Type", "X Values" (and Y, Z, "Fixed X Values" for seeds).
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass

from PIL import Image

from ..errors import InvalidArgument
from ..pipeline.grid_images import Label, annotate, image_grid
from .infotexts import add_params
from .script_args import flag, number
from .spec import Face, Generated, Progress, ScriptResult, Spec, check, fixed_seed, run_specs
from .value_lists import MAX_VALUES, float_values, int_values, split_values
from .xyz_axes import AXES, FLOAT, INT, ORDER, AxisType, find_axis, permutations

TITLE = "X/Y/Z plot"
MAX_CELLS = 10_000  # X x Y x Z images; each axis alone takes up to value_lists.MAX_VALUES


@dataclass
class Axis:
    type: AxisType
    values: list
    text: str = ""  # the values as the user wrote them (the grid's infotext keeps them)

    @property
    def labels(self) -> list[str]:
        return [self.type.label_of(v) for v in self.values]


NOTHING = Axis(AXES[0], [0])


@dataclass
class GridOptions:
    draw_legend: bool = True
    include_lone_images: bool = False
    include_sub_grids: bool = False
    no_fixed_seeds: bool = False
    vary_seeds: tuple[bool, bool, bool] = (False, False, False)
    margin: int = 0


def read_axis(key, text: str | None, dropdown, csv_mode: bool, base: Spec, img2img: bool, which: str) -> Axis:
    """Axis `which` ("X", "Y", "Z") of type `key` (A1111 index or label) with its values: from the
    dropdown list where A1111 offers one (unless `csv_mode`), else from the text."""
    kind = find_axis(key, img2img, f"{which} type")
    if kind.label == "Nothing":
        return NOTHING
    where = f"{which} values"
    if kind.choices and not csv_mode and dropdown:
        if not isinstance(dropdown, list) or not all(isinstance(v, str) for v in dropdown):
            raise InvalidArgument(f"{where}: expected a list of names, got {dropdown!r}")
        items = [v.strip() for v in dropdown]
        buf = io.StringIO()
        csv.writer(buf).writerow(items)
        text = buf.getvalue().strip()
    else:
        if not isinstance(text, str):
            raise InvalidArgument(f"{where}: expected text, got {text!r}")
        items = split_values(text)
    if len(items) > MAX_VALUES:  # number axes count their ranges' values too (value_lists)
        raise InvalidArgument(f"{where}: more than {MAX_VALUES} values")
    try:
        values = (int_values(items) if kind.kind == INT else float_values(items) if kind.kind == FLOAT
                  else permutations(items) if kind.kind == ORDER else items)
    except InvalidArgument as e:
        raise InvalidArgument(f"{where}: {e}") from None
    if not values:
        raise InvalidArgument(f"{where}: no values given for the {kind.label!r} axis")
    if kind.label == "Prompt S/R" and values[0] not in base.prompt and values[0] not in base.negative_prompt:
        raise InvalidArgument(f"{where}: Prompt S/R did not find {values[0]!r} in the prompt or the negative prompt")
    return Axis(kind, values, text)


def cells(base: Spec, axes: tuple[Axis, Axis, Axis], options: GridOptions, face: Face) -> list[Spec]:
    """Every cell's Spec, X fastest, then Y, then Z; each checked as the pipeline would."""
    x, y, z = axes
    count = len(x.values) * len(y.values) * len(z.values)
    if count > MAX_CELLS:  # checked before any cell is built: 1000 x 1000 x 1000 held the server and its memory
        raise InvalidArgument(f"script_args: {len(x.values)} x {len(y.values)} x {len(z.values)} = {count:,} cells; "
                              f"the X/Y/Z plot takes at most {MAX_CELLS:,}")
    if not options.no_fixed_seeds:
        base = base.but(seed=fixed_seed(base.seed))
        for axis in axes:
            if axis.type.label in ("Seed", "Var. seed"):
                axis.values = [fixed_seed(v) for v in axis.values]
    out = []
    for iz, zv in enumerate(z.values):
        for iy, yv in enumerate(y.values):
            for ix, xv in enumerate(x.values):
                spec = base.but()
                for which, axis, value in (("X", x, xv), ("Y", y, yv), ("Z", z, zv)):
                    try:
                        axis.type.apply(spec, value, axis.values, face)
                    except InvalidArgument as e:
                        raise InvalidArgument(f"{which} values: {e}") from None
                vary = options.vary_seeds
                if spec.seed != -1:
                    spec.seed += vary[0] * ix + vary[1] * iy * len(x.values) + vary[2] * iz * len(x.values) * len(y.values)
                check(spec, f"X/Y/Z cell {x.labels[ix] or '-'} / {y.labels[iy] or '-'} / {z.labels[iz] or '-'}")
                out.append(spec)
    return out


def processing_order(axes: tuple[Axis, Axis, Axis]) -> list[int]:
    """Cell indices with the costliest axis outermost (A1111: on ties Z, then Y, outermost)."""
    counts = [len(a.values) for a in axes]
    costs = [a.type.cost for a in axes]
    ranked = sorted(range(3), key=lambda i: (-costs[i], -i))  # ties: z before y before x
    strides = [1, counts[0], counts[0] * counts[1]]
    order = []

    def walk(level: int, base: int) -> None:
        if level == 3:
            order.append(base)
            return
        axis = ranked[level]
        for i in range(counts[axis]):
            walk(level + 1, base + i * strides[axis])

    walk(0, 0)
    return order


def run(base: Spec, axes: tuple[Axis, Axis, Axis], options: GridOptions, face: Face,
        progress: Progress | None = None) -> ScriptResult:
    specs = cells(base, axes, options, face)
    results, interrupted = run_specs(face, specs, progress, processing_order(axes))
    return compose(base, axes, options, results, interrupted)


def image_count(axes: tuple[Axis, Axis, Axis], options: GridOptions, specs: list[Spec]) -> int:
    """How many images `run` returns for these cells when not interrupted (as `compose` lays them out)."""
    grids = 1 + (len(axes[2].values) if options.include_sub_grids else 0)
    return grids + (sum(s.images for s in specs) if options.include_lone_images else 0)


def _picture(g: Generated | None) -> Image.Image | None:
    if g is None or not g.made:
        return None
    if len(g.made) == 1:
        return g.made[0].image
    return image_grid([m.image for m in g.made], rows=round(math.sqrt(len(g.made))))


def _labels(texts: list[str]) -> list[list[Label]]:
    return [[Label(t)] for t in texts]


def _script_params(axes: tuple[Axis, ...], names: str, options: GridOptions) -> dict:
    out: dict = {"Script": TITLE}
    for name, axis in zip(names, axes):
        if axis.type.label == "Nothing":
            continue
        out[f"{name} Type"] = axis.type.label
        out[f"{name} Values"] = axis.text
        if axis.type.label in ("Seed", "Var. seed") and not options.no_fixed_seeds:
            out[f"Fixed {name} Values"] = ", ".join(str(v) for v in axis.values)
    return out


def compose(base: Spec, axes: tuple[Axis, Axis, Axis], options: GridOptions, results: list[Generated | None],
            interrupted: bool) -> ScriptResult:
    x, y, z = axes
    per_z = len(x.values) * len(y.values)
    pictures = [_picture(g) for g in results]
    first = next((p for p in pictures if p is not None), None)
    blank = Image.new("RGB", first.size if first else (base.kwargs.get("width") or 64, base.kwargs.get("height") or 64))
    pictures = [p if p is not None else blank for p in pictures]
    texts = [g.made[0].infotext if g is not None and g.made else "" for g in results]
    fallback = next((t for t in texts if t), "")
    sub_grids, sub_texts = [], []
    for iz in range(len(z.values)):
        group = pictures[iz * per_z:(iz + 1) * per_z]
        grid = image_grid(group, rows=len(y.values))
        if options.draw_legend:
            cw, ch = max(p.width for p in group), max(p.height for p in group)
            grid = annotate(grid, cw, ch, _labels(x.labels), _labels(y.labels), options.margin)
        sub_grids.append(grid)
        sub_texts.append(add_params(texts[iz * per_z] or fallback, _script_params((x, y), "XY", options))
                         if fallback else "")
    main = image_grid(sub_grids, rows=1)
    if options.draw_legend and len(z.values) > 1:
        main = annotate(main, max(g.width for g in sub_grids), max(g.height for g in sub_grids),
                        _labels(z.labels), [[Label("")]])
    main_text = add_params(sub_texts[0], _script_params(axes, "XYZ", options)) if fallback else ""
    images, infotexts = [main], [main_text]
    if options.include_sub_grids:
        images += sub_grids
        infotexts += sub_texts
    grids = len(images)
    made = [m for g in results if g is not None for m in g.made]
    if options.include_lone_images:
        images += [m.image for m in made]
        infotexts += [m.infotext for m in made]
    return ScriptResult(images, infotexts, made, grids, interrupted)


# A1111's script_args, in the order its X/Y/Z plot takes them (1.7 to 1.10; 1.6 had no vary_seeds_*).
ARG_NAMES = ("x_type", "x_values", "x_values_dropdown", "y_type", "y_values", "y_values_dropdown",
             "z_type", "z_values", "z_values_dropdown", "draw_legend", "include_lone_images",
             "include_sub_grids", "no_fixed_seeds", "vary_seeds_x", "vary_seeds_y", "vary_seeds_z",
             "margin_size", "csv_mode")
ARG_DEFAULTS = (0, "", [], 0, "", [], 0, "", [], True, False, False, False, False, False, False, 0, False)
_V16 = tuple(n for n in ARG_NAMES if not n.startswith("vary_seeds"))


def from_script_args(args: list, base: Spec, img2img: bool) -> tuple[tuple[Axis, Axis, Axis], GridOptions]:
    """The axes and options of an A1111 request's `script_args`."""
    if not isinstance(args, list) or not 2 <= len(args) <= len(ARG_NAMES):
        raise InvalidArgument(f"script_args: the X/Y/Z plot takes 2 to {len(ARG_NAMES)} arguments "
                              f"({', '.join(ARG_NAMES)}), got {len(args) if isinstance(args, list) else args!r}")
    names = _V16 if len(args) == len(_V16) else ARG_NAMES
    a = dict(zip(ARG_NAMES, ARG_DEFAULTS)) | dict(zip(names, args))
    for name in ("draw_legend", "include_lone_images", "include_sub_grids", "no_fixed_seeds", "vary_seeds_x",
                 "vary_seeds_y", "vary_seeds_z", "csv_mode"):
        flag(a[name], name)
    margin = number(a["margin_size"], "margin_size", 0, 500)
    axes = tuple(read_axis(a[f"{w}_type"], a[f"{w}_values"], a[f"{w}_values_dropdown"], a["csv_mode"], base,
                           img2img, w.upper()) for w in "xyz")
    options = GridOptions(a["draw_legend"], a["include_lone_images"], a["include_sub_grids"], a["no_fixed_seeds"],
                          (a["vary_seeds_x"], a["vary_seeds_y"], a["vary_seeds_z"]), int(margin))
    return axes, options  # type: ignore[return-value]
