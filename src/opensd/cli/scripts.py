"""`opensd generate`'s styles, wildcards and A1111 scripts (X/Y/Z plot, prompt matrix, prompts from a
file, SD upscale): their flags, and the CLI's side of a script (a `Face`: generation as `generate`
runs it, with other checkpoints and VAEs loaded when an axis names them)."""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, replace
from pathlib import Path

from ..errors import InvalidArgument
from .common import float_arg, int_arg

XYZ_HELP = ('an X/Y/Z plot axis (repeatable: X, then Y, then Z), its name as A1111 labels it and its values as '
            'A1111 reads them, e.g. "steps:10-30 (+10)", "sampler:Euler,DPM++ 2M", "cfg scale:5-9 [3]", '
            '"prompt s/r:cat,dog", "checkpoint name:a.safetensors,b.safetensors", "size:64x64,96x64"')


def add_flags(gen: argparse.ArgumentParser) -> None:
    s = gen.add_argument_group("styles and wildcards")
    s.add_argument("--style", action="append", default=[], metavar="NAME",
                   help="apply this A1111 prompt style (repeatable, in order)")
    s.add_argument("--styles-file", type=Path, default=Path("styles.csv"),
                   help="A1111 styles.csv (name,prompt,negative_prompt; {prompt} marks where the prompt goes); "
                        "default ./styles.csv")
    s.add_argument("--wildcards-dir", type=Path, default=Path("wildcards"),
                   help="folder of __name__ wildcard files (name.txt, one value a line); default ./wildcards")
    x = gen.add_argument_group("scripts (one at a time)")
    x.add_argument("--xyz", action="append", default=[], metavar="AXIS:VALUES", help=XYZ_HELP)
    x.add_argument("--xyz-no-legend", action="store_true", help="no axis labels on the grid")
    x.add_argument("--xyz-sub-grids", action="store_true", help="also write one grid per Z value")
    x.add_argument("--xyz-keep-random-seeds", action="store_true",
                   help="a seed of -1 is drawn anew for every cell (default: once for all)")
    x.add_argument("--xyz-vary-seeds", default="", metavar="AXES",
                   help="x, y and/or z (e.g. xy): add the cell's place along these axes to its seed")
    x.add_argument("--xyz-margin", type=int_arg, default=0, metavar="PX", help="pixels between grid cells")
    x.add_argument("--prompt-matrix", nargs="?", const="", metavar="OPTIONS",
                   help="one image per subset of the prompt's |-separated parts, and their grid; OPTIONS "
                        "(comma-separated): start (parts before the base), random-seeds, negative (split the "
                        "negative prompt), space (join with spaces)")
    x.add_argument("--prompts-file", type=Path, metavar="FILE",
                   help='one generation per line: a prompt, or A1111\'s options ("--prompt a cat --steps 20 '
                        '--seed 5"); - reads standard input')
    x.add_argument("--prompts-iterate-seed", action="store_true", help="each line's seed follows the last's")
    x.add_argument("--prompts-position", choices=["start", "end"], default="start",
                   help="where a line's prompt goes relative to the prompt argument")
    x.add_argument("--sd-upscale", type=float_arg, metavar="SCALE",
                   help="SD upscale the --init-image: enlarge it SCALE times, repaint it in --width x --height tiles")
    x.add_argument("--sd-upscale-overlap", type=int_arg, default=64, metavar="PX")
    x.add_argument("--sd-upscale-upscaler", default="Lanczos", metavar="NAME",
                   help="None, Lanczos (default), Nearest, or an upscaler model (a file, or a name in the models folder)")


def apply_styles_flag(args: argparse.Namespace) -> None:
    """--style NAME ...: the prompts with the styles applied."""
    from ..text.styles import apply_styles, load_styles

    if args.style:
        args.prompt, args.negative = apply_styles(args.prompt, args.negative or "", args.style,
                                                  load_styles(args.styles_file), where="style")


def chosen(args: argparse.Namespace) -> str | None:
    """The script the flags ask for (at most one)."""
    flags = {"xyz": bool(args.xyz), "prompt-matrix": args.prompt_matrix is not None,
             "prompts-file": args.prompts_file is not None, "sd-upscale": args.sd_upscale is not None}
    on = [name for name, value in flags.items() if value]
    if len(on) > 1:
        raise InvalidArgument(f"{on[1]}: one script at a time (also given: --{on[0]})")
    if on == ["sd-upscale"] and args.init_image is None:
        raise InvalidArgument("sd-upscale: needs --init-image, the image to upscale")
    return on[0] if on else None


