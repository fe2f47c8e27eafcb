"""Helpers every `opensd` command shares: number parsing, opening user files, threads."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InvalidArgument
from ..library.models_dir import BUILTIN_CHECKPOINT as BUILTIN_MODEL


def int_arg(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def float_arg(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def open_image(path: Path, what: str):
    """A user's image file read as the APIs read theirs (opensd/image_read.py), within PIL's own
    decompression-bomb limit."""
    from PIL import Image

    from ..image_read import read

    try:
        return read(path, f"{what}: {path}", Image.MAX_IMAGE_PIXELS)
    except FileNotFoundError:
        raise InvalidArgument(f"{what}: {path} does not exist") from None


def read_image_infotext(path: Path, what: str) -> str | None:
    """The A1111 parameters stored in an image file, or None; a bad file is the user's mistake."""
    from ..pipeline.infotext import read_infotext

    try:
        return read_infotext(path)
    except FileNotFoundError:
        raise InvalidArgument(f"{what}: {path} does not exist") from None
    except OSError as e:
        raise InvalidArgument(f"{what}: {path} is not a readable image ({e})") from None


def set_threads(threads: int | None) -> None:
    if threads is None:
        return
    if threads < 1:
        raise InvalidArgument(f"threads: {threads} must be at least 1")
    import torch
    torch.set_num_threads(threads)
