"""`opensd info IMAGE`: print the generation parameters stored in an image."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import read_image_infotext


def register(sub) -> None:
    info = sub.add_parser("info", help="print the generation parameters stored in an image")
    info.add_argument("image", type=Path)
    info.set_defaults(func=cmd_info)


def cmd_info(args: argparse.Namespace) -> int:
    text = read_image_infotext(args.image, "image")
    if text is None:
        print(f"{args.image}: no generation parameters", file=sys.stderr)
        return 1
    print(text)
    return 0
