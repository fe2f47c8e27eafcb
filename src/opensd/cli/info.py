"""`opensd info FILE`: the generation parameters stored in an image, or what a model file is (its kind,
family, hashes and training metadata)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import read_image_infotext


def is_weight_file(path: Path) -> bool:
    """True for a file whose bytes are a safetensors or PyTorch file (an image is neither)."""
    from ..checkpoints.files import sniff_format
    from ..errors import CheckpointError

    if not path.is_file():
        return False
    try:
        sniff_format(path)
    except CheckpointError:
        return False
    return True


def register(sub) -> None:
    info = sub.add_parser("info", help="print the generation parameters stored in an image, or a model file's "
                                       "kind, family, hashes and training metadata")
    info.add_argument("image", type=Path, metavar="FILE", help="an image, or a model file (.safetensors, .ckpt, ...)")
    info.set_defaults(func=cmd_info)


def cmd_info(args: argparse.Namespace) -> int:
    if is_weight_file(args.image):
        from ..library.model_report import report

        print("\n".join(report(args.image)))
        return 0
    text = read_image_infotext(args.image, "image")
    if text is None:
        print(f"{args.image}: no generation parameters", file=sys.stderr)
        return 1
    print(text)
    return 0
