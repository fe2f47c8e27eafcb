"""`opensd tag IMAGE... [--model NAME]`: prompt tags for pictures from a WD14 tagger in the models folder's
wd14_tagger/ (tagging/wd14.py), one line per picture, in the text ComfyUI's WD14 Tagger node writes."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import float_arg, open_image


def register(sub) -> None:
    p = sub.add_parser("tag", help="prompt tags for images from a WD14 tagger (models/wd14_tagger)")
    p.add_argument("inputs", nargs="+", type=Path, metavar="IMAGE", help="image file(s)")
    p.add_argument("--model", "-m", metavar="NAME",
                   help="a tagger in --models-dir's wd14_tagger/ (<NAME>.onnx and <NAME>.csv; default: the first)")
    p.add_argument("--models-dir", type=Path, help="an A1111 or ComfyUI models/ folder (default: "
                                                   "$OPENSD_MODELS_DIR, else models_dir in the config file)")
    p.add_argument("--threshold", type=float_arg, default=0.35, help="general tags scoring above this (default 0.35)")
    p.add_argument("--character-threshold", type=float_arg, default=0.85,
                   help="character tags scoring above this (default 0.85)")
    p.add_argument("--underscores", action="store_true", help="keep the tags' underscores (default: spaces)")
    p.add_argument("--exclude", default="", metavar="TAGS", help="comma-separated tags to leave out")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.set_defaults(func=cmd_tag)


def cmd_tag(args: argparse.Namespace) -> int:
    from ..errors import InvalidArgument
    from ..library.models_dir import ModelFolders
    from ..library.user_config import models_dir
    from ..tagging import wd14
    from ..tagging.tag_text import comfy_text

    for name in ("threshold", "character_threshold"):
        if not 0 <= getattr(args, name) <= 1:
            raise InvalidArgument(f"{name.replace('_', '-')}: {getattr(args, name)} is outside 0..1")
    root = models_dir(args.models_dir)
    folders = ModelFolders(root, include_builtin=False) if root else None
    name = args.model if args.model is not None else wd14.default_name(folders)
    tagger = wd14.load(wd14.find(folders, name), args.device)
    for src in args.inputs:
        text = comfy_text(wd14.score(tagger, open_image(src, "input")), args.threshold, args.character_threshold,
                          not args.underscores, False, args.exclude)
        print(f"{src}: {text}" if len(args.inputs) > 1 else text)
    return 0