class CliFace:
    """What `opensd generate` lends a script."""

    def __init__(self, args, pipe, kwargs: dict, init, mask, folders, open_pipe, make_call, texts):
        from ..text.wildcards import Wildcards

        self.args, self.kwargs, self.init, self.mask, self.folders = args, kwargs, init, mask, folders
        self.img2img = init is not None
        # generate.py's pipeline loader, pipeline call and infotexts
        self.open_pipe, self.make_call, self.texts = open_pipe, make_call, texts
        self.pipes = {(None, None): pipe}
        flagged = kwargs.get("refiner")  # --refiner's, loaded already
        self.refiner_pipes = {flagged.pipe.loaded.path: flagged.pipe} if flagged is not None else {}
        self.wildcards = Wildcards(args.wildcards_dir)

    def _pipe(self, model: str | None, vae: str | None):
        key = (model, vae)
        if key not in self.pipes:
            base = self.pipes[(None, None)]
            pipe = self.open_pipe(Path(model) if model else base.loaded.path, self._vae_file(vae))
            pipe.set_loras(base.lora_specs)
            pipe.set_hypernets(base.hypernet_specs)
            self.pipes[key] = pipe
        return self.pipes[key]

    def _vae_file(self, vae: str | None) -> Path | None:
        if vae in (None, "Automatic"):
            return self.args.vae
        return None if vae == "None" else Path(vae)

    def _refiner(self, spec):
        """The cell's Refiner: --refiner's, with an X/Y/Z plot's Refiner checkpoint and switch; a switch
        alone changes nothing, as in A1111."""
        from ..pipeline.refiner import Refiner

        flagged = self.kwargs.get("refiner")
        if spec.refiner == "None" or (spec.refiner is None and flagged is None):
            return None
        if spec.refiner is None:
            made = flagged
        else:
            path = Path(spec.refiner)
            if path not in self.refiner_pipes:
                self.refiner_pipes[path] = self.open_pipe(path, None)
            made = replace(flagged or Refiner(None), pipe=self.refiner_pipes[path])
        return made if spec.refiner_switch is None else replace(made, switch_at=spec.refiner_switch)

    def generate(self, spec, progress):
        from ..pipeline import dynamic_batch
        from ..pipeline.params import Hires
        from ..scripts.spec import Generated, Made, fixed_seed

        pipe = self._pipe(spec.model, spec.vae)
        kw = dict(spec.kwargs, controls=self.kwargs.get("controls"), refiner=self._refiner(spec))
        kw = {k: v for k, v in kw.items() if v is not None}
        if spec.kwargs.get("hires"):
            kw["hires"] = Hires(**spec.kwargs["hires"])
        init = spec.init if spec.init is not None else self.init
        per, seed = kw.get("batch_size", 1), fixed_seed(spec.seed)
        images = []
        for it in range(spec.n_iter):
            def report(i, n, it=it):
                progress(it * n + i, spec.n_iter * n)

            seeds = {"seed": seed + it * per, "subseed": None if spec.subseed == -1 else spec.subseed + it * per}
            call = self.make_call(pipe, init, self.mask, {**kw, **seeds})
            images += dynamic_batch.generate(call, spec.prompt, spec.negative_prompt, batch_size=per,
                                             wildcards=self.wildcards, progress=report, **seeds)
        texts = self.texts(pipe, images, self._vae_file(spec.vae))
        return Generated([Made(im, t, im.info["seed"], im.info.get("subseed"), im.info["params"].prompt,
                               im.info["params"].negative_prompt) for im, t in zip(images, texts)])

    def checkpoint(self, name: str, where: str = "Checkpoint name") -> str:
        from .model_flags import resolve_model
        return str(resolve_model(self.folders, "checkpoints", name, where))

    def vae(self, name: str) -> str:
        from .model_flags import resolve_model

        key = name.strip().lower()
        if key in ("none", "automatic", "auto"):
            return "None" if key == "none" else "Automatic"  # Automatic: as --vae says
        return str(resolve_model(self.folders, "vae", name, "VAE"))

    def styles(self):
        from ..text.styles import load_styles
        return load_styles(self.args.styles_file)

    def upscalers(self) -> list[str]:
        return self.pipes[(None, None)].upscalers.names()

    def upscale(self, image, name: str, scale: float):
        return self.pipes[(None, None)].upscalers.upscale(image, scale, name, "sd-upscale-upscaler")

    def upscaler(self, name: str, hires: bool = False) -> str:
        from ..upscale import label, latent_mode

        if hires and latent_mode(name) is not None:
            return label(name)
        found = self.pipes[(None, None)].upscalers.find(name, "Hires upscaler" if hires else "sd-upscale-upscaler")
        return found if isinstance(found, str) else str(found)


