"""`opensd upscale IN... -o OUT --model NAME`: enlarge images with an upscaler model (ESRGAN,
Real-ESRGAN, SwinIR, DAT, HAT, ... files, by path or by name in --models-dir) or Lanczos/Nearest."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InvalidArgument
from .common import float_arg, int_arg, open_image, read_image_infotext, set_threads


def register(sub) -> None:
    p = sub.add_parser("upscale", help="enlarge images with an upscaler model (ESRGAN, SwinIR, ...) or Lanczos")
    p.add_argument("inputs", nargs="+", type=Path, metavar="IN", help="image file(s)")
    p.add_argument("--output", "-o", type=Path, required=True,
                   help="output image (.png, .jpg, .webp); with several inputs, a folder")
    p.add_argument("--model", "-m", required=True, metavar="NAME_OR_PATH",
                   help="an upscaler model file, a model's name in --models-dir, or Lanczos / Nearest")
    p.add_argument("--scale", type=float_arg, help="how many times larger, 1..16 (default: the model's own scale, "
                                                    "4 for Lanczos/Nearest)")
    p.add_argument("--models-dir", type=Path, help="an A1111 or ComfyUI models/ folder to find --model NAME in "
                                                   "(default: $OPENSD_MODELS_DIR, else models_dir in the config file)")
    p.add_argument("--tile", type=int_arg, default=512, help="tile size in pixels, 0 for the whole image at once "
                                                             "(default 512; smaller tiles use less memory)")
    p.add_argument("--tile-overlap", type=int_arg, default=32, help="pixels neighbouring tiles share (default 32)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    p.add_argument("--threads", type=int_arg, help="CPU threads for PyTorch (default: all cores)")
    p.set_defaults(func=cmd_upscale)


def _outputs(args: argparse.Namespace) -> list[Path]:
    from ..pipeline.infotext import FORMATS

    if len(args.inputs) == 1 and not args.output.is_dir():
        if args.output.suffix.lower() not in FORMATS:
            raise InvalidArgument(f"output: {args.output.name!r} is not a supported format; "
                                  f"end it in {', '.join(FORMATS)} (or give a folder)")
        outs = [args.output]
    else:
        if args.output.exists() and not args.output.is_dir():
            raise InvalidArgument(f"output: with {len(args.inputs)} inputs, {args.output} must be a folder")
        outs = [args.output / f"{src.stem}.png" for src in args.inputs]
        if len(set(outs)) < len(outs):
            raise InvalidArgument("output: two inputs have the same file name; upscale them one by one")
    for src, out in zip(args.inputs, outs):
        if out.resolve() == src.resolve():
            raise InvalidArgument(f"output: {out} is the input itself; give another name")
    return outs


def cmd_upscale(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..library.models_dir import ModelFolders
    from ..library.user_config import models_dir
    from ..pipeline.device import resolve_device
    from ..pipeline.infotext import save_image
    from ..upscale import Upscalers

    if args.scale is not None and not 1 <= args.scale <= 16:
        raise InvalidArgument(f"scale: {args.scale} is outside 1..16")
    outs = _outputs(args)
    set_threads(args.threads)
    root = models_dir(args.models_dir)  # --models-dir, else $OPENSD_MODELS_DIR or the config file's
    folders = ModelFolders(root, include_builtin=False) if root else None
    ups = Upscalers(folders, resolve_device(args.device), allow_paths=True, tile=args.tile,
                    overlap=args.tile_overlap)
    target = ups.find(args.model, "model")
    scale = args.scale if args.scale is not None else (ups.model(target).scale if isinstance(target, Path) else 4)
    images = [open_image(src, "input") for src in args.inputs]
    outs[0].parent.mkdir(parents=True, exist_ok=True)
    for src, image, out in zip(args.inputs, images, outs):
        with tqdm(desc=src.name, unit="tile", leave=False) as bar:
            def progress(done, total, bar=bar):
                bar.total = total
                bar.update(done - bar.n)

            result = ups.upscale(image, scale, args.model, "model", progress=progress, multiple=1)
        try:  # the image keeps the generation parameters it carried
            save_image(result, out, read_image_infotext(src, "input") or "")
        except OSError as e:
            raise InvalidArgument(f"output: cannot write {out} ({e.strerror or e})") from None
        print(f"{out} ({result.width}x{result.height})")
    return 0
