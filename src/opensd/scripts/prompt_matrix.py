"""Prompt matrix (A1111's script): the prompt `base | a | b | c` makes one image for every subset of
the optional parts (2**3 here), each `base, a, c` (or the parts first, with "Set at prompt start";
joined by ", " or " "), all from the same seed unless "Random seeds" (then seed + i). The grid puts
the first half of the parts across and the rest down, each label struck through where its part is
left out; it comes first, then every image. With "Prompt type" negative, the negative prompt is the
one split.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidArgument
from ..pipeline.grid_images import annotate, image_grid, prompt_matrix_labels
from .script_args import choice, flag, number
from .spec import Face, Progress, ScriptResult, Spec, check, fixed_seed, run_specs

TITLE = "Prompt matrix"
MAX_PARTS = 12  # optional parts: 4096 images
ARG_NAMES = ("put_at_start", "different_seeds", "prompt_type", "variations_delimiter", "margin_size")


@dataclass
class MatrixOptions:
    put_at_start: bool = False
    different_seeds: bool = False
    prompt_type: str = "positive"
    variations_delimiter: str = "comma"
    margin: int = 0


def from_script_args(args: list) -> MatrixOptions:
    if not isinstance(args, list) or len(args) > len(ARG_NAMES):
        raise InvalidArgument(f"script_args: the prompt matrix takes at most {len(ARG_NAMES)} arguments "
                              f"({', '.join(ARG_NAMES)})")
    o = MatrixOptions(*args)
    flag(o.put_at_start, "put_at_start")
    flag(o.different_seeds, "different_seeds")
    choice(o.prompt_type, "prompt_type", ("positive", "negative"))
    choice(o.variations_delimiter, "variations_delimiter", ("comma", "space"))
    o.margin = int(number(o.margin, "margin_size", 0, 500))
    return o


def parts_of(base: Spec, options: MatrixOptions) -> list[str]:
    text = base.prompt if options.prompt_type == "positive" else base.negative_prompt
    parts = text.split("|")
    if len(parts) - 1 > MAX_PARTS:
        raise InvalidArgument(f"prompt: {len(parts) - 1} optional parts make {2 ** (len(parts) - 1)} images; "
                              f"the prompt matrix takes at most {MAX_PARTS}")
    return parts


def prompts(parts: list[str], options: MatrixOptions) -> list[str]:
    """Every combination's text, in A1111's order (combination i holds the parts whose bit is set)."""
    joiner = ", " if options.variations_delimiter == "comma" else " "
    out = []
    for combination in range(2 ** (len(parts) - 1)):
        chosen = [t.strip().strip(",") for n, t in enumerate(parts[1:]) if combination & (1 << n)]
        out.append(joiner.join(chosen + [parts[0]] if options.put_at_start else [parts[0]] + chosen))
    return out


def cells(base: Spec, options: MatrixOptions) -> list[Spec]:
    seed = fixed_seed(base.seed)
    field = "prompt" if options.prompt_type == "positive" else "negative_prompt"
    out = []
    for i, text in enumerate(prompts(parts_of(base, options), options)):
        spec = base.but(seed=seed + (i if options.different_seeds else 0), n_iter=1, **{field: text})
        spec.kwargs["batch_size"] = 1
        check(spec, f"prompt matrix image {i + 1}")
        out.append(spec)
    return out


def image_count(specs: list[Spec]) -> int:
    """How many images `run` returns for these cells when not interrupted: the grid and every image."""
    return 1 + len(specs)


def run(base: Spec, options: MatrixOptions, face: Face, progress: Progress | None = None) -> ScriptResult:
    parts = parts_of(base, options)
    results, interrupted = run_specs(face, cells(base, options), progress)
    made = [g.made[0] for g in results if g is not None and g.made]
    if not made:
        return ScriptResult([], [], [], 0, interrupted)
    images = [m.image for m in made]
    if len(made) < len(results):  # interrupted: no grid of a partial matrix
        return ScriptResult(images, [m.infotext for m in made], made, 0, interrupted)
    grid = image_grid(images, rows=1 << ((len(parts) - 1) // 2))
    across, down = prompt_matrix_labels(parts[1:])
    grid = annotate(grid, images[0].width, images[0].height, across, down, options.margin)
    return ScriptResult([grid] + images, [made[0].infotext] + [m.infotext for m in made], made, 1, interrupted)