def _xyz(args, base, face, progress):
    from ..scripts import xyz

    if len(args.xyz) > 3:
        raise InvalidArgument(f"xyz: at most three axes (X, Y, Z), got {len(args.xyz)}")
    axes = []
    for which, text in zip("XYZ", args.xyz):
        name, sep, values = text.partition(":")
        if not sep:
            raise InvalidArgument(f"xyz: {text!r} is not AXIS:VALUES (e.g. steps:10,20)")
        axes.append(xyz.read_axis(name, values, None, True, base, face.img2img, which))
    vary = args.xyz_vary_seeds.lower()
    if set(vary) - set("xyz"):
        raise InvalidArgument(f"xyz-vary-seeds: {args.xyz_vary_seeds!r} is not made of x, y and z")
    options = xyz.GridOptions(draw_legend=not args.xyz_no_legend, include_lone_images=True,
                              include_sub_grids=args.xyz_sub_grids, no_fixed_seeds=args.xyz_keep_random_seeds,
                              vary_seeds=tuple(c in vary for c in "xyz"), margin=args.xyz_margin)
    axes += [xyz.NOTHING] * (3 - len(axes))
    return xyz.run(base, tuple(axes), options, face, progress)


def _matrix(args, base, face, progress):
    from ..scripts import prompt_matrix

    words = [w.strip() for w in args.prompt_matrix.split(",") if w.strip()]
    unknown = set(words) - {"start", "random-seeds", "negative", "space"}
    if unknown:
        raise InvalidArgument(f"prompt-matrix: unknown option {sorted(unknown)[0]!r} "
                              "(options: start, random-seeds, negative, space)")
    options = prompt_matrix.MatrixOptions("start" in words, "random-seeds" in words,
                                          "negative" if "negative" in words else "positive",
                                          "space" if "space" in words else "comma")
    return prompt_matrix.run(base, options, face, progress)


def _prompts_file(args, base, face, progress):
    from ..scripts import prompts_file

    try:
        text = sys.stdin.read() if str(args.prompts_file) == "-" else args.prompts_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"prompts-file: cannot read {args.prompts_file} ({e})") from None
    options = prompts_file.FileOptions(args.prompts_iterate_seed, False, args.prompts_position, text)
    return prompts_file.run(base, options, face, progress)


def _sd_upscale(args, base, face, progress):
    from ..scripts import sd_upscale

    options = sd_upscale.from_script_args([None, args.sd_upscale_overlap, args.sd_upscale_upscaler,
                                           args.sd_upscale], face)
    return sd_upscale.run(base, face.init.convert("RGB"), options, face, progress)


def run_script(name: str, args, face, progress):
    """Run the chosen script from the generate flags; its ScriptResult."""
    from ..scripts.spec import Spec

    kw = {k: v for k, v in face.kwargs.items() if k not in ("controls", "refiner")}  # the face adds them
    if "hires" in kw:
        kw["hires"] = asdict(kw["hires"])
    pipe = face.pipes[(None, None)]
    size = face.init.size if face.init is not None else (pipe.config.resolution, pipe.config.resolution)
    kw.setdefault("width", size[0] // 8 * 8)
    kw.setdefault("height", size[1] // 8 * 8)
    seed = kw.pop("seed", -1)
    subseed = kw.pop("subseed", -1)
    base = Spec(args.prompt, args.negative or "", kw, seed, subseed, schedule=args.scheduler)
    return {"xyz": _xyz, "prompt-matrix": _matrix, "prompts-file": _prompts_file,
            "sd-upscale": _sd_upscale}[name](args, base, face, progress)
