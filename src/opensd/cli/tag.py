"""`opensd tag IMAGE... [--model NAME]`: prompt tags for pictures from a WD14 tagger in the models folder's
wd14_tagger/ (tagging/wd14.py), or from DeepDanbooru (`--model deepdanbooru`: A1111's
model-resnet_custom_v3.pt in torch_deepdanbooru/, tagging/deepdanbooru.py), one line per picture, in the
text ComfyUI's WD14 Tagger node writes."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import float_arg, open_image


def register(sub) -> None:
    p = sub.add_parser("tag", help="prompt tags for images from a WD14 tagger (models/wd14_tagger)")
    p.add_argument("inputs", nargs="+", type=Path, metavar="IMAGE", help="image file(s)")
    p.add_argument("--model", "-m", metavar="NAME",
                   help="a tagger in --models-dir's wd14_tagger/ (<NAME>.onnx and <NAME>.csv; default: the first), "
                        "or 'deepdanbooru' (model-resnet_custom_v3.pt in torch_deepdanbooru/)")
    p.add_argument("--models-dir", type=Path, help="an A1111 or ComfyUI models/ folder (default: "
                                                   "$OPENSD_MODELS_DIR, else models_dir in the config file)")
    p.add_argument("--threshold", type=float_arg, default=None,
                   help="general tags scoring above this (default 0.35; 0.5 for deepdanbooru, as A1111)")
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
    from ..tagging import deepdanbooru, wd14
    from ..tagging.tag_text import comfy_text

    use_dd = (args.model or "").strip().lower() == deepdanbooru.LABEL
    threshold = args.threshold if args.threshold is not None else 0.5 if use_dd else 0.35
    for name, value in (("threshold", threshold), ("character-threshold", args.character_threshold)):
        if not 0 <= value <= 1:
            raise InvalidArgument(f"{name}: {value} is outside 0..1")
    root = models_dir(args.models_dir)
    folders = ModelFolders(root, include_builtin=False) if root else None
    if use_dd:
        path = deepdanbooru.default_path(folders)
        if path is None:
            raise InvalidArgument(f"{deepdanbooru.LABEL}: no DeepDanbooru model is installed; {deepdanbooru.WHERE}")
        tagger = deepdanbooru.load(path, args.device)
        score = deepdanbooru.score
    else:
        name = args.model if args.model is not None else wd14.default_name(folders)
        tagger = wd14.load(wd14.find(folders, name), args.device)
        score = wd14.score
    for src in args.inputs:
        text = comfy_text(score(tagger, open_image(src, "input")), threshold, args.character_threshold,
                          not args.underscores, False, args.exclude)
        print(f"{src}: {text}" if len(args.inputs) > 1 else text)
    return 0
