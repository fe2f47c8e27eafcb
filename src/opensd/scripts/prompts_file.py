"""Prompts from file or textbox (A1111's script): one generation per non-empty line. A line is a prompt,
or, when it holds "--", options in A1111's command-line form:

    --prompt "a red apple" --negative_prompt blurry --steps 20 --cfg_scale 7 --seed 5 --width 512

`--prompt` and `--negative_prompt` take every word up to the next `--`. The options are A1111's:
prompt, negative_prompt, styles (comma-separated), seed, subseed, subseed_strength, sampler_name,
sampler_index, batch_size, n_iter, steps, cfg_scale, width, height, seed_resize_from_w,
seed_resize_from_h, tiling, restore_faces, sd_model;
outpath_samples, outpath_grids, prompt_for_display, do_not_save_samples and do_not_save_grid are
accepted and have no effect (images are saved where the request's are). A line's prompt goes after
the request's prompt (or before it, with prompt position "start"), joined by a space.
"Iterate seed every line" moves the seed on by each line's image count.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass

from ..errors import InvalidArgument
from ..sampling.names import SAMPLER_LABELS, resolve
from ..text.styles import apply_styles
from .script_args import choice, flag
from .spec import Face, Progress, ScriptResult, Spec, check, fixed_seed, run_specs

TITLE = "Prompts from file or textbox"
MAX_LINES = 1000
ARG_NAMES = ("checkbox_iterate", "checkbox_iterate_batch", "prompt_position", "prompt_txt")


def _bool(text: str) -> bool:
    return text == "true"


_TAGS = {"prompt": str, "negative_prompt": str, "styles": str, "seed": int, "subseed": int,
         "subseed_strength": float, "sampler_name": str, "sampler_index": int, "batch_size": int, "n_iter": int,
         "steps": int, "cfg_scale": float, "width": int, "height": int, "tiling": _bool, "restore_faces": _bool,
         "sd_model": str, "seed_resize_from_h": int, "seed_resize_from_w": int, "outpath_samples": str,
         "outpath_grids": str, "prompt_for_display": str, "do_not_save_samples": _bool, "do_not_save_grid": _bool}
_NO_EFFECT = {"outpath_samples", "outpath_grids", "prompt_for_display", "do_not_save_samples", "do_not_save_grid"}


@dataclass
class FileOptions:
    iterate: bool = False
    iterate_batch: bool = False
    prompt_position: str = "start"
    text: str = ""


def from_script_args(args: list) -> FileOptions:
    if not isinstance(args, list) or len(args) not in (3, 4):
        raise InvalidArgument("script_args: prompts from file takes [checkbox_iterate, checkbox_iterate_batch, "
                              "prompt_position, prompt_txt] (A1111 before 1.7: without prompt_position)")
    values = list(args) if len(args) == 4 else [args[0], args[1], "start", args[2]]
    o = FileOptions(*values)
    flag(o.iterate, "checkbox_iterate")
    flag(o.iterate_batch, "checkbox_iterate_batch")
    choice(o.prompt_position, "prompt_position", ("start", "end"))
    if not isinstance(o.text, str):
        raise InvalidArgument(f"script_args: prompt_txt: expected text, got {o.text!r}")
    return o


def parse_line(line: str, where: str) -> dict:
    """A line's options (a plain prompt when it holds no "--")."""
    if "--" not in line:
        return {"prompt": line}
    try:
        words = shlex.split(line)
    except ValueError as e:
        raise InvalidArgument(f"{where}: {e}") from None
    out, pos = {}, 0
    while pos < len(words):
        word = words[pos]
        if not word.startswith("--"):
            raise InvalidArgument(f"{where}: {word!r} must start with \"--\"")
        tag = word[2:]
        if tag not in _TAGS:
            raise InvalidArgument(f"{where}: unknown option {word}; options: {', '.join('--' + t for t in _TAGS)}")
        if pos + 1 >= len(words):
            raise InvalidArgument(f"{where}: {word} needs a value")
        if tag in ("prompt", "negative_prompt"):
            end = pos + 2
            while end < len(words) and not words[end].startswith("--"):
                end += 1
            out[tag] = " ".join(words[pos + 1:end])
            pos = end
            continue
        try:
            out[tag] = _TAGS[tag](words[pos + 1])
        except ValueError:
            raise InvalidArgument(f"{where}: {word} {words[pos + 1]!r} is not a valid value") from None
        pos += 2
    return out


def _apply(spec: Spec, base: Spec, opts: dict, options: FileOptions, face: Face, where: str) -> None:
    kw = spec.kwargs
    for key, value in opts.items():
        if key in _NO_EFFECT:
            continue
        if key == "prompt" and base.prompt:
            spec.prompt = f"{value} {base.prompt}" if options.prompt_position == "start" else f"{base.prompt} {value}"
        elif key == "negative_prompt" and base.negative_prompt:
            spec.negative_prompt = (f"{value} {base.negative_prompt}" if options.prompt_position == "start"
                                    else f"{base.negative_prompt} {value}")
        elif key in ("prompt", "negative_prompt"):
            setattr(spec, key, value)
        elif key in ("seed", "subseed", "n_iter"):
            setattr(spec, key, value)
        elif key in ("sampler_name", "sampler_index"):
            labels = list(SAMPLER_LABELS.values())
            if key == "sampler_index" and not 0 <= value < len(labels):
                raise InvalidArgument(f"{where}: --sampler_index {value} is outside 0..{len(labels) - 1}")
            name = labels[value] if key == "sampler_index" else value
            try:
                kw["sampler"], kw["scheduler"] = resolve(name, spec.schedule)
            except InvalidArgument as e:
                raise InvalidArgument(f"{where}: --{key}: {str(e).split(': ', 1)[-1]}") from None
        elif key == "cfg_scale":
            kw["cfg"] = value
        elif key == "sd_model":
            spec.model = face.checkpoint(value)
        elif key == "restore_faces" and value:
            raise InvalidArgument(f"{where}: --restore_faces: no face restoration model here")
        elif key in ("batch_size", "seed_resize_from_w", "seed_resize_from_h", "steps", "width", "height", "tiling", "subseed_strength"):
            kw[key] = value
    if "styles" in opts:
        names = [n.strip() for n in opts["styles"].split(",") if n.strip()]
        spec.prompt, spec.negative_prompt = apply_styles(spec.prompt, spec.negative_prompt, names, face.styles(),
                                                         where=f"{where}: --styles")


def cells(base: Spec, options: FileOptions, face: Face) -> list[Spec]:
    lines = [line.strip() for line in options.text.splitlines()]
    numbered = [(n, line) for n, line in enumerate(lines, start=1) if line]
    if len(numbered) > MAX_LINES:
        raise InvalidArgument(f"script_args: prompt_txt: {len(numbered)} lines; at most {MAX_LINES}")
    seed = fixed_seed(base.seed) if options.iterate or options.iterate_batch else base.seed
    out = []
    for n, line in numbered:
        where = f"prompt_txt line {n}"
        spec = base.but(seed=seed)
        _apply(spec, base, parse_line(line, where), options, face, where)
        check(spec, where)
        out.append(spec)
        if options.iterate and seed != -1:
            seed += base.kwargs.get("batch_size", 1) * base.n_iter
    return out


def run(base: Spec, options: FileOptions, face: Face, progress: Progress | None = None) -> ScriptResult:
    results, interrupted = run_specs(face, cells(base, options, face), progress)
    made = [m for g in results if g is not None for m in g.made]
    return ScriptResult([m.image for m in made], [m.infotext for m in made], made, 0, interrupted)
